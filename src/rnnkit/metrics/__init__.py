"""Metrics, one module per family of tasks.

- ``rnnkit.metrics.tagging``: token accuracy; entity-level precision, recall and F1 (conlleval).
- ``rnnkit.metrics.classification``: accuracy, per-class and macro-averaged F1.
"""

from rnnkit.metrics.classification import ClassificationScores, classification_scores
from rnnkit.metrics.tagging import SpanScores, span_f1, token_accuracy

__all__ = [
    "ClassificationScores",
    "SpanScores",
    "classification_scores",
    "span_f1",
    "token_accuracy",
]
