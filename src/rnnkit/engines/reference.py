"""The reference engine: a plain Python loop over ``cell.step``; autograd does the backward.

Slow and obvious on purpose: every faster engine is tested against it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.cells.base import Params, RecurrentCell, as_tuple, from_tuple


def run_reference(
    cell: RecurrentCell,
    params: Params,
    x: Tensor,
    state: tuple[Tensor, ...],
    mask: Tensor | None,
) -> tuple[Tensor, ...]:
    """Run ``cell`` over ``x``.

    Args:
        x: (T, B, I) time-major input.
        state: the initial state as a tuple of (B, n) tensors.
        mask: (T, B, 1) bool, True where a step is inside its sequence; ``None`` when every
            sequence has all T steps. Outside it the state is carried unchanged.

    Returns:
        One (T, B, n) tensor per state tensor: the state after every step (for padded steps,
        the carried state).
    """
    seqs: list[list[Tensor]] = [[] for _ in state]
    current = state
    for t, x_t in enumerate(x.unbind(0)):
        _, new = cell.step(x_t, from_tuple(cell, current), params)
        new = as_tuple(new)
        if mask is not None:
            new = tuple(torch.where(mask[t], n, s) for n, s in zip(new, current))
        current = new
        for seq, s in zip(seqs, current):
            seq.append(s)
    return tuple(torch.stack(seq) for seq in seqs)
