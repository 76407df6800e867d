"""Generation: sampling (temperature, top-k, top-p; ``sampling``), greedy decoding and beam
search (``search``) on any model with ``step()`` and ``reorder_state()``."""

from rnnkit.generation.sampling import filter_logits, next_token_distribution, sample
from rnnkit.generation.search import Hypothesis, StepModel, beam_search, greedy

__all__ = [
    "filter_logits",
    "next_token_distribution",
    "sample",
    "Hypothesis",
    "StepModel",
    "beam_search",
    "greedy",
]
