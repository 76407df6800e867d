"""Readers and writers for tagged sentences: CoNLL-U and CoNLL column files.

Both keep every line of the file, so a corpus written back with :func:`write_tagged` is the
same file with only its tag column replaced: predictions come out in the input's own format,
and a file read and written back unchanged is byte-identical.

- **CoNLL-U** (``format="conllu"``): 10 tab-separated columns; the token is FORM (column 1);
  the tag column is ``"upos"`` (3), ``"xpos"`` (4) or an index. Comment lines (``#``),
  multiword-token lines (``1-2``) and empty nodes (``8.1``) are skipped and counted in
  ``corpus.skipped``.
- **CoNLL** (``format="conll"``): whitespace- or tab-separated columns, one token a line, a
  blank (or whitespace-only) line between sentences; token and tag columns chosen by index
  (default first and last); ``-DOCSTART-`` lines are skipped and counted. A file with one column
  holds tokens only (for prediction). Entity tags may be IOB1, BIO or BIOES
  (:mod:`rnnkit.data.schemes`), checked against ``scheme`` and converted with ``convert_to``.

Every malformed line raises :class:`rnnkit.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from rnnkit.data.schemes import check_scheme, check_tag, convert_tags, detect_scheme
from rnnkit.data.text import read_text
from rnnkit.errors import DataError, RnnkitError

FORMATS = ("conllu", "conll")
CONLLU_COLUMNS = {"id": 0, "form": 1, "lemma": 2, "upos": 3, "xpos": 4, "feats": 5,
                  "head": 6, "deprel": 7, "deps": 8, "misc": 9}
_MULTIWORD = re.compile(r"^\d+-\d+$")
_EMPTY = re.compile(r"^\d+\.\d+$")
_ID = re.compile(r"^\d+$")


@dataclass
class Sentence:
    """One sentence: its tokens, its tags (``None`` for an untagged file) and the 0-based
    indices of its token lines in ``TaggedCorpus.lines``."""

    tokens: list[str]
    tags: list[str] | None
    rows: list[int]

    @property
    def line(self) -> int:
        """1-based line number of the sentence's first token."""
        return self.rows[0] + 1


@dataclass
class TaggedCorpus:
    """A tagged file: its sentences, every original line, and what was skipped.

    ``skipped`` counts lines read but not made into tokens: ``comment``, ``multiword``,
    ``empty_node`` (CoNLL-U), ``docstart`` (CoNLL). ``scheme`` is the tags' entity scheme
    (``"none"`` for POS tags)."""

    path: str
    format: str
    lines: list[str]
    sentences: list[Sentence]
    token_column: int
    tag_column: int
    separator: str
    scheme: str = "none"
    skipped: Counter = field(default_factory=Counter)

    @property
    def num_tokens(self) -> int:
        return sum(len(s.tokens) for s in self.sentences)

    def summary(self) -> str:
        """``"12544 sentences, 204577 tokens; skipped 2614 multiword, 37 empty_node"``."""
        text = f"{len(self.sentences)} sentences, {self.num_tokens} tokens"
        parts = [f"{n} {k}" for k, n in sorted(self.skipped.items()) if n and k != "comment"]
        return text + ("; skipped " + ", ".join(parts) if parts else "")


def _column_index(column: int | str, format: str, width: int | None) -> int:
    if isinstance(column, str) and not column.lstrip("-").isdigit():
        if format != "conllu" or column.lower() not in CONLLU_COLUMNS:
            raise RnnkitError(f"column: {column!r} is not a column name of {format} "
                              f"(names: upos, xpos, ... for conllu; else an index)")
        return CONLLU_COLUMNS[column.lower()]
    index = int(column)
    if width is not None and index < 0:
        index += width
    return index


def guess_format(path: str | Path) -> str:
    """``"conllu"`` for a ``.conllu`` file, else ``"conll"``."""
    return "conllu" if str(path).endswith(".conllu") else "conll"


def _read_lines(path: str | Path) -> list[str]:
    return read_text(path, allow_empty=True).splitlines(keepends=True)


def _split(line: str, separator: str) -> list[str]:
    return line.split("\t") if separator == "\t" else line.split()


def read_tagged(path: str | Path, format: str | None = None, *, column: int | str | None = None,
                token_column: int | str | None = None, scheme: str = "auto",
                convert_to: str | None = None) -> TaggedCorpus:
    """Read a CoNLL-U or CoNLL file.

    Args:
        path: the file.
        format: ``"conllu"`` or ``"conll"``; ``None`` guesses from the suffix.
        column: the tag column: ``"upos"`` (CoNLL-U default), ``"xpos"``, or an index
            (CoNLL default ``-1``, the last column).
        token_column: the token column (CoNLL-U default ``"form"``, CoNLL default 0).
        scheme: the tags' entity scheme (``"iob1"``, ``"bio"``, ``"bioes"``, ``"none"``) or
            ``"auto"`` to detect it; a given scheme is checked on every tag.
        convert_to: an entity scheme to convert the tags to on reading.
    """
    format = guess_format(path) if format is None else str(format).lower()
    if format not in FORMATS:
        raise RnnkitError(f"format: unknown format {format!r}; expected conllu or conll")
    if scheme != "auto":
        scheme = check_scheme(scheme)
    if convert_to is not None:
        convert_to = check_scheme(convert_to, "convert_to")
    lines = _read_lines(path)
    if format == "conllu":
        corpus = _read_conllu(path, lines, "upos" if column is None else column,
                              "form" if token_column is None else token_column)
    else:
        corpus = _read_conll(path, lines, -1 if column is None else column,
                             0 if token_column is None else token_column)
    _apply_scheme(corpus, scheme, convert_to)
    return corpus


def _read_conllu(path: str | Path, lines: list[str], column: int | str,
                 token_column: int | str) -> TaggedCorpus:
    tag_col = _column_index(column, "conllu", 10)
    tok_col = _column_index(token_column, "conllu", 10)
    for name, index in (("column", tag_col), ("token_column", tok_col)):
        if not 0 <= index < 10:
            raise RnnkitError(f"{name}: CoNLL-U has columns 0-9, got {index}")
    corpus = TaggedCorpus(str(path), "conllu", lines, [], tok_col, tag_col, "\t")
    for block in _blocks(lines):
        tokens, tags, rows = [], [], []
        for i, line in block:
            if line.startswith("#"):
                corpus.skipped["comment"] += 1
                continue
            fields = line.split("\t")
            if len(fields) != 10:
                raise DataError(f"expected 10 tab-separated CoNLL-U columns, got "
                                f"{len(fields)}", path, i + 1)
            if _MULTIWORD.match(fields[0]):
                corpus.skipped["multiword"] += 1
                continue
            if _EMPTY.match(fields[0]):
                corpus.skipped["empty_node"] += 1
                continue
            if not _ID.match(fields[0]):
                raise DataError(f"ID column must be an integer, 'N-M' or 'N.M', got "
                                f"{fields[0]!r}", path, i + 1)
            tokens.append(fields[tok_col])
            tags.append(fields[tag_col])
            rows.append(i)
        if rows:
            corpus.sentences.append(Sentence(tokens, tags, rows))
    return corpus


def _blocks(lines: list[str]) -> Iterator[list[tuple[int, str]]]:
    """The sentences of a CoNLL(-U) file: runs of non-blank lines, each as (index, line)
    pairs with the line ending removed."""
    block: list[tuple[int, str]] = []
    for i, raw in enumerate(lines):
        line = raw.rstrip("\r\n")
        if line.strip():
            block.append((i, line))
        elif block:
            yield block
            block = []
    if block:
        yield block


def _read_conll(path: str | Path, lines: list[str], column: int | str,
                token_column: int | str) -> TaggedCorpus:
    separator = "\t" if any("\t" in ln.strip() for ln in lines[:1000]) else " "
    corpus = TaggedCorpus(str(path), "conll", lines, [], 0, -1, separator)
    width = first = None
    for block in _blocks(lines):
        tokens, tags, rows = [], [], []
        for i, line in block:
            fields = _split(line, separator)
            if width is None:
                width, first = len(fields), i + 1
                corpus.token_column = tok = _column_index(token_column, "conll", width)
                corpus.tag_column = tag = _column_index(column, "conll", width)
                for name, index in (("token_column", tok), ("column", tag)):
                    if not 0 <= index < width:
                        raise DataError(f"{name} {index} does not exist: the file has "
                                        f"{width} column(s)", path, i + 1)
            elif len(fields) != width:
                raise DataError(f"expected {width} columns (as on line {first}), got "
                                f"{len(fields)}", path, i + 1)
            if fields[corpus.token_column] == "-DOCSTART-":
                corpus.skipped["docstart"] += 1
                continue
            tokens.append(fields[corpus.token_column])
            tags.append(fields[corpus.tag_column])
            rows.append(i)
        if rows:
            corpus.sentences.append(Sentence(tokens, tags if width > 1 else None, rows))
    if width == 1:
        corpus.tag_column = 1  # tokens only: predictions are written as a new column
    return corpus


def _apply_scheme(corpus: TaggedCorpus, scheme: str, convert_to: str | None) -> None:
    tagged = [s for s in corpus.sentences if s.tags is not None]
    if scheme == "auto":
        scheme = detect_scheme([s.tags for s in tagged])
    else:
        for s in tagged:
            for tag, row in zip(s.tags, s.rows):
                check_tag(tag, scheme, corpus.path, row + 1)
    if convert_to is not None and convert_to != scheme:
        if scheme == "none":
            raise DataError(f"cannot convert to {convert_to}: the tags are not entity tags "
                            f"(IOB1, BIO or BIOES)", corpus.path)
        for s in tagged:
            s.tags = convert_tags(s.tags, convert_to)
        scheme = convert_to
    corpus.scheme = scheme


def write_tagged(corpus: TaggedCorpus, out: str | Path | TextIO,
                 tags: Sequence[Sequence[str]] | None = None) -> None:
    """Write ``corpus`` back in its own format, with ``tags`` (one list per sentence; default the
    corpus's own tags) in its tag column; every other line and column is kept as read."""
    if tags is None:
        tags = [s.tags for s in corpus.sentences]
    if len(tags) != len(corpus.sentences):
        raise ValueError(f"tags: expected {len(corpus.sentences)} sentences, got {len(tags)}")
    lines = list(corpus.lines)
    for k, (s, ts) in enumerate(zip(corpus.sentences, tags)):
        if ts is None:
            continue
        if len(ts) != len(s.rows):
            raise ValueError(f"tags[{k}]: expected {len(s.rows)} tags, got {len(ts)}")
        for row, tag in zip(s.rows, ts):
            raw = lines[row]
            body = raw.rstrip("\r\n")
            end = raw[len(body):]
            fields = _split(body, corpus.separator)
            if corpus.tag_column < len(fields):
                if fields[corpus.tag_column] == tag:
                    continue  # unchanged: keep the line exactly as read
                fields[corpus.tag_column] = tag
            else:
                fields.append(tag)
            lines[row] = corpus.separator.join(fields) + end
    text = "".join(lines)
    if isinstance(out, (str, Path)):
        Path(out).write_text(text, encoding="utf-8")
    else:
        out.write(text)
