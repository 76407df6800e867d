"""The ``scan`` engine: cells whose state update is elementwise linear
(:mod:`rnnkit.cells.scan`), run as one GEMM over all steps and a linear scan.

The cell gives, for a whole sequence, ``a`` and ``b`` of ``c<t> = a<t> * c<t-1> + b<t>``
(:meth:`~rnnkit.cells.scan.ScanCell.coefficients`: its input projection of every step, by
autograd, and elementwise gates); :class:`LinearScan` solves the recurrence with a
hand-written backward, which is the same recurrence run backwards::

    g<t> = dL/dc<t> + a<t+1> * g<t+1>        dL/db<t> = g<t>     dL/da<t> = g<t> * c<t-1>
    dL/dc<0> = a<1> * g<1>

Both directions are one multiply-add per step over B x H values: on the CPU in the compiled
loops of ``engines/csrc/recurrent_loops.cpp`` (the columns split between threads, each
sequential in time), elsewhere a torch-op loop into preallocated buffers, so the same code
runs on CUDA. Memory is linear in T (a, b and c, (T, B, H) each, and one gradient buffer).
Padding is ``a = 1``, ``b = 0`` past each sequence's length: the state is carried, never
touched by padding.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

from rnnkit.cells.base import Params, RecurrentCell
from rnnkit.cells.scan import MinGRUCell, MinLSTMCell, QRNNCell
from rnnkit.engines import compiled

#: the cells the scan engine runs, by exact class (a subclass runs on ``reference``)
SCAN_CELLS: tuple[type[RecurrentCell], ...] = (MinGRUCell, MinLSTMCell, QRNNCell)


def scan_supports(cell: RecurrentCell) -> bool:
    """Whether ``type(cell)`` is exactly one of :data:`SCAN_CELLS`."""
    return type(cell) in SCAN_CELLS


def _loops(*tensors: Tensor):
    """The compiled loops (engines/csrc/recurrent_loops.cpp) for contiguous float32/float64
    CPU tensors, else None (CUDA and the rest run the torch-op loop)."""
    if all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
           and t.is_contiguous() for t in tensors):
        return compiled.loops()
    return None


class LinearScan(Function):
    """``c<t> = a<t> * c<t-1> + b<t>`` for t = 1..T from ``c0``: a, b (T, B, H), c0 (B, H) ->
    c (T, B, H). On the CPU both directions run in the compiled loops (each thread a block of
    the B x H columns through all steps); elsewhere, or without a compiler, a torch-op loop of
    one fused multiply-add per step."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, c0: Tensor) -> Tensor:
        loops = _loops(a, b, c0)
        if loops is not None:
            c = loops.scan_forward(a, b, c0)
        else:
            c = torch.empty_like(b)
            prev = c0
            for t in range(a.shape[0]):
                prev = torch.addcmul(b[t], a[t], prev, out=c[t])
        ctx.save_for_backward(a, c, c0)
        return c

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, c, c0 = ctx.saved_tensors
        grad = grad.contiguous()
        loops = _loops(a, grad)
        if loops is not None:
            g = loops.scan_backward(a, grad)
        else:
            g = torch.empty_like(c)
            nxt = None
            for t in range(a.shape[0] - 1, -1, -1):
                if nxt is None:
                    nxt = g[t].copy_(grad[t])
                else:
                    nxt = torch.addcmul(grad[t], a[t + 1], nxt, out=g[t])
        da = torch.empty_like(a)
        torch.mul(g[1:], c[:-1], out=da[1:])
        torch.mul(g[0], c0, out=da[0])
        return da, g, a[0] * g[0]


def linear_scan(a: Tensor, b: Tensor, c0: Tensor) -> Tensor:
    """:class:`LinearScan` (differentiable in a, b and c0)."""
    return LinearScan.apply(a, b, c0)


def run_scan(cell: RecurrentCell, params: Params, x: Tensor, state: tuple[Tensor, ...],
             mask: Tensor | None) -> tuple[Tensor, ...]:
    """Run a scan cell over ``x`` (T, B, I): the contract of
    :func:`rnnkit.engines.reference.run_reference` (one (T, B, n) tensor per state, the state
    after every step, carried through padding)."""
    co = cell.coefficients(x, state, params)
    a, b = co.a, co.b
    if mask is not None:
        a = torch.where(mask, a, 1.0)
        b = torch.where(mask, b, 0.0)
    c = linear_scan(a, b, state[cell.scanned])
    seqs = cell.carried(x, c, co.o)
    if mask is None or cell.num_states == 1:
        return seqs
    # h = o * c and the last input are not a scan: past a length they keep the value of the
    # sequence's last step (or the initial state when it has none)
    lengths = mask.sum(0).squeeze(-1)  # (B,)
    last = torch.minimum(torch.arange(x.shape[0], device=x.device)[:, None], lengths[None] - 1)
    inside = (last >= 0).unsqueeze(-1)
    out = []
    for i, (seq, s0) in enumerate(zip(seqs, state)):
        if i == cell.scanned:  # carried by the scan already
            out.append(seq)
            continue
        kept = seq.gather(0, last.clamp_min(0).unsqueeze(-1).expand(-1, -1, seq.shape[-1]))
        out.append(torch.where(inside, kept, s0.unsqueeze(0)))
    return tuple(out)


__all__ = ["LinearScan", "SCAN_CELLS", "linear_scan", "run_scan", "scan_supports"]
