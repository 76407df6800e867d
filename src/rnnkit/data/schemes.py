"""Entity tag schemes: IOB1, IOB2 (BIO) and BIOES; spans and conversion between them.

A *span* is ``(start, end, type)`` over token positions, ``end`` exclusive. Tags are read the way
the CoNLL shared tasks' ``conlleval`` script reads them (with its usual extension to ``S-``), so
that ill-formed sequences still give the spans ``conlleval`` would count:

- a span starts at ``B-X`` and ``S-X``, at ``I-X``/``E-X`` after ``O``, ``E-``, ``S-`` or a
  different type, and at the first token of a sentence when that token is not ``O``;
- a span ends before ``B-`` / ``S-`` / ``O`` / a different type, after ``E-`` and ``S-``, and at
  the end of the sentence (a span cut off by the sentence end is still a span).

Scheme names: ``"iob1"`` (I- everywhere, B- only to split two adjacent spans of one type),
``"bio"`` (alias ``"iob2"``: B- at every span start), ``"bioes"`` (alias ``"iobes"``: S- for
one-token spans, E- at span ends) and ``"none"`` (tags with no span structure, e.g. POS tags).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rnnkit.errors import DataError, RnnkitError

SCHEMES = ("iob1", "bio", "bioes", "none")
ALIASES = {"iob2": "bio", "iobes": "bioes", "bilou": "bioes"}
PREFIXES = {"iob1": "BI", "bio": "BI", "bioes": "BIES"}
_TAG = re.compile(r"^([BIES])-(.+)$")

Span = tuple[int, int, str]


def check_scheme(scheme: str, name: str = "scheme") -> str:
    """The canonical name of ``scheme`` (aliases resolved); an error naming ``name`` if unknown."""
    key = str(scheme).lower()
    key = ALIASES.get(key, key)
    if key not in SCHEMES:
        raise RnnkitError(f"{name}: unknown tag scheme {scheme!r}; expected one of "
                          f"{', '.join(SCHEMES)} (or iob2, iobes)")
    return key


def split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER" -> ("B", "PER")``, ``"O" -> ("O", "")``; anything else is ``(tag, "")``."""
    m = _TAG.match(tag)
    if m:
        return m.group(1), m.group(2)
    return tag, ""


def is_entity_tag(tag: str) -> bool:
    """Whether ``tag`` is ``O`` or a prefixed ``B-/I-/E-/S-`` tag."""
    return tag == "O" or _TAG.match(tag) is not None


def check_tag(tag: str, scheme: str, path: object = None, line: int | None = None) -> None:
    """Raise :class:`DataError` (naming ``path:line``) when ``tag`` is not a tag of ``scheme``."""
    if scheme == "none" or tag == "O":
        return
    prefix, kind = split_tag(tag)
    if not kind or prefix not in PREFIXES[scheme]:
        allowed = ", ".join(f"{p}-TYPE" for p in PREFIXES[scheme])
        raise DataError(f"tag {tag!r} is not a {scheme.upper()} tag (expected O, {allowed})",
                        path, line)


def detect_scheme(sentences: Sequence[Sequence[str]]) -> str:
    """Guess the scheme of tagged sentences: ``"bioes"`` when E-/S- occur, ``"iob1"`` when an
    ``I-X`` starts a span, ``"bio"`` for other B-/I- tags, ``"none"`` when any tag is not an
    entity tag or no tag carries a prefix."""
    prefixes: set[str] = set()
    iob1 = False
    for tags in sentences:
        prev = "O"
        for tag in tags:
            if not is_entity_tag(tag):
                return "none"
            p, kind = split_tag(tag)
            prefixes.add(p)
            if p == "I":
                pp, pkind = split_tag(prev)
                if pp == "O" or pkind != kind:
                    iob1 = True
            prev = tag
    prefixes.discard("O")
    if not prefixes:
        return "none"
    if prefixes & {"E", "S"}:
        return "bioes"
    return "iob1" if iob1 else "bio"


def _ends(prev: str, tag: str, prev_type: str, kind: str) -> bool:
    if prev in ("E", "S"):
        return True
    if prev in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev != "O" and prev_type != kind


def _starts(prev: str, tag: str, prev_type: str, kind: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag != "O" and prev_type != kind


def spans(tags: Sequence[str]) -> list[Span]:
    """The spans ``(start, end, type)`` of one sentence's tags, read as ``conlleval`` reads them
    (any of IOB1, BIO, BIOES; see the module docstring). Non-entity tags count as ``O``."""
    out: list[Span] = []
    start = -1
    prev, prev_type = "O", ""
    for i, tag in enumerate(tags):
        p, kind = split_tag(tag)
        if not kind:
            p = "O"
        if start >= 0 and _ends(prev, p, prev_type, kind):
            out.append((start, i, prev_type))
            start = -1
        if _starts(prev, p, prev_type, kind):
            start = i
        prev, prev_type = p, kind
    if start >= 0:
        out.append((start, len(tags), prev_type))
    return out


def spans_to_tags(spans_: Sequence[Span], length: int, scheme: str) -> list[str]:
    """Write non-overlapping spans as ``length`` tags of ``scheme`` (iob1, bio or bioes)."""
    scheme = check_scheme(scheme)
    if scheme == "none":
        raise RnnkitError("scheme: cannot write spans as tags of scheme 'none'")
    tags = ["O"] * length
    prev_end, prev_type = -1, None
    for start, end, kind in sorted(spans_):
        if not 0 <= start < end <= length:
            raise ValueError(f"span ({start}, {end}, {kind!r}) outside a sentence of {length}")
        if scheme == "bioes" and end - start == 1:
            tags[start] = f"S-{kind}"
        else:
            for i in range(start, end):
                tags[i] = f"I-{kind}"
            if scheme == "bio" or scheme == "bioes" or (start == prev_end and kind == prev_type):
                tags[start] = f"B-{kind}"
            if scheme == "bioes":
                tags[end - 1] = f"E-{kind}"
        prev_end, prev_type = end, kind
    return tags


def convert_tags(tags: Sequence[str], scheme: str) -> list[str]:
    """One sentence's tags (any of IOB1, BIO, BIOES, read as ``conlleval`` does) in ``scheme``."""
    return spans_to_tags(spans(tags), len(tags), scheme)


def allowed_transition(prev: str, tag: str, scheme: str) -> bool:
    """Whether ``tag`` may follow ``prev`` in a well-formed sequence of ``scheme``.

    ``prev`` is ``"<s>"`` at the sentence start; ``tag`` is ``"</s>"`` at its end. Tags that
    carry no prefix, and every transition under scheme ``"none"``, are allowed."""
    if scheme == "none":
        return True
    pp, ptype = ("O", "") if prev == "<s>" else split_tag(prev)
    tp, ttype = ("O", "") if tag == "</s>" else split_tag(tag)
    if prev != "<s>" and pp != "O" and not ptype:
        return True
    if tag != "</s>" and tp != "O" and not ttype:
        return True
    inside = pp in ("B", "I")  # prev leaves a span open that may go on
    if scheme == "bioes":
        if inside:  # an open span must go on with I- or end with E- of its type
            return tp in ("I", "E") and ttype == ptype
        return tp in ("O", "B", "S")
    if scheme == "bio":
        return tp != "I" or (inside and ttype == ptype)
    # iob1: B-X only right after a span of type X
    return tp != "B" or (inside and ttype == ptype)
