"""Attention over a memory (the encoder's outputs): additive and multiplicative scores.

For a decoder state (the *query*) ``h_t`` and memory vectors (the *keys*, also the values)
``m_1 .. m_S``, with the lecture notes' alpha<t, t'> and context c<t>:

    e<t, s>     = score(h_t, m_s)
    alpha<t, s> = exp(e<t, s>) / sum_{s' < len} exp(e<t, s'>)      (0 at padded positions)
    c<t>        = sum_s alpha<t, s> m_s

Scores (``kind``):

- ``"additive"`` (Bahdanau et al. 2015): ``v^T tanh(W_q h_t + W_m m_s)``;
- ``"dot"`` (Luong et al. 2015): ``h_t^T m_s`` (query and memory sizes must be equal);
- ``"general"`` (Luong et al. 2015): ``h_t^T W_a m_s``.

The memory-side products (``W_m m_s``, ``W_a m_s``) do not depend on ``t``:
:meth:`Attention.prepare` computes them once per source sentence and the decoder passes the
result to every step.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from rnnkit.cells.base import check_choice, check_size

ATTENTIONS = ("additive", "dot", "general")


class AttentionOutput(NamedTuple):
    """``context`` (B, memory_size): c<t>; ``weights`` (B, S): alpha<t, .>, a distribution over
    the source positions, zero where ``mask`` is False."""

    context: Tensor
    weights: Tensor


class Attention(nn.Module):
    """Attention of a query (B, query_size) over a memory (B, S, memory_size).

    Args:
        kind: ``"additive"``, ``"dot"`` or ``"general"`` (see the module docstring).
        query_size: size of ``h_t``.
        memory_size: size of each ``m_s``.
        attention_size: size of the additive score's hidden layer (default ``query_size``).

    Parameters: additive ``query_proj`` (A x query_size, no bias), ``memory_proj``
    (A x memory_size, with bias), ``v`` (A,); general ``memory_proj`` (query_size x
    memory_size, no bias); dot none. torch.nn.Linear's initialisation; ``v`` ~ U(-1/sqrt(A),
    1/sqrt(A)).
    """

    def __init__(self, kind: str, query_size: int, memory_size: int,
                 attention_size: int | None = None) -> None:
        super().__init__()
        self.kind = check_choice("kind", kind, ATTENTIONS)
        self.query_size = check_size("query_size", query_size)
        self.memory_size = check_size("memory_size", memory_size)
        if kind == "dot" and query_size != memory_size:
            raise ValueError(f"dot attention needs query_size == memory_size, got {query_size} "
                             f"and {memory_size}; use kind='general' or 'additive'")
        if kind == "additive":
            a = check_size("attention_size", attention_size or query_size)
            self.query_proj = nn.Linear(query_size, a, bias=False)
            self.memory_proj = nn.Linear(memory_size, a)
            self.v = nn.Parameter(torch.empty(a).uniform_(-a ** -0.5, a ** -0.5))
        elif kind == "general":
            self.memory_proj = nn.Linear(memory_size, query_size, bias=False)

    def prepare(self, memory: Tensor) -> Tensor:
        """The memory-side part of the score, computed once: (B, S, A) for additive, (B, S,
        query_size) for general, ``memory`` itself for dot."""
        if self.kind == "dot":
            return memory
        return self.memory_proj(memory)

    def scores(self, query: Tensor, keys: Tensor) -> Tensor:
        """Unnormalised scores e (B, T, S) of queries (B, T, Q) against prepared ``keys``."""
        if self.kind == "additive":
            q = self.query_proj(query).unsqueeze(2)  # (B, T, 1, A)
            return torch.tanh(keys.unsqueeze(1) + q) @ self.v  # (B, T, S)
        return torch.bmm(query, keys.transpose(1, 2))

    def forward(self, query: Tensor, memory: Tensor, mask: Tensor | None = None,
                keys: Tensor | None = None) -> AttentionOutput:
        """Attend from ``query`` over ``memory`` (B, S, memory_size).

        ``query`` is (B, query_size) for one decoder step, giving context (B, memory_size) and
        weights (B, S), or (B, T, query_size) for T steps at once, giving (B, T, memory_size)
        and (B, T, S). ``mask`` (B, S) bool is True at real (non-padding) positions; every row
        must hold at least one True. ``keys`` is ``prepare(memory)`` when already computed."""
        if keys is None:
            keys = self.prepare(memory)
        one = query.dim() == 2
        q = query.unsqueeze(1) if one else query  # (B, T, Q)
        e = self.scores(q, keys)  # (B, T, S)
        if mask is not None:
            e = e.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(e, dim=-1)  # (B, T, S)
        context = torch.bmm(weights, memory)  # (B, T, memory_size)
        if one:
            return AttentionOutput(context.squeeze(1), weights.squeeze(1))
        return AttentionOutput(context, weights)

    def extra_repr(self) -> str:
        return f"{self.kind!r}, query_size={self.query_size}, memory_size={self.memory_size}"


def length_mask(lengths: Tensor, width: int) -> Tensor:
    """(B, width) bool mask, True at positions ``< lengths[b]``."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]
