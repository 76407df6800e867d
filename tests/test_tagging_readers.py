"""Readers: CoNLL-U, CoNLL and TSV round trips, skipped lines counted, bad input named."""

import io

import pytest

from rnnkit.data.conll import read_tagged, write_tagged
from rnnkit.data.tsv import read_lines, read_tsv
from rnnkit.errors import DataError, RnnkitError

CONLLU = """\
# sent_id = 1
# text = I don't know.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t0\troot\t_\t_
4\tknow\tknow\tVERB\tVB\t_\t3\txcomp\t_\tSpaceAfter=No
4.1\tit\t_\t_\t_\t_\t_\t_\t_\t_
5\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

# sent_id = 2
1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_
"""

CONLL = """\
-DOCSTART- -X- O O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def test_conllu_read_counts_skips_and_round_trips(tmp_path):
    path = tmp_path / "a.conllu"
    path.write_text(CONLLU, encoding="utf-8")
    c = read_tagged(path)
    assert [s.tokens for s in c.sentences] == [["I", "do", "n't", "know", "."], ["Hi"]]
    assert c.sentences[0].tags == ["PRON", "AUX", "PART", "VERB", "PUNCT"]
    assert c.skipped["multiword"] == 1 and c.skipped["empty_node"] == 1
    assert c.skipped["comment"] == 3
    assert c.summary() == "2 sentences, 6 tokens; skipped 1 empty_node, 1 multiword"
    assert read_tagged(path, column="xpos").sentences[0].tags == ["PRP", "VBP", "RB", "VB", "."]
    assert read_tagged(path, column=2).sentences[1].tags == ["hi"]
    buf = io.StringIO()
    write_tagged(c, buf)
    assert buf.getvalue() == CONLLU
    # new tags replace only the tag column
    buf = io.StringIO()
    write_tagged(c, buf, [["X"] * 5, ["Y"]])
    out = buf.getvalue().splitlines()
    assert out[2].split("\t")[3] == "X" and out[2].split("\t")[4] == "PRP"
    again = read_tagged(io_path(tmp_path, buf.getvalue(), "b.conllu"))
    assert [s.tokens for s in again.sentences] == [s.tokens for s in c.sentences]
    assert again.sentences[1].tags == ["Y"]


def io_path(tmp_path, text, name):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_conll_columns_docstart_and_conversion(tmp_path):
    path = io_path(tmp_path, CONLL, "a.conll")
    c = read_tagged(path)
    assert c.skipped["docstart"] == 1
    assert c.scheme == "bio"
    assert c.sentences[0].tokens == ["EU", "rejects", "German", "call"]
    assert c.sentences[0].tags == ["B-ORG", "O", "B-MISC", "O"]
    buf = io.StringIO()
    write_tagged(c, buf)
    assert buf.getvalue() == CONLL
    chunks = read_tagged(path, column=2)
    assert chunks.sentences[1].tags == ["B-NP", "I-NP"]
    bio = read_tagged(path, convert_to="bioes")
    assert bio.scheme == "bioes"
    assert bio.sentences[1].tags == ["B-PER", "E-PER"]
    assert bio.sentences[0].tags == ["S-ORG", "O", "S-MISC", "O"]
    iob1 = read_tagged(path, convert_to="iob1")
    assert iob1.sentences[1].tags == ["I-PER", "I-PER"] and iob1.scheme == "iob1"
    buf = io.StringIO()
    write_tagged(iob1, buf)
    assert read_tagged(io_path(tmp_path, buf.getvalue(), "i.conll")).scheme == "iob1"


def test_wnut_style_tab_blank_lines(tmp_path):
    text = "a\tO\nb\tB-person\n\t\nc\tB-loc\nd\tI-loc\n"
    c = read_tagged(io_path(tmp_path, text, "w.conll"))
    assert [s.tags for s in c.sentences] == [["O", "B-person"], ["B-loc", "I-loc"]]
    assert c.scheme == "bio"
    buf = io.StringIO()
    write_tagged(c, buf)
    assert buf.getvalue() == text


def test_tokens_only_conll_gets_a_tag_column(tmp_path):
    c = read_tagged(io_path(tmp_path, "a\nb\n\nc\n", "t.conll"))
    assert c.sentences[0].tags is None
    buf = io.StringIO()
    write_tagged(c, buf, [["X", "Y"], ["Z"]])
    assert buf.getvalue() == "a X\nb Y\n\nc Z\n"


def test_mixed_column_counts_named(tmp_path):
    path = io_path(tmp_path, "a B-X\nb I-X\n\nc d O\n", "bad.conll")
    with pytest.raises(DataError, match=r"bad\.conll:4: expected 2 columns \(as on line 1\)"):
        read_tagged(path)
    path = io_path(tmp_path, CONLLU.replace("2\tdo\tdo\tAUX", "2\tdo\tAUX"), "bad.conllu")
    with pytest.raises(DataError, match=r"bad\.conllu:5: expected 10 tab-separated"):
        read_tagged(path)


def test_unknown_tag_scheme_named(tmp_path):
    path = io_path(tmp_path, "a B-X\nb E-X\n\nc O\n", "s.conll")
    with pytest.raises(DataError, match=r"s\.conll:2: tag 'E-X' is not a BIO tag"):
        read_tagged(path, scheme="bio")
    with pytest.raises(RnnkitError, match="unknown tag scheme 'bilo'"):
        read_tagged(path, scheme="bilo")
    path = io_path(tmp_path, "a X-PER\n", "x.conll")
    with pytest.raises(DataError, match=r"x\.conll:1: tag 'X-PER' is not a BIOES tag"):
        read_tagged(path, scheme="bioes")


def test_tsv_header_names_indices(tmp_path):
    path = io_path(tmp_path, "sentence\tlabel\nit 's good . \t1\nbad\t0\n", "a.tsv")
    d = read_tsv(path)
    assert d.texts == ["it 's good .", "bad"] and d.labels == ["1", "0"] and d.lines == [2, 3]
    d = read_tsv(path, text_column="sentence", label_column="label")
    assert d.labels == ["1", "0"]
    path = io_path(tmp_path, "pos\tgreat fun\nneg\tdull\n", "b.tsv")
    d = read_tsv(path, text_column=1, label_column=0)
    assert d.texts == ["great fun", "dull"] and d.labels == ["pos", "neg"]
    d = read_tsv(path, text_column=1, label_column=None)
    assert d.labels is None
    assert read_lines(path).texts == ["pos\tgreat fun".strip(), "neg\tdull"]


def test_tsv_missing_label_column_named(tmp_path):
    path = io_path(tmp_path, "sentence\tlabel\ngood\t1\nno label here\n", "m.tsv")
    with pytest.raises(DataError, match=r"m\.tsv:3: expected 2 tab-separated fields .*"
                                        r"label column is missing"):
        read_tsv(path)
    with pytest.raises(DataError, match=r"m\.tsv:1: label column: no column named 'y'"):
        read_tsv(path, label_column="y")
    path = io_path(tmp_path, "good\nbad\n", "n.tsv")
    with pytest.raises(DataError, match=r"n\.tsv:1: label column 1 does not exist"):
        read_tsv(path)


def test_real_files_round_trip(shared_data):
    ud = shared_data / "ud_english_ewt" / "en_ewt-ud-dev.conllu"
    c = read_tagged(ud)
    assert len(c.sentences) == 2001
    assert c.skipped["multiword"] == 359 and c.skipped["empty_node"] == 4
    buf = io.StringIO()
    write_tagged(c, buf)
    assert buf.getvalue() == ud.read_text(encoding="utf-8")
    wnut = shared_data / "wnut17" / "emerging.dev.conll"
    w = read_tagged(wnut, scheme="bio")
    assert len(w.sentences) == 1009 and w.scheme == "bio"
    buf = io.StringIO()
    write_tagged(w, buf)
    assert buf.getvalue() == wnut.read_text(encoding="utf-8")
    sst = read_tsv(shared_data / "sst2" / "dev.tsv")
    assert len(sst) == 872 and set(sst.labels) == {"0", "1"}
