"""Whether an evaluation's gold labels are ones the model can predict at all, and the one
threshold (:data:`MAX_UNKNOWN`) of every "unknown to the model" warning.

Evaluating a named-entity model on a part-of-speech file, or a classifier on another data
set's labels, gives zeros that say nothing about the model; :func:`check_labels` says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable

from rnnkit.errors import suspect

#: a larger share of tokens, or of gold labels, unknown to the model makes an evaluation
#: mean little: a warning (an error with --strict)
MAX_UNKNOWN = 0.05


def check_labels(gold: Iterable[str], known: Collection[str], source: str, *,
                 strict: bool = False, max_unknown: float = MAX_UNKNOWN) -> float:
    """The share of the labels in ``gold`` that are not in ``known`` (the model's label
    set). When it is above ``max_unknown`` the evaluation would mean little: a warning naming
    the most frequent unknown labels, or with ``strict`` a
    :class:`~rnnkit.errors.MeaninglessResult`."""
    counts = Counter(gold)
    total = sum(counts.values())
    unknown = Counter({label: n for label, n in counts.items() if label not in known})
    share = sum(unknown.values()) / total if total else 0.0
    if share > max_unknown:
        names = ", ".join(repr(label) for label, _ in unknown.most_common(5))
        common = len(set(counts) & set(known))
        suspect(f"{source}: {100 * share:.1f}% of its {total:,} gold labels are ones the model "
                f"was not trained on ({names}{', ...' if len(unknown) > 5 else ''}); "
                f"{common} of its {len(counts)} labels are the model's", strict)
    return share
