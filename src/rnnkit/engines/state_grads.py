"""Recording dL/ds_t, the gradient of the loss with respect to every step's state, from the
``bptt`` backward pass (used by ``rnnkit.diagnostics`` to measure gradient flow over time)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from torch import Tensor


class StateGradRecord:
    """Total gradients of the loss with respect to every step's state, recorded by the
    ``bptt`` backward pass (see :func:`record_state_grads`).

    ``runs[i]`` belongs to the i-th recurrence run inside the block (in forward order: for a
    stack, layer by layer, forward direction before backward); it is a tuple with one
    (T, B, n) tensor per state tensor (h, and c for LSTMs), filled when the backward pass has
    run: entry ``t`` is dL/ds_t, the gradient through the whole recurrence of the state after
    step t (time-major, in the order the engine ran, i.e. reversed for a reversed layer).
    """

    def __init__(self) -> None:
        self.runs: list[tuple[Tensor, ...] | None] = []

    def open(self) -> int:
        """Reserve the entry of the next run; returns its index."""
        self.runs.append(None)
        return len(self.runs) - 1


_RECORDER: ContextVar[StateGradRecord | None] = ContextVar("rnnkit_bptt_recorder", default=None)


def current_recorder() -> StateGradRecord | None:
    """The record of the innermost :func:`record_state_grads` block, or None outside one."""
    return _RECORDER.get()


@contextmanager
def record_state_grads() -> Iterator[StateGradRecord]:
    """Record dL/ds_t for every step of every ``bptt`` run in the block.

    Run both the forward and the backward pass inside the block. Ordinary training never
    enters it and pays nothing for it::

        with record_state_grads() as rec:
            loss = model(x).sum()
            loss.backward()
        rec.runs[0][0].norm(dim=-1)   # (T, B): || dL/dh_t || of the first layer
    """
    record = StateGradRecord()
    token = _RECORDER.set(record)
    try:
        yield record
    finally:
        _RECORDER.reset(token)
