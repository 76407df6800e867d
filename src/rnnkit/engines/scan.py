"""The ``scan`` engine: cells whose state update is elementwise linear
(:mod:`rnnkit.cells.scan`), run as one GEMM over all steps and a linear scan.

The cell gives, for a whole sequence, the gate pre-activations of every step in one GEMM
(:meth:`~rnnkit.cells.scan.ScanCell.projections`), and from them ``a`` and ``b`` of
``c<t> = a<t> * c<t-1> + b<t>``. The gradient of the recurrence is the same recurrence run
backwards::

    g<t> = dL/dc<t> + a<t+1> * g<t+1>        dL/db<t> = g<t>     dL/da<t> = g<t> * c<t-1>
    dL/dc<0> = a<1> * g<1>

On the CPU (:class:`GatedScan`) one compiled pass (``gated_scan_forward`` in
engines/csrc/recurrent_loops.cpp) activates the gates (a vectorised sigmoid), forms ``a`` and
``b`` and runs the recurrence, and one pass back (``gated_scan_backward``) activates them
again and gives the gradient of every gate's pre-activation: nothing is stored but the
pre-activations and ``c``. Elsewhere (CUDA), or without a
compiler, the cell's :meth:`~rnnkit.cells.scan.ScanCell.coefficients` by autograd and
:class:`LinearScan`, a torch-op loop of one fused multiply-add per step with the hand-written
backward above, so the same code runs on every device. Memory is linear in T. Padding is
``a = 1``, ``b = 0`` past each sequence's length: the state is carried, never touched by
padding.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

from rnnkit.cells.base import Params, RecurrentCell, State, as_tuple
from rnnkit.cells.scan import MinGRUCell, MinLSTMCell, QRNNCell, ScanCell
from rnnkit.engines import compiled
from rnnkit.engines.kernels.base import register_inference

#: the cells the scan engine runs, by exact class (a subclass runs on ``reference``)
SCAN_CELLS: tuple[type[RecurrentCell], ...] = (MinGRUCell, MinLSTMCell, QRNNCell)


def scan_supports(cell: RecurrentCell) -> bool:
    """Whether ``type(cell)`` is exactly one of :data:`SCAN_CELLS`."""
    return type(cell) in SCAN_CELLS


def _loops(x: Tensor):
    """The compiled loops (engines/csrc/recurrent_loops.cpp) for float32/float64 CPU inputs,
    else None (CUDA and the rest run the torch-op loop)."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        return compiled.loops()
    return None


class LinearScan(Function):
    """``c<t> = a<t> * c<t-1> + b<t>`` for t = 1..T from ``c0``: a, b (T, B, H), c0 (B, H) ->
    c (T, B, H), as a torch-op loop of one fused multiply-add per step, both directions (the
    path of every device; the CPU runs :class:`GatedScan` when the loops are compiled)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, c0: Tensor) -> Tensor:
        c = torch.empty_like(b)
        prev = c0
        for t in range(a.shape[0]):
            prev = torch.addcmul(b[t], a[t], prev, out=c[t])
        ctx.save_for_backward(a, c, c0)
        return c

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, c, c0 = ctx.saved_tensors
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
    """:class:`LinearScan` (differentiable in a, b and c0); while tracing (ONNX and
    TorchScript export), a scripted loop over any number of steps."""
    if torch.jit.is_tracing():
        return _scripted_scan()(a, b, c0)
    return LinearScan.apply(a, b, c0)


def _scan_loop(a: Tensor, b: Tensor, c0: Tensor) -> Tensor:
    steps = []
    prev = c0
    for t in range(a.size(0)):
        prev = a[t] * prev + b[t]
        steps.append(prev)
    return torch.stack(steps)


_SCRIPTED: list = []


def _scripted_scan():
    """The linear scan as a TorchScript function (compiled on first export): traced code
    that calls it keeps the loop, which the ONNX exporter writes as a ``Loop`` over the
    sequence's length instead of unrolling it."""
    if not _SCRIPTED:
        _SCRIPTED.append(torch.jit.script(_scan_loop))
    return _SCRIPTED[0]


#: the compiled kernels' numbering of the cells (engines/csrc/recurrent_loops.cpp)
_KINDS: dict[type[RecurrentCell], int] = {MinGRUCell: 0, MinLSTMCell: 1, QRNNCell: 2}


class GatedScan(Function):
    """A scan cell's gates and recurrence from its pre-activations ``P`` (T, B, G H): ``c``
    (T, B, H) and for the QRNN ``h = o * c``, in the compiled loops (CPU, float32/float64).
    ``lengths`` (B,) or None: steps past a length carry ``c`` and ``h``. Differentiable in P,
    c0 and h0 (QRNN)."""

    @staticmethod
    def forward(ctx, kind: int, P: Tensor, c0: Tensor, h0: Tensor | None,
                lengths: Tensor | None, positive: bool):
        loops = compiled.loops()
        lens = torch.Tensor() if lengths is None else lengths
        P = P.contiguous()
        out = loops.gated_scan_forward(kind, P, c0.contiguous(),
                                       h0 if h0 is not None else torch.Tensor(), lens, positive)
        ctx.kind, ctx.positive = kind, positive
        ctx.save_for_backward(P, out[0], c0, lens)
        return tuple(out) if kind == 2 else out[0]

    @staticmethod
    def backward(ctx, dc: Tensor, dh: Tensor | None = None):
        P, c, c0, lens = ctx.saved_tensors
        grads = compiled.loops().gated_scan_backward(
            ctx.kind, P, c, c0.contiguous(), lens, ctx.positive, dc,
            dh if dh is not None else torch.Tensor())
        dh0 = grads[2] if ctx.kind == 2 else None
        return None, grads[0], grads[1], dh0, None, None


def _carried_past_lengths(seq: Tensor, s0: Tensor, lengths: Tensor) -> Tensor:
    """A state sequence (T, B, n) that is not a scan (the QRNN's h, its last input) with the
    value of each sequence's last step past its length (B,) (or the initial state ``s0`` when
    it has none)."""
    last = torch.minimum(torch.arange(seq.shape[0], device=seq.device)[:, None],
                         lengths[None] - 1)
    kept = seq.gather(0, last.clamp_min(0).unsqueeze(-1).expand(-1, -1, seq.shape[-1]))
    return torch.where((last >= 0).unsqueeze(-1), kept, s0.unsqueeze(0))


def run_scan(cell: RecurrentCell, params: Params, x: Tensor, state: tuple[Tensor, ...],
             mask: Tensor | None) -> tuple[Tensor, ...]:
    """Run a scan cell over ``x`` (T, B, I): the contract of
    :func:`rnnkit.engines.reference.run_reference` (one (T, B, n) tensor per state, the state
    after every step, carried through padding)."""
    c0 = state[cell.scanned]
    lengths = None if mask is None else mask.sum(0).squeeze(-1)  # (B,)
    if _loops(x) is not None and x.shape[0] > 0 and not torch.jit.is_tracing():
        kind = _KINDS[type(cell)]
        P = cell.projections(x, state, params)
        out = GatedScan.apply(kind, P, c0, state[0] if kind == 2 else None, lengths,
                              bool(getattr(cell, "positive", False)))
        if kind != 2:
            return (out,)
        c, h = out
        seqs = (h, c)
        if cell.num_states == 3:  # the last input, carried past each length
            seqs += (x if lengths is None else _carried_past_lengths(x, state[2], lengths),)
        return seqs
    co = cell.coefficients(x, state, params)
    a, b = co.a, co.b
    if mask is not None:
        a = torch.where(mask, a, 1.0)
        b = torch.where(mask, b, 0.0)
    c = linear_scan(a, b, c0)
    seqs = cell.carried(x, c, co.o)
    if mask is None or cell.num_states == 1:
        return seqs
    return tuple(seq if i == cell.scanned else _carried_past_lengths(seq, s0, lengths)
                 for i, (seq, s0) in enumerate(zip(seqs, state)))


class ScanInferenceStep:
    """A scan cell's inference step on its pre-transposed weight: ``pre = b + [x<t-1>,] x<t>
    W^T`` with ``W^T`` (I k, G H) contiguous (one row-times-matrix product, as the LSTM's
    :class:`~rnnkit.engines.kernels.lstm.LSTMInferenceStep`), then the cell's own
    :meth:`~rnnkit.cells.scan.ScanCell.advance` (its ``activate`` and ``c<t> = a<t> *
    c<t-1> + b<t>``). Inputs (B, I) and the cell's state; returns ``(h<t>, state)`` as
    ``cell.step``."""

    def __init__(self, cell: ScanCell) -> None:
        self.cell = cell
        with torch.no_grad():
            self.w = cell.weight_ih.t().contiguous()
            self.b = None if cell.bias_ih is None else cell.bias_ih.contiguous()

    def __call__(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        s = as_tuple(state)
        inp = self.cell.windowed(x_t.unsqueeze(0), s)[0]  # (B, I k)
        pre = torch.mm(inp, self.w) if self.b is None else torch.addmm(self.b, inp, self.w)
        return self.cell.advance(x_t, pre, s)


for _cell_type in SCAN_CELLS:
    register_inference(_cell_type)(ScanInferenceStep)


__all__ = ["GatedScan", "LinearScan", "SCAN_CELLS", "ScanInferenceStep", "linear_scan",
           "run_scan", "scan_supports"]
