"""ABC music notation: reading tunes with a label, and checking that a tune is well formed.

A file holds tunes separated by blank lines, each starting with ``X:``. A tune's label (its
*condition*) comes from the file name (``jigs.abc`` -> ``jigs``; ``reelsa-c.abc`` -> ``reels``:
a trailing letter range is dropped) or from one of its header fields (``M:`` metre, ``R:``
rhythm, ...). Whole-line comments (``%``) are dropped from the tune text.

:func:`check_abc` says whether a tune is *well formed*:

1. the header has the fields ``X:``, ``M:`` and ``K:`` (``X:`` first), with a readable metre
   (``n/d``, ``C`` = 4/4, ``C|`` = 2/2);
2. the body has at least one bar, and its bars agree with the metre: every bar lasts exactly
   one measure (note lengths in units of ``L:``, by default 1/8, or 1/16 for metres below
   3/4; broken rhythm, tuplets, chords, rests and inline ``[M:..]`` / ``[L:..]`` changes
   counted), except that a bar next to a section boundary (the tune's first and last bar, a
   repeat sign, a double bar, a first or second ending) may be shorter (pick-up bars). No bar
   may be longer than a measure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from rnnkit.data.text import read_text
from rnnkit.errors import DataError

_FIELD = re.compile(r"^([A-Za-z]):(.*)$")
_RANGE_SUFFIX = re.compile(r"[a-z]-[a-z]$")
_NOTE = re.compile(r"(\^{1,2}|_{1,2}|=)?([A-Ga-gzxZ])([',]*)(\d*)(/*)(\d*)")
_BAR = re.compile(r"(:*\|[\]|]?:*|:*\[\||::)(\s*\[?\d+(?:[,-]\d+)*)?|\[\d+")
_TUPLET_Q = {2: 3, 3: 2, 4: 3, 6: 2, 8: 3}


@dataclass
class Tune:
    """One tune: its text (comment lines removed), label, header fields, file and line."""

    text: str
    label: str
    fields: dict[str, str]
    path: str
    line: int


def label_from_filename(path: str | Path) -> str:
    """``jigs.abc`` -> ``jigs``; ``reelsa-c.abc`` -> ``reels``."""
    stem = Path(path).stem.lower()
    return _RANGE_SUFFIX.sub("", stem) or stem


def header_fields(text: str) -> dict[str, str]:
    """The header's fields (up to and including the first ``K:``), first value of each."""
    out: dict[str, str] = {}
    for line in text.split("\n"):
        m = _FIELD.match(line.strip())
        if not m:
            break
        out.setdefault(m.group(1), m.group(2).strip())
        if m.group(1) == "K":
            break
    return out


def read_abc(path: str | Path, condition_from: str = "filename", field_name: str = "R"
             ) -> list[Tune]:
    """The tunes of one ``.abc`` file, labelled by ``condition_from`` (``"filename"`` or
    ``"field"``, the header field ``field_name``; a tune without it is labelled ``"none"``)."""
    path = Path(path)
    text = read_text(path, allow_empty=True)
    if condition_from not in ("filename", "field"):
        raise ValueError(f"condition_from must be 'filename' or 'field', got {condition_from!r}")
    tunes: list[Tune] = []
    cur: list[str] = []
    start = 0

    def flush() -> None:
        if cur:
            body = "\n".join(cur).strip("\n")
            fields = header_fields(body)
            label = (label_from_filename(path) if condition_from == "filename"
                     else fields.get(field_name, "none"))
            tunes.append(Tune(body, label, fields, str(path), start))

    for i, line in enumerate(text.replace("\r", "").split("\n"), start=1):
        stripped = line.strip()
        if stripped.startswith("X:"):
            flush()
            cur, start = [stripped], i
        elif not stripped:
            flush()
            cur = []
        elif cur and not stripped.startswith("%"):
            cur.append(line.rstrip())
    flush()
    if not tunes:
        raise DataError("no tunes found (a tune starts with a line 'X:')", path)
    return tunes


def read_abc_tunes(source: str | Path, condition_from: str = "filename",
                   field_name: str = "R") -> list[Tune]:
    """Every tune of a ``.abc`` file, or of every ``.abc`` file of a directory (sorted).
    Labels from a header field that no tune has are a :class:`DataError` (every tune would
    be ``"none"``: a model with no condition)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(source.glob("*.abc"))
        if not files:
            raise DataError("no .abc files in this directory", source)
        tunes = [t for f in files for t in read_abc(f, condition_from, field_name)]
    else:
        tunes = read_abc(source, condition_from, field_name)
    if condition_from == "field" and all(field_name not in t.fields for t in tunes):
        raise DataError(f"--field {field_name}: none of its {len(tunes)} tunes has a header "
                        f"field {field_name}: (fields seen: "
                        f"{', '.join(sorted({k for t in tunes for k in t.fields}))})", source)
    return tunes


# -- well-formedness ------------------------------------------------------------------------
@dataclass
class AbcCheck:
    """The verdict of :func:`check_abc`: ``ok``, and what is wrong otherwise."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    bars: int = 0


def parse_metre(value: str) -> Fraction | None:
    """``6/8`` -> 3/4 of a whole note; ``C`` -> 1; ``C|`` -> 1; ``None`` when unreadable."""
    v = value.strip().split()[0] if value.strip() else ""
    if v == "C":
        return Fraction(1)
    if v == "C|":
        return Fraction(1)
    m = re.fullmatch(r"(\d+)/(\d+)", v)
    if not m or int(m.group(2)) == 0 or int(m.group(1)) == 0:
        return None
    return Fraction(int(m.group(1)), int(m.group(2)))


def _unit(metre: Fraction, value: str | None) -> Fraction:
    if value:
        m = re.fullmatch(r"\s*(\d+)/(\d+)\s*", value)
        if m and int(m.group(2)):
            return Fraction(int(m.group(1)), int(m.group(2)))
    return Fraction(1, 16) if metre < Fraction(3, 4) else Fraction(1, 8)


def _length(num: str, slashes: str, den: str) -> Fraction:
    n = Fraction(int(num)) if num else Fraction(1)
    if slashes:
        d = int(den) if den else 2 ** len(slashes)
        if den and len(slashes) > 1:
            d = int(den) * 2 ** (len(slashes) - 1)
        n /= d
    return n


def check_abc(text: str) -> AbcCheck:
    """Check one tune (see the module docstring); never raises on bad text."""
    problems: list[str] = []
    lines = [ln for ln in text.replace("\r", "").split("\n") if not ln.strip().startswith("%")]
    header: dict[str, str] = {}
    body_start = len(lines)
    for i, line in enumerate(lines):
        m = _FIELD.match(line.strip())
        if not m:
            body_start = i
            break
        header.setdefault(m.group(1), m.group(2))
        if m.group(1) == "K":
            body_start = i + 1
            break
    first = _FIELD.match(lines[0].strip()) if lines else None
    if not first or first.group(1) != "X":
        problems.append("does not start with an X: field")
    for f in ("X", "M", "K"):
        if f not in header:
            problems.append(f"header has no {f}: field")
    metre = parse_metre(header.get("M", "")) if "M" in header else None
    if "M" in header and metre is None:
        problems.append(f"unreadable metre M:{header['M']}")
    if problems:
        return AbcCheck(False, problems)
    unit = _unit(metre, header.get("L"))
    bars = _bars(lines[body_start:], metre, unit, problems)
    if not bars:
        problems.append("no bars in the body")
    complete = 0
    for k, (dur, measure, boundary_before, boundary_after) in enumerate(bars):
        edge = k == 0 or k == len(bars) - 1 or boundary_before or boundary_after
        if dur == measure:
            complete += 1
        elif dur > measure:
            problems.append(f"bar {k + 1} lasts {dur} of a whole note, more than the metre "
                            f"{measure}")
        elif not edge:
            problems.append(f"bar {k + 1} lasts {dur} of a whole note, less than the metre "
                            f"{measure}")
    if bars and not complete:
        problems.append("no complete bar")
    return AbcCheck(not problems, problems, len(bars))


def _bars(lines: list[str], metre: Fraction, unit: Fraction, problems: list[str]
          ) -> list[tuple[Fraction, Fraction, bool, bool]]:
    """Each bar's (duration, metre, section boundary before, after)."""
    bars: list[tuple[Fraction, Fraction, bool, bool]] = []
    dur = Fraction(0)
    boundary = True  # the tune's start
    broken = Fraction(1)  # multiplier for the next note (broken rhythm)
    tuplet_left, tuplet_factor = 0, Fraction(1)
    last = Fraction(0)
    for raw in lines:
        line = raw.split("%", 1)[0].rstrip()
        m = _FIELD.match(line.strip())
        if m:  # a field line inside the body (a new part, key or metre): a boundary
            if bars:
                bars[-1] = (*bars[-1][:3], True)
            boundary = True
            if m.group(1) == "M":
                metre = parse_metre(m.group(2)) or metre
            elif m.group(1) == "L":
                unit = _unit(metre, m.group(2))
            continue
        i, n = 0, len(line)
        while i < n:
            c = line[i]
            if c == '"':  # chord symbol or annotation
                j = line.find('"', i + 1)
                i = n if j < 0 else j + 1
                continue
            if c in "!+":
                j = line.find(c, i + 1)
                i = n if j < 0 else j + 1
                continue
            if c == "{":  # grace notes take no time
                j = line.find("}", i + 1)
                i = n if j < 0 else j + 1
                continue
            if c == "[" and i + 2 < n and line[i + 1].isalpha() and line[i + 2] == ":":
                j = line.find("]", i)
                inner = line[i + 1:(n if j < 0 else j)]
                if inner[0] == "M":
                    metre = parse_metre(inner[2:]) or metre
                elif inner[0] == "L":
                    unit = _unit(metre, inner[2:])
                i = n if j < 0 else j + 1
                continue
            bar = _BAR.match(line, i)
            if bar and (c in "|:" or (c == "[" and (line[i + 1:i + 2] in "|" or
                                                    line[i + 1:i + 2].isdigit()))):
                token = bar.group(0)
                section = token.strip() != "|"
                if dur > 0:
                    bars.append((dur, metre, boundary, section))
                    boundary = section
                else:
                    boundary = boundary or section
                dur = Fraction(0)
                i = bar.end()
                continue
            if c == "(" and i + 1 < n and line[i + 1].isdigit():
                p = int(line[i + 1])
                tuplet_left = p
                tuplet_factor = Fraction(_TUPLET_Q.get(p, 2), p)
                i += 2
                while i < n and (line[i] == ":" or line[i].isdigit()):
                    i += 1
                continue
            if c == "[":  # a chord: the length of its first note, times a suffix
                j = line.find("]", i)
                if j < 0:
                    problems.append("unclosed chord '['")
                    return bars
                note = _NOTE.search(line, i + 1, j)
                length = _length(*note.group(4, 5, 6)) if note else Fraction(0)
                suffix = re.match(r"(\d*)(/*)(\d*)", line[j + 1:])
                mult = _length(*suffix.groups()) if suffix.group(0) else Fraction(1)
                i = j + 1 + len(suffix.group(0))
                last = length * mult * unit * broken * (tuplet_factor if tuplet_left else 1)
                dur += last
                broken = Fraction(1)
                tuplet_left = max(0, tuplet_left - 1)
                continue
            note = _NOTE.match(line, i)
            if note:
                length = _length(*note.group(4, 5, 6))
                if note.group(2) == "Z":  # multi-measure rest
                    length = metre / unit * (int(note.group(4) or 1))
                last = length * unit * broken * (tuplet_factor if tuplet_left else 1)
                dur += last
                broken = Fraction(1)
                tuplet_left = max(0, tuplet_left - 1)
                i = note.end()
                continue
            if c in "<>":
                k = 1
                while i + k < n and line[i + k] == c:
                    k += 1
                short = Fraction(1, 2 ** k)
                if c == ">":
                    dur += last * (1 - short) / 1 if last else 0
                    broken = short
                else:
                    dur -= last * (1 - short) if last else 0
                    broken = 2 - short
                i += k
                continue
            i += 1  # ties, slurs, spaces, decorations we do not time
    if dur > 0:
        bars.append((dur, metre, boundary, True))
    return bars
