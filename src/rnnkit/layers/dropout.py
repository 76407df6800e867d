"""Dropout at the speed of its random numbers on the CPU.

torch's CPU dropout draws one Bernoulli variable per element (``bernoulli_``, 12-14 ns an
element on this project's 2-core machine: 15 ms for a word LM's 32 x 70 x 512 activations,
about a tenth of a QRNN language model's training step, with four such dropouts in it).
:func:`dropout` draws 15 random bits per element instead, two elements to one 32-bit word of
torch's generator (``random_`` on int32: 1.6 ms for those activations), and keeps an element
where its bits fall below ``K = round((1 - p) * 2**15)``: each element is kept with
probability ``K / 2**15`` (``1 - p`` to within 2**-16; a p above 1 - 2**-16 drops every
element) and scaled by ``1 / (1 - p)`` as ``torch.nn.functional.dropout`` scales it, so the
output's expectation is the input's to within a factor of 1 +- 2**-16 / (1 - p). Mask and
scale go through ATen's ``native_dropout_backward`` (``x * mask * scale`` in one pass), whose
own derivative is the same product, so backward (and double backward) are autograd's.

Only float tensors on the CPU take this path; on other devices (CUDA's dropout is one fused
kernel already), in evaluation, and under ``RNNKIT_DROPOUT=torch`` (or
:func:`use_backend`, to compare the two or to draw the masks of a run made before this
module), :func:`torch.nn.functional.dropout` runs. Masks come from
torch's default generator (or the one given), so ``torch.manual_seed`` makes them
reproducible; they are not the masks ``F.dropout`` draws for the same seed.

    drop = Dropout(0.3)             # drop-in for torch.nn.Dropout
    y = dropout(x, 0.3, training=True)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: random bits per element: p is rounded to a multiple of 2**-BITS
BITS = 15
#: "rnnkit" (the masks above) or "torch" (torch.nn.functional.dropout everywhere)
BACKENDS = ("rnnkit", "torch")
_backend = os.environ.get("RNNKIT_DROPOUT", "rnnkit")


def backend() -> str:
    """The dropout in use: ``RNNKIT_DROPOUT`` (default ``"rnnkit"``) or :func:`use_backend`'s;
    ValueError naming the variable for a value outside :data:`BACKENDS`."""
    if _backend not in BACKENDS:
        raise ValueError(f"RNNKIT_DROPOUT={_backend!r}: expected one of {', '.join(BACKENDS)}")
    return _backend


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Every rnnkit dropout through ``name`` (one of :data:`BACKENDS`) inside the block."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"dropout backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    before, _backend = _backend, name
    try:
        yield
    finally:
        _backend = before


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu",
              generator: torch.Generator | None = None) -> tuple[Tensor, float]:
    """A boolean mask of ``shape``, each element True (kept) with probability
    ``round((1 - p) * 2**BITS) / 2**BITS``, and the scale of the kept elements, ``1 / (1 - p)``
    (0.0 when nothing is kept).

    Args:
        shape: the mask's shape (any).
        p: the probability of dropping an element, in [0, 1].
        device: where the mask is made.
        generator: the random generator (default: torch's default one for ``device``).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    n = math.prod(shape)
    keep = round((1.0 - p) * (1 << BITS))
    words = torch.empty((n + 1) // 2, dtype=torch.int32, device=device)
    words.random_(generator=generator)  # 31 uniform bits a word: two elements' 15 each
    bits = words.view(torch.int16)[:n].bitwise_and_((1 << BITS) - 1)
    mask = (bits < keep).view(shape)
    return mask, 1.0 / (1.0 - p) if keep else 0.0


def _fast(x: Tensor) -> bool:
    return (x.device.type == "cpu" and x.is_floating_point() and x.numel() > 0
            and backend() == "rnnkit")


def dropout(x: Tensor, p: float = 0.5, training: bool = True,
            generator: torch.Generator | None = None) -> Tensor:
    """``torch.nn.functional.dropout(x, p, training)``, with its masks drawn by
    :func:`keep_mask` for float tensors on the CPU (any shape; the output has ``x``'s)."""
    if not training or p == 0.0:
        return x
    if not _fast(x):
        return F.dropout(x, p, training=True)
    mask, scale = keep_mask(x.shape, p, x.device, generator)
    if not scale:
        return x * 0.0
    return torch.ops.aten.native_dropout_backward(x, mask, scale)


class Dropout(nn.Dropout):
    """``torch.nn.Dropout`` through :func:`dropout`: the same module (``p``, train and eval
    modes, no parameters), its masks drawn faster on the CPU. ``inplace=True`` keeps
    torch's implementation."""

    def forward(self, input: Tensor) -> Tensor:
        if self.inplace:
            return super().forward(input)
        return dropout(input, self.p, self.training)


__all__ = ["BACKENDS", "BITS", "Dropout", "backend", "dropout", "keep_mask", "use_backend"]
