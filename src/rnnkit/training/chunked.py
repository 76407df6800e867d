"""Very long sequences in bounded memory: evaluation in chunks that carry the state.

A sequence of 100,000 steps need not be held (nor its activations) at once: a recurrent model
that reads left to right can be run on chunks of ``chunk_size`` steps, the final state of one
chunk being the initial state of the next. The result is exactly the one of a single pass
(the recurrence is the same; only where it pauses differs), and the memory in use is that of
one chunk, whatever the length. Training does the same with truncated backpropagation through
time (the language model's windows, :class:`~rnnkit.tasks.lm.LMTask`, with the state
detached between windows, so the autograd graph spans one window).

::

    layer = stack("lstm", 32, 256, num_layers=2)
    total = 0.0
    for chunk in run_chunked(layer, x, chunk_size=1000):   # x (B, 100_000, 32)
        total += float(chunk.output.sum())                 # consume each chunk, keep nothing

A bidirectional layer reads each sequence from both ends, so it cannot be chunked:
:func:`check_chunkable` refuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from rnnkit.layers.bidirectional import Bidirectional
from rnnkit.layers.recurrent import Recurrent, detach_states


class Chunk(NamedTuple):
    """One chunk of a chunked run.

    Attributes:
        start: the index of its first step in the whole sequence.
        output: the model's output for the chunk, e.g. (B, n, H) for n <= chunk_size steps.
        state: the state after the chunk (detached), the initial state of the next one.
    """

    start: int
    output: Any
    state: object


def check_chunkable(model: nn.Module) -> None:
    """ValueError if ``model`` holds a layer that reads sequences backwards (a bidirectional
    or reversed layer): its outputs depend on the whole sequence, so chunks would change them."""
    for name, m in model.named_modules():
        if isinstance(m, Bidirectional) or (isinstance(m, Recurrent) and m.reverse):
            raise ValueError(f"layer {name or 'model'} reads sequences backwards "
                             f"({type(m).__name__}): a long sequence cannot be run in chunks "
                             f"with a carried state; use a unidirectional model")


@torch.no_grad()
def run_chunked(model: nn.Module | Callable[[Tensor, object], tuple[Any, object]], x: Tensor,
                chunk_size: int, state: object = None, *, time_dim: int = 1) -> Iterator[Chunk]:
    """Run ``model(x_chunk, state) -> (output, state)`` over ``x`` chunk by chunk.

    Args:
        model: a unidirectional :class:`~rnnkit.layers.Recurrent` / ``Stacked`` layer, a
            :class:`~rnnkit.models.lm.LanguageModel`, or any callable with that signature.
        x: the whole input, e.g. (B, T, I) features or (B, T) token ids.
        chunk_size: steps per chunk (the memory bound).
        state: the initial state (``None``: the model's own).
        time_dim: the time axis of ``x`` (1 for batch-first).

    Yields :class:`Chunk` s in order; consume each one before asking for the next."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if isinstance(model, nn.Module):
        check_chunkable(model)
    steps = x.shape[time_dim]
    for start in range(0, steps, chunk_size):
        piece = x.narrow(time_dim, start, min(chunk_size, steps - start))
        output, state = model(piece, state)
        state = detach_states(state)
        yield Chunk(start, output, state)


def reduce_chunked(model: nn.Module | Callable[[Tensor, object], tuple[Any, object]],
                   x: Tensor, chunk_size: int, fn: Callable[[Chunk], float],
                   state: object = None, *, time_dim: int = 1) -> tuple[float, object]:
    """``(sum of fn(chunk) over the chunks, final state)``: e.g. a summed loss of a long
    sequence, in the memory of one chunk."""
    total = 0.0
    for chunk in run_chunked(model, x, chunk_size, state, time_dim=time_dim):
        total += float(fn(chunk))
        state = chunk.state
    return total, state
