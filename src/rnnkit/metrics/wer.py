"""Word and character error rates: corpus-level edit distance over the reference's words
(characters), with its substitutions, deletions and insertions (what ``jiwer`` computes;
tests/test_asr.py checks that they agree).

    WER = (S + D + I) / N        N: the reference words of the whole corpus

A corpus-level rate divides the summed edit operations by the summed reference length, so a
long utterance weighs more than a short one (jiwer's ``wer`` on lists, sclite's "WER").
CER is the same over characters, spaces included, of the texts with runs of white space
made single.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class ErrorCounts:
    """Edit operations of a corpus against its references.

    Attributes:
        substitutions, deletions, insertions: the operations of one minimal alignment per
            utterance (the one jiwer reports, :func:`align`).
        reference: the reference units (words or characters) of the corpus, N.
        utterances: how many pairs were scored.
    """

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    reference: int = 0
    utterances: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """(S + D + I) / N; an empty reference corpus with insertions is inf, without 0."""
        if self.reference == 0:
            return float("inf") if self.errors else 0.0
        return self.errors / self.reference

    def add(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(self.substitutions + other.substitutions,
                           self.deletions + other.deletions,
                           self.insertions + other.insertions,
                           self.reference + other.reference,
                           self.utterances + other.utterances)


def align(ref: Sequence[str], hyp: Sequence[str]) -> ErrorCounts:
    """The edit operations turning ``ref`` into ``hyp`` (Levenshtein, unit costs). Of the
    minimal alignments it counts the one jiwer (rapidfuzz) reports: the common prefix and
    suffix set aside, then traced back from the end preferring a deletion, a substitution, an
    insertion, a match, in that order."""
    lo = 0
    while lo < len(ref) and lo < len(hyp) and ref[lo] == hyp[lo]:
        lo += 1
    hi_r, hi_h = len(ref), len(hyp)
    while hi_r > lo and hi_h > lo and ref[hi_r - 1] == hyp[hi_h - 1]:
        hi_r, hi_h = hi_r - 1, hi_h - 1
    r, h = ref[lo:hi_r], hyp[lo:hi_h]
    n, m = len(r), len(h)
    dist = [list(range(m + 1))]
    for i in range(1, n + 1):
        row, up, ri = [i] + [0] * m, dist[-1], r[i - 1]
        for j in range(1, m + 1):
            row[j] = min(up[j - 1] + (ri != h[j - 1]), up[j] + 1, row[j - 1] + 1)
        dist.append(row)
    s = d = ins = 0
    i, j = n, m
    while i > 0 or j > 0:
        here = dist[i][j]
        if i > 0 and here == dist[i - 1][j] + 1:
            d, i = d + 1, i - 1
        elif i > 0 and j > 0 and r[i - 1] != h[j - 1] and here == dist[i - 1][j - 1] + 1:
            s, i, j = s + 1, i - 1, j - 1
        elif j > 0 and here == dist[i][j - 1] + 1:
            ins, j = ins + 1, j - 1
        else:  # a match
            i, j = i - 1, j - 1
    return ErrorCounts(s, d, ins, len(ref), 1)


def _words(text: str) -> list[str]:
    return text.split()


def _chars(text: str) -> list[str]:
    return list(" ".join(text.split()))


def error_counts(references: Sequence[str], hypotheses: Sequence[str], unit: str = "word"
                 ) -> ErrorCounts:
    """Corpus-level edit operations of ``hypotheses`` against ``references`` (one text each,
    same order), over words (``unit="word"``) or characters (``"char"``)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    split = _words if unit == "word" else _chars
    total = ErrorCounts()
    for r, h in zip(references, hypotheses):
        total = total.add(align(split(r), split(h)))
    return total


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """The corpus word error rate."""
    return error_counts(references, hypotheses, "word").rate


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """The corpus character error rate."""
    return error_counts(references, hypotheses, "char").rate


__all__ = ["ErrorCounts", "align", "cer", "error_counts", "wer"]
