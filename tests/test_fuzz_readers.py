"""Every data reader, fuzzed: random bytes, random tab/space-separated lines (wrong column
counts), truncated valid files and a huge line. Each input either parses or raises the
project's own error (:class:`rnnkit.errors.RnnkitError`) naming the file (and the line where
one line is at fault); nothing else escapes and nothing hangs (bounded examples, small inputs).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnkit.data.abc import read_abc
from rnnkit.data.conll import read_tagged
from rnnkit.data.parallel import read_parallel
from rnnkit.data.text import read_text
from rnnkit.data.tsv import read_lines, read_tsv
from rnnkit.data.vocab import Vocabulary
from rnnkit.errors import DataError, RnnkitError

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _parallel_pair(path: Path) -> object:
    """Two line-aligned files: ``path`` and its first half (the error may name either)."""
    other = path.parent / "other.txt" if path.is_file() else path
    if path.is_file():
        other.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return read_parallel(path, other)


READERS: dict[str, Callable[[Path], object]] = {
    "text": read_text,
    "vocab-json": Vocabulary.load,
    "conllu": lambda p: read_tagged(p, "conllu"),
    "conllu-xpos": lambda p: read_tagged(p, "conllu", column="xpos"),
    "conll": lambda p: read_tagged(p, "conll"),
    "conll-column-1": lambda p: read_tagged(p, "conll", column=1),
    "tsv": read_tsv,
    "tsv-named": lambda p: read_tsv(p, text_column="sentence", label_column="label"),
    "lines": read_lines,
    "parallel-tsv": read_parallel,
    "parallel-pair": _parallel_pair,
    "abc": read_abc,
}

VALID = {
    "text": "First Citizen:\nBefore we proceed any further, hear me speak.\n",
    "vocab-json": json.dumps(Vocabulary(["<unk>", "<eos>", "a", "b"]).to_dict()),
    "conllu": "# sent_id = 1\n1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_\n"
              "2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_\n2\tdo\tdo\tAUX\tVBP\t_\t0\troot\t_\t_\n"
              "3\tn't\tnot\tPART\tRB\t_\t2\tadvmod\t_\t_\n\n",
    "conll": "EU B-ORG\nrejects O\nGerman B-MISC\n\nPeter B-PER\nBlackburn I-PER\n\n",
    "tsv": "sentence\tlabel\nit 's a charming journey\t1\nunflinchingly bleak\t0\n",
    "parallel-tsv": "ein Hund .\ta dog .\nzwei Katzen\ttwo cats\n",
    "abc": "X:1\nT:Tune\nR:reel\nM:4/4\nL:1/8\nK:G\nGABc dedB|dedB dedB|\n\nX:2\nT:B\nK:D\n",
}
VALID.update({"conllu-xpos": VALID["conllu"], "conll-column-1": VALID["conll"],
              "tsv-named": VALID["tsv"], "lines": VALID["text"],
              "parallel-pair": VALID["text"]})

field = st.text(alphabet=st.sampled_from("ab1-_#.:X\"{}[], \u00e9\u4e2d\u0000\r"), max_size=8)
line = st.lists(field, max_size=12).map("\t".join) | st.lists(field, max_size=6).map(" ".join)
lines_text = st.lists(line, max_size=15).map("\n".join)


def _check(reader: str, path: Path) -> None:
    try:
        READERS[reader](path)
    except RnnkitError as err:
        message = str(err)
        assert str(path) in message or str(path.parent / "other.txt") in message, message
        if isinstance(err, DataError) and err.line is not None:
            assert f":{err.line}:" in message


def _fuzz(reader: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.txt"
        path.write_bytes(data)
        _check(reader, path)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_valid_sample_parses(reader: str, tmp_path: Path) -> None:
    path = tmp_path / "input.txt"
    path.write_text(VALID[reader], encoding="utf-8")
    assert READERS[reader](path)


@pytest.mark.parametrize("reader", sorted(READERS))
@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes(reader: str, data: bytes) -> None:
    _fuzz(reader, data)


@pytest.mark.parametrize("reader", sorted(READERS))
@FUZZ
@given(text=lines_text)
def test_random_columns(reader: str, text: str) -> None:
    _fuzz(reader, text.encode("utf-8"))


@pytest.mark.parametrize("reader", sorted(READERS))
@FUZZ
@given(cut=st.floats(0, 1), noise=st.binary(max_size=3))
def test_truncated_valid_file(reader: str, cut: float, noise: bytes) -> None:
    data = VALID[reader].encode("utf-8")
    _fuzz(reader, data[: int(cut * len(data))] + noise)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_huge_line(reader: str, tmp_path: Path) -> None:
    path = tmp_path / "input.txt"
    path.write_text(VALID[reader] + "x\t" * 100_000 + "y" * 200_000 + "\n", encoding="utf-8")
    _check(reader, path)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_missing_file_and_directory(reader: str, tmp_path: Path) -> None:
    _check(reader, tmp_path / "missing.txt")
    _check(reader, tmp_path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**20) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["format", "tokens", "specials", "version", "counts", "x"]), inner,
        max_size=4),
    max_leaves=12)
vocab_like = st.fixed_dictionaries(
    {"format": st.sampled_from(["rnnkit-vocabulary", "other"]) | json_values},
    optional={"tokens": st.lists(st.text(max_size=3) | json_values, max_size=6) | json_values,
              "specials": st.lists(st.sampled_from(["<unk>", "<eos>", "<pad>"]) | json_values,
                                   max_size=3) | json_values,
              "version": json_values})


@FUZZ
@given(value=vocab_like | json_values)
def test_vocabulary_json_structure(value: object) -> None:
    _fuzz("vocab-json", json.dumps(value).encode("utf-8"))


@FUZZ
@given(value=json_values)
def test_run_config_json(value: object) -> None:
    from rnnkit.training.checkpoint import RunDir
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(value), encoding="utf-8")
        try:
            RunDir(tmp).read_config(task="lm")
        except RnnkitError as err:
            assert "config.json" in str(err) or tmp in str(err)
