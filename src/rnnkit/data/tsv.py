"""Readers for sentence classification: labelled TSV files, and one text a line.

``read_tsv(path, text_column, label_column, header)``: tab-separated fields, one example a line;
columns chosen by name (needs a header) or by index. With ``header=None`` the first line is taken
as a header when a column is given by name, or when one of its fields is ``label``, ``text`` or
``sentence`` (so GLUE-style files such as SST-2's ``sentence<TAB>label`` work with no option).
Every line must have as many fields as the first one; anything else raises
:class:`rnnkit.errors.DataError` naming the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rnnkit.data.text import read_text
from rnnkit.errors import DataError

HEADER_WORDS = ("label", "text", "sentence")


@dataclass
class LabelledTexts:
    """Texts, their labels (``None`` for an unlabelled file) and the 1-based line of each."""

    path: str
    texts: list[str]
    labels: list[str] | None
    lines: list[int]

    def __len__(self) -> int:
        return len(self.texts)


def parse_column(value: str) -> int | str:
    """A column given on the command line: an index (``"1"``, ``"-1"``) or a header name."""
    return int(value) if value.lstrip("-").isdigit() else value


def _lines(path: str | Path) -> list[str]:
    return [ln.rstrip("\r\n") for ln in read_text(path, allow_empty=True).splitlines()]


def _resolve(column: int | str, name: str, header: list[str] | None, width: int,
             path: str | Path) -> int:
    if isinstance(column, str) and not column.lstrip("-").isdigit():
        if header is None:
            raise DataError(f"{name} {column!r} is a name, but the file has no header line",
                            path, 1)
        if column not in header:
            raise DataError(f"{name}: no column named {column!r} in the header "
                            f"({', '.join(repr(h) for h in header)})", path, 1)
        return header.index(column)
    index = int(column)
    index = index + width if index < 0 else index
    if not 0 <= index < width:
        raise DataError(f"{name} {column} does not exist: the lines have {width} field(s)",
                        path, 1)
    return index


def read_tsv(path: str | Path, text_column: int | str = 0, label_column: int | str | None = 1,
             header: bool | None = None) -> LabelledTexts:
    """Read a labelled TSV file.

    Args:
        path: the file.
        text_column: name or index of the text column.
        label_column: name or index of the label column; ``None`` for texts only.
        header: whether the first line names the columns; ``None`` decides as the module says.
    Returns:
        :class:`LabelledTexts` with the texts stripped of surrounding white space.
    """
    lines = _lines(path)
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is None:
        raise DataError("empty file: no examples", path)
    first_fields = lines[first].split("\t")
    named = any(isinstance(c, str) and not c.lstrip("-").isdigit()
                for c in (text_column, label_column) if c is not None)
    if header is None:
        header = named or any(f.strip().lower() in HEADER_WORDS for f in first_fields)
    names = [f.strip() for f in first_fields] if header else None
    width = len(first_fields)
    text_i = _resolve(text_column, "text column", names, width, path)
    label_i = (None if label_column is None
               else _resolve(label_column, "label column", names, width, path))
    if label_i == text_i:
        raise DataError(f"the text column and the label column are the same column "
                        f"({text_i}): a model would read its label from its input", path)
    out = LabelledTexts(str(path), [], None if label_i is None else [], [])
    for i in range(first + (1 if header else 0), len(lines)):
        line = lines[i]
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != width:
            need = max(text_i, label_i or 0) + 1
            what = ("the label column is missing"
                    if label_i is not None and len(fields) <= label_i else "mixed column counts")
            raise DataError(f"expected {width} tab-separated fields (as on line {first + 1}), "
                            f"got {len(fields)}: {what} (need at least {need})", path, i + 1)
        text = fields[text_i].strip()
        if not text:
            raise DataError(f"empty text in column {text_i}", path, i + 1)
        out.texts.append(text)
        out.lines.append(i + 1)
        if label_i is not None:
            label = fields[label_i].strip()
            if not label:
                raise DataError(f"empty label in column {label_i}", path, i + 1)
            out.labels.append(label)
    if not out.texts:
        raise DataError("no examples after the header", path)
    return out


def read_lines(path: str | Path) -> LabelledTexts:
    """One text a line (blank lines kept as empty texts, so outputs stay line-aligned)."""
    lines = _lines(path)
    return LabelledTexts(str(path), [ln.strip() for ln in lines], None,
                         list(range(1, len(lines) + 1)))


def tokenize(text: str) -> list[str]:
    """White-space tokenization (the data sets here come tokenized)."""
    return text.split()
