"""Classification metrics: accuracy, per-class precision/recall/F1 and macro-averaged F1.

Macro-F1 is the unweighted mean of the per-class F1 over every class that occurs in the gold
labels or the guesses (a class never guessed and never present is not counted). Fractions in
[0, 1].
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field


@dataclass
class ClassificationScores:
    """``accuracy``, ``macro_f1`` and ``per_class[label] = {"precision", "recall", "f1",
    "support"}``."""

    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)


def classification_scores(gold: Sequence[Hashable], guess: Sequence[Hashable]
                          ) -> ClassificationScores:
    """Accuracy and macro-F1 of ``guess`` against ``gold`` (equal-length label sequences)."""
    if len(gold) != len(guess):
        raise ValueError(f"gold has {len(gold)} labels, guess {len(guess)}")
    if not gold:
        raise ValueError("no labels to score")
    right = sum(a == b for a, b in zip(gold, guess))
    tp: Counter = Counter()
    n_gold: Counter = Counter(gold)
    n_guess: Counter = Counter(guess)
    for a, b in zip(gold, guess):
        if a == b:
            tp[a] += 1
    per_class = {}
    for label in sorted(set(n_gold) | set(n_guess), key=str):
        p = tp[label] / n_guess[label] if n_guess[label] else 0.0
        r = tp[label] / n_gold[label] if n_gold[label] else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        per_class[str(label)] = {"precision": p, "recall": r, "f1": f, "support": n_gold[label]}
    macro = sum(c["f1"] for c in per_class.values()) / len(per_class)
    return ClassificationScores(right / len(gold), macro, per_class)


def accuracy(gold: Sequence[Hashable], guess: Sequence[Hashable]) -> float:
    """Fraction of equal labels."""
    return classification_scores(gold, guess).accuracy


def macro_f1(gold: Sequence[Hashable], guess: Sequence[Hashable]) -> float:
    """Unweighted mean of the per-class F1."""
    return classification_scores(gold, guess).macro_f1
