"""Parallel data: alignment, TSV, empty and too-long lines, subword vocabularies, batches;
BLEU and chrF against sacrebleu's own command line."""

import subprocess
import sys

import pytest

from rnnkit.data.parallel import (
    BOS_ID,
    EOS_ID,
    FilterReport,
    batches,
    encode_pairs,
    filter_pairs,
    prepare_sources,
    read_parallel,
    train_vocabs,
)
from rnnkit.errors import DataError

pytest.importorskip("sentencepiece")

SENTENCES = [("ein hund läuft", "a dog runs"), ("eine katze schläft", "a cat sleeps"),
             ("zwei hunde laufen schnell", "two dogs run fast"), ("der mann isst", "the man eats"),
             ("die frau liest ein buch", "the woman reads a book")] * 8


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_misaligned_files_name_both_files_and_counts(tmp_path):
    src = write(tmp_path / "a.de", ["eins", "zwei", "drei"])
    tgt = write(tmp_path / "a.en", ["one", "two"])
    with pytest.raises(DataError) as err:
        read_parallel(src, tgt)
    msg = str(err.value)
    assert f"{src} has 3 lines" in msg and f"{tgt} has 2 lines" in msg


def test_tsv_and_bad_tsv_line(tmp_path):
    good = write(tmp_path / "c.tsv", ["eins\tone", "zwei \t two"])
    assert read_parallel(good) == [("eins", "one"), ("zwei", "two")]
    bad = write(tmp_path / "d.tsv", ["eins\tone", "zwei two", "drei\tthree"])
    with pytest.raises(DataError, match=r"d\.tsv:2: expected 'source<TAB>target', found 0 tabs"):
        read_parallel(bad)


def test_empty_and_too_long_pairs_are_dropped_and_counted():
    pairs = [([5, 6], [7]), ([], [7, 8]), ([5], []), ([5] * 9, [7]), ([5], [7] * 12), ([4], [4])]
    kept, report = filter_pairs(pairs, max_src_len=8, max_tgt_len=10)
    assert kept == [([5, 6], [7]), ([4], [4])]
    assert report == FilterReport(kept=2, empty=2, too_long=2)
    assert report.dropped == 4
    assert str(report) == "kept 2 pairs, dropped 4 (2 with an empty side, 2 too long)"


@pytest.fixture(scope="module")
def vocabs(tmp_path_factory):
    return train_vocabs(SENTENCES, tmp_path_factory.mktemp("spm"), vocab_size=60)


def test_joint_and_separate_vocabularies(tmp_path, vocabs):
    src, tgt = vocabs
    assert src is tgt and (src.path.name == "spm.model") and len(src) <= 60
    ids = src.encode("ein hund liest")
    assert min(ids) > EOS_ID and src.decode(ids) == "ein hund liest"
    _, t2 = train_vocabs(SENTENCES, tmp_path, vocab_size=30, joint=False)
    assert (tmp_path / "spm.src.model").is_file() and (tmp_path / "spm.tgt.model").is_file()
    assert t2.decode(t2.encode("a dog reads")) == "a dog reads"


def test_lines_to_translate_empty_and_too_long(vocabs, capsys):
    src, _ = vocabs
    lines = ["ein hund", "", "zwei hunde laufen schnell " * 5]
    long_len = len(src.encode(lines[2]))
    ids = prepare_sources(lines, src, max_len=8, path="in.de")
    assert ids[0] == src.encode("ein hund") and ids[1] == [] and len(ids[2]) == 8
    assert f"in.de:3: source has {long_len} subword tokens, more than the maximum 8; " \
           "truncated" in capsys.readouterr().err
    with pytest.raises(DataError, match=f"in.de:3: source has {long_len} subword tokens"):
        prepare_sources(lines, src, max_len=8, path="in.de", on_long="error")


def test_batches_cover_every_pair_once_with_bos_and_eos(vocabs):
    src, tgt = vocabs
    pairs, _ = filter_pairs(encode_pairs(SENTENCES, src, tgt), 50, 50)
    seen = []
    for b in batches(pairs, max_tokens=40, seed=3):
        assert b.tgt_in.shape == b.tgt_out.shape and b.tgt_in.numel() <= 40
        assert (b.tgt_in[:, 0] == BOS_ID).all()
        for row, i in enumerate(b.index.tolist()):
            s, t = pairs[i]
            assert b.src[row, :len(s)].tolist() == s and int(b.src_lengths[row]) == len(s)
            assert b.tgt_out[row, :len(t) + 1].tolist() == [*t, EOS_ID]
            assert b.tgt_in[row, 1:len(t) + 1].tolist() == t
        seen += b.index.tolist()
    assert sorted(seen) == list(range(len(pairs)))


def test_scores_match_sacrebleu_command_line(tmp_path):
    pytest.importorskip("sacrebleu")
    from rnnkit.metrics.translation import translation_scores
    refs = ["A dog runs in the park.", "Two cats sleep on a red sofa.",
            "The man, who is tall, eats an apple.", "A woman reads a book outside.",
            "Children play football on the beach."]
    hyps = ["A dog is running in the park.", "Two cats sleeping on the sofa.",
            "The tall man eats an apple.", "A woman reading a book.",
            "Kids play soccer at the beach."]
    ref_f, hyp_f = write(tmp_path / "ref.en", refs), write(tmp_path / "hyp.en", hyps)
    res = subprocess.run([sys.executable, "-m", "sacrebleu", str(ref_f), "-i", str(hyp_f),
                          "-m", "bleu", "chrf", "-b", "-w", "4", "-f", "text"],
                         capture_output=True, text=True, check=True)
    cli_bleu, cli_chrf = (float(x) for x in res.stdout.split())
    ours = translation_scores(hyps, refs)
    assert ours.bleu == pytest.approx(cli_bleu, abs=1e-4)
    assert ours.chrf == pytest.approx(cli_chrf, abs=1e-4)
    assert 0 < ours.bleu < 100 and 0 < ours.chrf < 100
