"""Generation: greedy decoding and beam search (``search``) on any model with ``step()`` and
``reorder_state()``."""

from rnnkit.generation.search import Hypothesis, StepModel, beam_search, greedy

__all__ = [
    "Hypothesis",
    "StepModel",
    "beam_search",
    "greedy",
]
