"""Tagging metrics: token accuracy, and entity-level P/R/F1 as the CoNLL ``conlleval`` script.

An entity counts as correct only when the guessed span has the same start, end and type as a
gold span (exact match). Spans are read from the tags by :func:`rnnkit.data.schemes.spans`,
``conlleval``'s rules, so IOB1, BIO and BIOES inputs (and ill-formed sequences) are all scored
as ``conlleval`` would score them; a span still open at the sentence end ends there.

    precision = correct / guessed,  recall = correct / gold,  F1 = 2 P R / (P + R)

(0 where a denominator is 0), overall (micro) and per entity type. Values are fractions in
[0, 1], not percentages.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from rnnkit.data.schemes import spans


def _check_pairs(gold: Sequence[Sequence[str]], guess: Sequence[Sequence[str]]) -> None:
    if len(gold) != len(guess):
        raise ValueError(f"gold has {len(gold)} sentences, guess {len(guess)}")
    for i, (g, p) in enumerate(zip(gold, guess)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: gold has {len(g)} tags, guess {len(p)}")


def token_accuracy(gold: Sequence[Sequence[str]], guess: Sequence[Sequence[str]]) -> float:
    """Fraction of tokens whose guessed tag equals the gold tag (sentences of tag strings or
    ids, the same lengths)."""
    _check_pairs(gold, guess)
    total = sum(len(g) for g in gold)
    right = sum(a == b for g, p in zip(gold, guess) for a, b in zip(g, p))
    return right / total if total else 0.0


def _prf(correct: int, guessed: int, gold: int) -> tuple[float, float, float]:
    p = correct / guessed if guessed else 0.0
    r = correct / gold if gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


@dataclass
class SpanScores:
    """Entity-level scores: overall ``precision``, ``recall``, ``f1`` and the counts, plus
    ``per_type[type] = {"precision", "recall", "f1", "correct", "guessed", "gold"}``."""

    precision: float
    recall: float
    f1: float
    correct: int
    guessed: int
    gold: int
    per_type: dict[str, dict[str, float]] = field(default_factory=dict)


def span_f1(gold: Sequence[Sequence[str]], guess: Sequence[Sequence[str]]) -> SpanScores:
    """Entity-level precision, recall and F1 of ``guess`` against ``gold`` (lists of
    sentences of tag strings in IOB1, BIO or BIOES)."""
    _check_pairs(gold, guess)
    correct: Counter = Counter()
    guessed: Counter = Counter()
    wanted: Counter = Counter()
    for g, p in zip(gold, guess):
        gs, ps = set(spans(g)), set(spans(p))
        wanted.update(s[2] for s in gs)
        guessed.update(s[2] for s in ps)
        correct.update(s[2] for s in gs & ps)
    per_type = {}
    for kind in sorted(set(wanted) | set(guessed)):
        p, r, f = _prf(correct[kind], guessed[kind], wanted[kind])
        per_type[kind] = {"precision": p, "recall": r, "f1": f, "correct": correct[kind],
                          "guessed": guessed[kind], "gold": wanted[kind]}
    c, n_guess, n_gold = sum(correct.values()), sum(guessed.values()), sum(wanted.values())
    p, r, f = _prf(c, n_guess, n_gold)
    return SpanScores(p, r, f, c, n_guess, n_gold, per_type)
