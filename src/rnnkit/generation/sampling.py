"""Choosing the next token from a model's scores: greedy, temperature, top-k, top-p.

All functions take ``logits`` (B, V): unnormalised log-probabilities (log-probabilities work
too). The sampling distribution is, in this order:

1. temperature T: ``softmax(logits / T)``; T < 1 sharpens, T > 1 flattens, T = 0 is greedy;
2. top-k (Fan et al. 2018): keep the k most probable tokens, renormalise;
3. top-p, nucleus (Holtzman et al. 2020): keep the smallest set of most probable tokens whose
   probability sums to at least p, renormalise (the most probable token is always kept).

::

    probs = next_token_distribution(logits, temperature=0.8, top_k=40)   # (B, V)
    token = sample(logits, temperature=0.8, top_p=0.9, generator=g)     # (B,)
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.errors import RnnkitError


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ValueError naming the argument unless the options are valid."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                              or top_k < 1):
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")


def greedy(logits: Tensor) -> Tensor:
    """The most probable token of each row: (B, V) -> (B,)."""
    return logits.argmax(dim=-1)


def filter_logits(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Tensor:
    """Logits (B, V) divided by ``temperature`` (> 0), with the tokens outside top-k and
    top-p set to -inf. Their softmax is the sampling distribution."""
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        raise ValueError("temperature 0 is greedy decoding; it has no distribution")
    scores = logits.float() / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[..., -1:]  # (B, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # (B, V) mass of the more probable tokens
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def next_token_distribution(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                            top_p: float | None = None) -> Tensor:
    """The probabilities (B, V) that :func:`sample` draws from (one-hot at temperature 0)."""
    if temperature == 0:
        check_sampling(temperature, top_k, top_p)
        return torch.nn.functional.one_hot(greedy(logits), logits.shape[-1]).float()
    return filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1)


def sample(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Draw one token per row of ``logits`` (B, V) -> (B,); greedy when ``temperature`` is 0."""
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return greedy(logits)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1)
    try:
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    except RuntimeError:
        if torch.isfinite(probs).all():
            raise
        raise RnnkitError("cannot sample: the model's next-token probabilities are not "
                          "finite (its weights or logits hold inf or NaN)") from None
