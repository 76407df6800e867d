"""The ``bptt`` engine: backpropagation through time written by hand.

Structure (DESIGN.md, "the winning structure"):

1. the input projections of all T steps in one GEMM, outside the recurrence, by autograd
   (``input_projection``), with every bias that can be folded into it;
2. a tight forward loop that keeps only what the backward needs (a :class:`Kernel`);
3. a hand-written backward-through-time loop (``Kernel.backward_step``), storing the gradient of
   each step's recurrent pre-activation. Everything of a step's gradient that does not depend on
   the incoming gradient (activation derivatives times their partners, e.g. ``g * i (1 - i)``
   for the LSTM's input gate) is computed for all T steps at once before the loop
   (``Kernel.start_backward``) into the buffer that the loop then multiplies in place by the
   incoming gradient, so a step costs a handful of calls (at small batches the Python cost per
   call is what counts);
4. the recurrent weight gradients as one GEMM over all steps at the end
   (``dW_hh = sum_t dA_t^T h_{t-1}``).

The loops of 2 and 3 of the LSTM and the reset-after GRU (plain and layer-normalised) also exist
in C++ (``engines/csrc/recurrent_loops.cpp``, built on first use by
:mod:`rnnkit.engines.compiled`): a step there is its GEMM plus one fused pass over the batch
rows, which at small batches is what brings a step near torch's fused one (``Kernel._loops``
chooses).
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

from rnnkit.cells.base import Params, RecurrentCell
from rnnkit.cells.cells import (
    LN_EPS,
    ElmanCell,
    GRUCell,
    LSTMCell,
    MinimalGRUCell,
    PeepholeLSTMCell,
)
from rnnkit.engines import compiled

_LN_BACKWARD = torch.ops.aten.native_layer_norm_backward


class _StepNorms:
    """Per-step layer normalisations ``y_t = LN(a_t) * weight + bias`` over the last dimension.

    With ``steps`` (one (B, N) view per step of a (T, B, N) buffer, see :meth:`inputs`) the
    caller writes each step's input there, and the backward pass overwrites it with that
    input's gradient once it is no longer needed, so :meth:`input_grads` costs no memory.
    Without, the inputs are views the caller keeps alive (the LSTM's cell buffer) and their
    gradients are only returned. Each step's gain and shift gradients are kept (a list
    append costs far less than a tensor addition at small batches) and summed at the end
    (``dweight``, ``dbias``); nothing is recomputed.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None,
                 buf: Tensor | None = None) -> None:
        self.weight, self.bias = weight, bias
        self.buf = buf
        self.steps = None if buf is None else buf.unbind(0)
        self.a: list[Tensor] = []
        self.mean: list[Tensor] = []
        self.rstd: list[Tensor] = []
        self.mask = (True, True, bias is not None)
        self.shape = weight.shape  # the normalised shape, (N,)

    def forward(self, a: Tensor) -> Tensor:
        """``LN(a) * weight + bias`` for the next step's input ``a`` (B, N); call in order."""
        y, mean, rstd = torch.native_layer_norm(a, self.shape, self.weight, self.bias, LN_EPS)
        self.a.append(a)
        self.mean.append(mean)
        self.rstd.append(rstd)
        return y

    def adopt(self, inputs: tuple[Tensor, ...] | list[Tensor], mean: Tensor, rstd: Tensor
              ) -> None:
        """Record what :meth:`forward` records, for steps the compiled loops ran: the inputs
        (one (B, N) view per step) and the means and rstds, (T, B, 1) each."""
        self.a, self.mean, self.rstd = list(inputs), list(mean.unbind(0)), list(rstd.unbind(0))

    def moments(self) -> list[Tensor]:
        """The recorded means and rstds stacked, (T, B, 1) each, as the compiled loops take
        them."""
        return [torch.stack(self.mean), torch.stack(self.rstd)]

    def start_backward(self, inputs: tuple[Tensor, ...] = (), weight_t: Tensor | None = None
                       ) -> None:
        """Forget the gain and shift gradients of a previous pass. A backward pass overwrote
        the stored inputs with their gradients, so from the second one on
        (``retain_graph=True``) the inputs are recomputed as ``inputs[t] @ weight_t``, step by
        step, bit for bit as in the forward."""
        self.dweights: list[Tensor] = []
        self.dbiases: list[Tensor] = []
        self.passes = getattr(self, "passes", 0) + 1
        if self.passes > 1 and self.steps is not None:
            for x, a in zip(inputs, self.steps):
                torch.mm(x, weight_t, out=a)

    def backward(self, t: int, dy: Tensor) -> Tensor:
        """The gradient of step ``t``'s input from that of its output (stored in the buffer
        when there is one); the gain and shift gradients are accumulated."""
        a = self.a[t]
        da, dw, db = _LN_BACKWARD(dy, a, self.shape, self.mean[t], self.rstd[t], self.weight,
                                  self.bias, self.mask)
        self.dweights.append(dw)
        if db is not None:
            self.dbiases.append(db)
        if self.steps is not None:
            return self.steps[t].copy_(da)
        return da

    def input_grads(self) -> Tensor:
        """Every step's input gradient, (T, B, N), after the backward pass."""
        return self.buf

    @property
    def dweight(self) -> Tensor:
        """The gain's gradient, summed over the steps, after the backward pass."""
        return torch.stack(self.dweights).sum(0)

    @property
    def dbias(self) -> Tensor | None:
        """The shift's gradient (None without a shift), after the backward pass."""
        return None if self.bias is None else torch.stack(self.dbiases).sum(0)


def _sum_tb(x: Tensor) -> Tensor:
    """Sum over the time and batch dimensions of (T, B, N)."""
    return x.sum((0, 1))


def _dot_tb(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum((0, 1))`` for (T, B, N) tensors, an eighth of the steps at a time (no
    full-size product in memory)."""
    return sum(_sum_tb(a[s] * b[s]) for s in _chunks(a.shape[0]))


def _chunk_size(T: int) -> int:
    """Steps per chunk when whole-sequence work is done a part at a time: an eighth of T."""
    return -(-T // 8)


def _chunks(T: int) -> Iterator[slice]:
    """The step ranges of :func:`_chunk_size` chunks covering T steps, in order."""
    size = _chunk_size(T)
    return (slice(lo, lo + size) for lo in range(0, T, size))


def _grad_w(da: Tensor, h: Tensor) -> Tensor:
    """``sum_t da_t^T h_t`` as one GEMM: da (T, B, G), h (T, B, H) -> (G, H)."""
    return torch.mm(da.reshape(-1, da.shape[-1]).t(), h.reshape(-1, h.shape[-1]))


def _mm(base: Tensor | None, a: Tensor, w: Tensor) -> Tensor:
    """``base + a @ w``, or ``a @ w`` when ``base`` is None, in one call."""
    return torch.mm(a, w) if base is None else torch.addmm(base, a, w)


#: the largest batch x hidden size that runs on the compiled loops (measured with
#: benchmarks/bench_fused.py: they win below ~1024 and lose above)
_FUSED_MAX = 512


class Kernel:
    """One cell's forward and backward step for :class:`_Recurrence`.

    ``xp`` is the input projection, (T, B, G), the kernel's own: the gates of step t are
    written over ``xp[t]`` once it is read, so the forward pass keeps no second (T, B, G).
    ``sbuf`` holds the state sequences, (T + 1, B, n) each, with the initial state at index 0;
    ``self.S[j][t]`` is the view of state j before step t. ``forward_step(t)`` reads
    ``S[j][t]`` and writes ``S[j][t + 1]``. Everything is preallocated and every per-step view
    is made once (``unbind``), so a step costs only its arithmetic: at batch 1 the Python
    overhead per operation is the cost that matters.

    ``start_backward()`` turns the buffers the forward pass kept (named in ``consumed``) into
    the backward pass's, in place: each step's gradient factors that do not depend on the
    incoming gradient, computed for all steps at once. The backward pass thus needs little
    more memory than the forward pass kept. A backward pass that must leave the graph intact
    (``retain_graph=True``) runs on :meth:`keep`, a copy with copies of those buffers.

    ``backward_step(t, grads, base)`` receives the gradients of the states after step t and
    returns those of the states before it; ``base`` (or None) is to be added to the gradient
    of ``h_{t-1}`` (the GEMM that makes it takes it as its addend).
    """

    num_states: ClassVar[int] = 1
    consumed: ClassVar[tuple[str, ...]] = ()
    #: whether the input (xp, or x) needs a gradient; set before each backward pass
    needs_input_grad = True
    #: layer normalisation inside the recurrence (a kernel that has it sets it per instance)
    ln = False
    #: the transposed copies of recurrent weights that only the forward GEMMs read
    transposed: ClassVar[tuple[str, ...]] = ("wt",)
    #: True when the kernel receives the layer input x instead of the input projection xp
    #: (and returns dL/dx and the input weights' gradients itself)
    owns_projection: ClassVar[bool] = False
    #: True when engines/csrc/recurrent_loops.cpp has this kernel's loops (its forward_loop
    #: and backward_loop then call them through :meth:`_loops`)
    fused: ClassVar[bool] = False
    #: the layer norms' per-step means and rstds, (T, B, 1) each, when the compiled forward
    #: loop ran (its backward loop reads them); None otherwise
    stats: list[Tensor] | None = None

    def __init__(self, xp: Tensor, weights: tuple[Tensor | None, ...], sbuf: list[Tensor]):
        self.xp = xp
        self.T, self.B = xp.shape[:2]
        self.sbuf = sbuf
        self.S = [buf.unbind(0) for buf in sbuf]
        self.XP = xp.unbind(0)

    @staticmethod
    def _steps(buf: Tensor, lo: int | None = None, hi: int | None = None) -> tuple[Tensor, ...]:
        """Per-step views of ``buf[:, :, lo:hi]``."""
        return buf[..., lo:hi].unbind(0)

    def _views(self) -> None:
        """(Re)make the per-step views of the ``consumed`` buffers."""

    def keep(self) -> Kernel:
        """A copy whose ``consumed`` buffers are copies, for a backward pass that must leave
        this kernel as the forward pass left it."""
        other = copy.copy(self)
        for name in self.consumed:
            buf = getattr(self, name)
            setattr(other, name, None if buf is None else buf.clone())
        other._views()
        return other

    def forward_step(self, t: int) -> None:
        raise NotImplementedError

    def _loops(self):
        """The compiled loops module when they suit this run: a ``fused`` kernel on the CPU,
        float32 or float64, a contiguous input projection and a small batch (``_FUSED_MAX``
        values of h per step), where a step's dozen tensor calls cost more in dispatch than in
        arithmetic; else None."""
        g = self.gates
        if not (self.fused and self.B * self.H <= _FUSED_MAX and g.device.type == "cpu"
                and g.dtype in (torch.float32, torch.float64) and g.is_contiguous()):
            return None
        return compiled.loops()

    def forward_loop(self, mask: Tensor | None) -> None:
        """Run :meth:`forward_step` over all steps; ``mask`` (T, B, 1) bool or None: a row
        outside its sequence keeps its state."""
        step = self.forward_step
        if mask is None:
            for t in range(self.T):
                step(t)
            return
        for t, m in enumerate(mask.unbind(0)):
            step(t)
            for seq in self.S:
                torch.where(m, seq[t + 1], seq[t], out=seq[t + 1])

    def backward_loop(self, grads: list[Tensor], afters: tuple[Tensor | None, ...],
                      mask: Tensor | None) -> list[Tensor] | None:
        """Run :meth:`backward_step` from the last step to the first: ``grads`` are the last
        states' gradients, ``afters`` the gradients of the state sequences (T, B, n) from the
        outputs, None where unused. Returns the initial states' gradients, or None to leave a
        case (here: padding, or a used sequence other than h's) to the general loop of
        :class:`_Recurrence`."""
        after = afters[0]
        if mask is not None or any(a is not None for a in afters[1:]):
            return None
        step = self.backward_step
        steps = None if after is None else after.unbind(0)
        for t in range(self.T - 1, 0, -1):
            grads = step(t, grads, None if steps is None else steps[t - 1])
        return step(0, grads, None)

    def end_forward(self) -> None:
        """Drop what only the forward pass needed: the input projection, and the transposed
        copies of the recurrent weights unless layer norm recomputes its inputs with them in a
        second backward pass (retain_graph=True)."""
        self.xp = self.XP = None
        if not self.ln:
            for name in self.transposed:
                setattr(self, name, None)

    def start_backward(self) -> None:
        """Prepare the backward loop (see the class docstring)."""

    def backward_step(self, t: int, grads: list[Tensor], base: Tensor | None) -> list[Tensor]:
        raise NotImplementedError

    def end_backward(self) -> None:
        """Drop what only the backward loop needed, before the weight gradients are made."""

    def input_grad(self) -> Tensor:
        """The gradient of the input projection, (T, B, G); called after
        :meth:`weight_grads`, it may reuse buffers those needed."""
        raise NotImplementedError

    def weight_grads(self) -> tuple[Tensor | None, ...]:
        raise NotImplementedError


class ElmanKernel(Kernel):
    """``h = g(W_ih x + b + W_hh h_prev)``, g = tanh or relu; weights: (weight_hh, weight_ih,
    bias or None).

    This kernel makes its own input projection (``owns_projection``), and so its backward
    pass can turn dL/dh into dL/dx, dL/dW_ih and dL/db an eighth of the steps at a time: the
    pre-activations' gradient is never held whole, and the layer's peak memory is its outputs
    and dL/dx.
    """

    relu = False
    owns_projection: ClassVar[bool] = True

    def __init__(self, x, weights, sbuf):
        self.w, self.w_ih, self.b = weights
        self.x = x
        super().__init__(F.linear(x, self.w_ih, self.b), weights, sbuf)
        self.wt = self.w.t().contiguous()  # (H, G): forward GEMMs read it row-major

    def start_backward(self):
        self.chunk = _chunk_size(self.T)
        self.da = torch.empty_like(self.sbuf[0][1:1 + self.chunk])  # one chunk of steps
        self.ones = torch.ones_like(self.da[0])
        self.dx = (torch.empty(self.x.shape, dtype=self.x.dtype, device=self.x.device)
                   if self.needs_input_grad else None)
        self.dw, self.dw_ih = torch.zeros_like(self.w), torch.zeros_like(self.w_ih)
        self.db = None if self.b is None else torch.zeros_like(self.b)

    def forward_step(self, t):
        H = self.S[0]
        a = torch.addmm(self.XP[t], H[t], self.wt, out=H[t + 1])
        if self.relu:
            a.relu_()
        else:
            a.tanh_()

    def backward_step(self, t, grads, base):
        (dh,) = grads
        lo = t - t % self.chunk
        if t == min(lo + self.chunk, self.T) - 1:  # the chunk's first step, going backward
            h, d = self.sbuf[0][lo + 1:t + 2], self.da[:t + 1 - lo]
            if self.relu:  # 1 where h > 0: the derivative of relu
                torch.sign(h, out=d)
            else:
                torch.addcmul(self.ones, h, h, value=-1, out=d)
            self.DA = d.unbind(0)
        out = _mm(base, self.DA[t - lo].mul_(dh), self.w)
        if t == lo:
            self._emit(lo, lo + len(self.DA))
        return [out]

    def _emit(self, lo: int, hi: int) -> None:
        """The gradients that steps lo..hi-1 contribute beyond the recurrence."""
        da = self.da[:hi - lo].reshape(-1, self.w.shape[0])
        x = self.x[lo:hi].reshape(-1, self.x.shape[-1])
        if self.dx is not None:
            torch.mm(da, self.w_ih, out=self.dx[lo:hi].view(-1, self.x.shape[-1]))
        self.dw_ih.addmm_(da.t(), x)
        self.dw.addmm_(da.t(), self.sbuf[0][lo:hi].reshape(-1, self.w.shape[1]))
        if self.db is not None:
            self.db += da.sum(0)

    def end_backward(self):
        self.da = self.DA = None

    def input_grad(self):
        return self.dx

    def weight_grads(self):
        return self.dw, self.dw_ih, self.db


class ReluKernel(ElmanKernel):
    relu = True


class LSTMKernel(Kernel):
    """LSTM, optionally layer-normalised; weights: (weight_hh, ln_hh_weight, ln_c_weight,
    ln_c_bias), the last three ``None`` without layer norm.

    Kept per step: the gates after their nonlinearities (i, f, g, o), and with layer norm
    ``tanh`` of the normalised cell (without, ``tanh(c)`` is recomputed from the cells, a few
    steps at a time, which keeps the peak memory of the backward pass low). Before the
    backward loop, the gates become what multiplies each gate's incoming gradient,
    ``g i(1-i)``, ``c_prev f(1-f)``, ``i (1-g^2)`` (all three times dL/dc_t) and
    ``tanh(c) o(1-o)`` (times dL/dh_t), and ``k = o (1 - tanh(c)^2)``, the factor by which dh
    reaches the cell, is computed; f is kept aside.
    """

    num_states = 2
    consumed = ("gates", "tc")
    fused = True

    def __init__(self, xp, weights, sbuf):
        super().__init__(xp, weights, sbuf)
        self.w, self.g_hh, self.g_c, self.b_c = weights
        self.ln = self.g_hh is not None
        self.wt = self.w.t().contiguous()  # (H, G): forward GEMMs read it row-major
        T, B, G = xp.shape
        self.H = G // 4
        self.gates = xp  # (T, B, 4H) i, f, g, o after their nonlinearities, over xp
        # tanh(LN(c) * g_c + b_c) of every step; without layer norm, one step's tanh(c)
        self.tc = xp.new_empty(T if self.ln else 1, B, self.H)
        self._views()
        if self.ln:
            self.norm_h = _StepNorms(self.g_hh, buf=torch.empty_like(xp))  # of W_hh h
            self.norm_c = _StepNorms(self.g_c, self.b_c)  # of c

    def _views(self):
        H, st = self.H, self._steps
        self.Gt, self.IF = st(self.gates), st(self.gates, 0, 2 * H)
        self.Gi, self.Gf = st(self.gates, 0, H), st(self.gates, H, 2 * H)
        self.Gg, self.Go = st(self.gates, 2 * H, 3 * H), st(self.gates, 3 * H)
        self.TC = self.tc.unbind(0) if self.ln else (self.tc[0],) * self.T

    def start_backward(self):
        H, T = self.H, self.T
        i, f, g, o = self.gates.split(H, -1)
        c_prev = self.sbuf[1][:-1]
        # k = o (1 - tc^2) and o's factor from tc = tanh(c), an eighth of the steps at a time:
        # with layer norm, k is written over the kept tc; without, tc is recomputed
        k = self.tc if self.ln else torch.empty_like(c_prev)
        c = self.sbuf[1][1:]
        for steps in _chunks(T):
            ks, os = k[steps], o[steps]
            tc = ks.clone() if self.ln else torch.tanh(c[steps])
            torch.addcmul(os, os, torch.mul(tc, tc, out=ks), value=-1, out=ks)
            torch.addcmul(os, os, os, value=-1, out=os).mul_(tc)
        self.tc = self.TC = None
        tmp = torch.addcmul(torch.ones_like(g[0]), g, g, value=-1).mul_(i)
        torch.addcmul(i, i, i, value=-1, out=i).mul_(g)
        g.copy_(tmp)
        f_copy = tmp.copy_(f)
        torch.addcmul(f, f, f, value=-1, out=f).mul_(c_prev)
        self.dgates = d = self.gates  # d loss / d pre-activation, once the loop is done
        self.k, self.f = k, f_copy
        self.K, self.F = k.unbind(0), f_copy.unbind(0)
        st = self._steps
        self.DG, self.DGo = st(d), st(d, 3 * H)
        self.DGifg = d[..., :3 * H].unflatten(-1, (3, H)).unbind(0)  # (B, 3, H) per step
        if self.ln:
            self.norm_h.start_backward(self.S[0], self.wt)
            self.norm_c.start_backward()

    def forward_step(self, t):
        H, C = self.S
        gt = self.Gt[t]
        if self.ln:
            a = torch.mm(H[t], self.wt, out=self.norm_h.steps[t])
            torch.add(self.XP[t], self.norm_h.forward(a), out=gt)
        else:
            torch.addmm(self.XP[t], H[t], self.wt, out=gt)
        self.IF[t].sigmoid_()
        g = self.Gg[t].tanh_()
        o = self.Go[t].sigmoid_()
        c = torch.mul(self.Gf[t], C[t], out=C[t + 1]).addcmul_(self.Gi[t], g)
        if self.ln:
            tc = torch.tanh(self.norm_c.forward(c), out=self.TC[t])
        else:
            tc = torch.tanh(c, out=self.TC[t])
        torch.mul(o, tc, out=H[t + 1])

    def forward_loop(self, mask):
        loops = self._loops()
        if loops is None:
            return super().forward_loop(mask)
        ln = self.ln
        mask = None if mask is None else mask.contiguous()
        self.stats = loops.lstm_forward(self.gates, *self.sbuf, self.wt, self.tc, mask,
                                        self.norm_h.buf if ln else None, self.g_hh, self.g_c,
                                        self.b_c, LN_EPS)
        if ln:  # for a backward pass in Python
            self.norm_h.adopt(self.norm_h.steps, *self.stats[:2])
            self.norm_c.adopt(self.S[1][1:], *self.stats[2:])

    def backward_loop(self, grads, afters, mask):
        loops = self._loops()
        if loops is None or not (self.k.is_contiguous() and self.f.is_contiguous()):
            return super().backward_loop(grads, afters, mask)
        ln = self.ln
        stats = []
        if ln:
            nh, nc = self.norm_h, self.norm_c
            stats = self.stats or [*nh.moments(), *nc.moments()]
        out = loops.lstm_backward(self.dgates, self.k, self.f, self.w, *grads, *afters, mask,
                                  self.sbuf[1], nh.buf if ln else None, self.g_hh, self.g_c,
                                  self.b_c, stats)
        if ln:  # the sums _StepNorms would have made of its per-step lists
            nh.dweights, nc.dweights, nc.dbiases = [out[2]], [out[3]], out[4:]
        return out[:2]

    def backward_step(self, t, grads, base):
        dh, dc = grads
        if self.ln:
            dct = dc + self.norm_c.backward(t, dh * self.K[t])
        else:
            dct = torch.addcmul(dc, dh, self.K[t])
        self.DGifg[t].mul_(dct.unsqueeze(1))
        self.DGo[t].mul_(dh)
        dg = self.DG[t]
        if self.ln:
            dg = self.norm_h.backward(t, dg)
        return [_mm(base, dg, self.w), dct * self.F[t]]

    def end_backward(self):
        self.k = self.K = self.f = self.F = None

    def input_grad(self):
        return self.dgates

    def weight_grads(self):
        h_prev = self.sbuf[0][:-1]
        if not self.ln:
            return (_grad_w(self.dgates, h_prev), None, None, None)
        return (_grad_w(self.norm_h.input_grads(), h_prev), self.norm_h.dweight,
                self.norm_c.dweight, self.norm_c.dbias)


class PeepholeKernel(LSTMKernel):
    """Peephole LSTM; weights: (weight_hh, peephole). Buffers as :class:`LSTMKernel`, and so is
    the backward step: the peepholes' terms fold into its per-step factors before the loop,
    ``k + p_o tc o(1-o)`` (c_t reaches the loss through o_t too) and
    ``f + p_i g i(1-i) + p_f c_prev f(1-f)`` (c_{t-1} reaches it through i_t and f_t too)."""

    fused = False  # its forward step differs from the LSTM's

    def __init__(self, xp, weights, sbuf):
        w, self.p = weights
        super().__init__(xp, (w, None, None, None), sbuf)
        self.p_if, self.p_o = self.p[:2], self.p[2]  # (2, H) for i and f, (H,) for o
        self.C1 = sbuf[1].unsqueeze(2).unbind(0)  # (B, 1, H) per step

    def _views(self):
        super()._views()
        self.IF2 = self.gates[..., :2 * self.H].unflatten(-1, (2, self.H)).unbind(0)

    def start_backward(self):
        super().start_backward()
        H = self.H
        d = self.dgates
        self.f.addcmul_(d[..., :H], self.p[0]).addcmul_(d[..., H:2 * H], self.p[1])
        self.k.addcmul_(d[..., 3 * H:], self.p_o)

    def forward_step(self, t):
        H, C = self.S
        c_prev = C[t]
        torch.addmm(self.XP[t], H[t], self.wt, out=self.Gt[t])
        self.IF2[t].addcmul_(self.p_if, self.C1[t])
        self.IF[t].sigmoid_()
        g = self.Gg[t].tanh_()
        c = torch.mul(self.Gf[t], c_prev, out=C[t + 1]).addcmul_(self.Gi[t], g)
        o = self.Go[t].addcmul_(self.p_o, c).sigmoid_()
        tc = torch.tanh(c, out=self.TC[t])
        torch.mul(o, tc, out=H[t + 1])

    def weight_grads(self):
        H = self.H
        c = self.sbuf[1]
        d = self.dgates
        dp = torch.stack([_dot_tb(d[..., :H], c[:-1]), _dot_tb(d[..., H:2 * H], c[:-1]),
                          _dot_tb(d[..., 3 * H:], c[1:])])
        return _grad_w(d, self.sbuf[0][:-1]), dp


class _GRUKernel(Kernel):
    """What both GRU kernels share: r, z, n after their nonlinearities (``gates``), the
    input projection split at the candidate, the blend (``lerp``, one call) and the
    factors that depend on z and n."""

    def __init__(self, xp, weights, sbuf):
        super().__init__(xp, weights, sbuf)
        self.H = xp.shape[2] // 3
        self.gates = xp  # r, z, n after their nonlinearities, written over xp
        self.XPrz, self.XPn = self._steps(xp, 0, 2 * self.H), self._steps(xp, 2 * self.H)

    def _views(self):
        H, st = self.H, self._steps
        self.Grz, self.Gr = st(self.gates, 0, 2 * H), st(self.gates, 0, H)
        self.Gz, self.Gn = st(self.gates, H, 2 * H), st(self.gates, 2 * H)

    def end_forward(self):
        super().end_forward()
        self.XPrz = self.XPn = None

    def _blend(self, t: int, h: Tensor, n: Tensor) -> None:
        """``h_t = (1 - z) * n + z * h_prev`` in one call."""
        torch.lerp(n, h, self.Gz[t], out=self.S[0][t + 1])

    def _h_minus_n(self, out: Tensor) -> Tensor:
        """``out = h_prev - n`` for every step, (T, B, H), before the backward loop."""
        return torch.sub(self.sbuf[0][:-1], self.gates[..., 2 * self.H:], out=out)

    def _candidate_factor(self, out: Tensor) -> Tensor:
        """``out = (1 - z)(1 - n^2)``, (T, B, H): what dL/dh_t becomes for n's
        pre-activation; ``out`` may be n's own slot of the gates."""
        z, n = self.gates[..., self.H:2 * self.H], self.gates[..., 2 * self.H:]
        q = torch.addcmul(torch.ones_like(n[0]), n, n, value=-1, out=out)
        return q.addcmul_(q, z, value=-1)

    def _direct(self, t: int, dh: Tensor, base: Tensor | None) -> Tensor:
        """``base + dh * z``: the part of dL/dh_{t-1} that does not pass through a weight."""
        return dh * self.Gz[t] if base is None else torch.addcmul(base, dh, self.Gz[t])


class GRUAfterKernel(_GRUKernel):
    """torch.nn.GRU's cell (reset after the product), optionally layer-normalised;
    ``xp = [LN](W_ih x) + b_ih``; weights: (weight_hh, bias_hh, ln_hh_weight).

    Kept per step: r, z, n and the recurrent projection ``gh`` (3H), in ``gh4`` beside a slot
    that the backward pass fills. Before the backward loop, ``gh`` becomes
    ``[r(1-r) q gh_n, z(1-z)(h_prev - n), q r]`` and the slot ``q = (1-z)(1-n^2)``: each step
    multiplies all four by dL/dh_t in place (one call), which makes them d loss / d gh and
    d loss / d n's pre-activation."""

    consumed = ("gates", "gh4")
    fused = True

    def __init__(self, xp, weights, sbuf):
        super().__init__(xp, weights, sbuf)
        self.w, self.b, self.g_hh = weights
        self.ln = self.g_hh is not None
        self.wt = self.w.t().contiguous()  # (H, G): forward GEMMs read it row-major
        self.gh4 = xp.new_empty(*xp.shape[:2], 4 * self.H)
        self._views()
        if self.ln:
            self.norm = _StepNorms(self.g_hh, self.b, buf=torch.empty_like(xp))

    def _views(self):
        H, st = self.H, self._steps
        # the recurrent projection + bias_hh, and h_prev - n
        self.gh, self.hmn = self.gh4[..., :3 * H], self.gh4[..., 3 * H:]
        super()._views()
        self.GH, self.GHrz, self.GHn = st(self.gh), st(self.gh, 0, 2 * H), st(self.gh, 2 * H)

    def start_backward(self):
        H = self.H
        r, z, _ = self.gates.split(H, -1)
        d = self.dgh = self.gh  # d loss / d gh, once the loop is done
        dr, dz, dn = d.split(H, -1)
        torch.addcmul(z, z, z, value=-1, out=dz).mul_(self._h_minus_n(self.hmn))
        q = self.dn = self._candidate_factor(self.hmn)
        torch.addcmul(r, r, r, value=-1, out=dr).mul_(q).mul_(dn)
        torch.mul(q, r, out=dn)
        self.DGH = self._steps(d)
        self.D4 = self.gh4.unflatten(-1, (4, H)).unbind(0)  # (B, 4, H) per step
        if self.ln:
            self.norm.start_backward(self.S[0], self.wt)

    def forward_step(self, t):
        (H,) = self.S
        h = H[t]
        if self.ln:
            a = torch.mm(h, self.wt, out=self.norm.steps[t])
            self.GH[t].copy_(self.norm.forward(a))
        elif self.b is not None:
            torch.addmm(self.b, h, self.wt, out=self.GH[t])
        else:
            torch.mm(h, self.wt, out=self.GH[t])
        torch.add(self.XPrz[t], self.GHrz[t], out=self.Grz[t]).sigmoid_()
        n = torch.addcmul(self.XPn[t], self.Gr[t], self.GHn[t], out=self.Gn[t]).tanh_()
        self._blend(t, h, n)

    def forward_loop(self, mask):
        loops = self._loops()
        if loops is None:
            return super().forward_loop(mask)
        mask = None if mask is None else mask.contiguous()
        self.stats = loops.gru_forward(self.gates, self.sbuf[0], self.gh4, self.wt, self.b,
                                       mask, self.norm.buf if self.ln else None, self.g_hh,
                                       LN_EPS)
        if self.ln:  # for a backward pass in Python
            self.norm.adopt(self.norm.steps, *self.stats)

    def backward_loop(self, grads, afters, mask):
        loops = self._loops()
        if loops is None:
            return super().backward_loop(grads, afters, mask)
        stats = (self.stats or self.norm.moments()) if self.ln else []
        out = loops.gru_backward(self.gh4, self.gates, self.w, grads[0], afters[0], mask,
                                 self.norm.buf if self.ln else None, self.g_hh, stats)
        if self.ln:  # the sum _StepNorms would have made of its per-step list
            self.norm.dweights = [out[1]]
        return out[:1]

    def backward_step(self, t, grads, base):
        (dh,) = grads
        self.D4[t].mul_(dh.unsqueeze(1))
        da = self.norm.backward(t, self.DGH[t]) if self.ln else self.DGH[t]
        return [torch.addmm(self._direct(t, dh, base), da, self.w)]

    def input_grad(self):
        H = self.H
        self.gates[..., :2 * H] = self.dgh[..., :2 * H]  # the gates are no longer needed
        self.gates[..., 2 * H:] = self.dn
        return self.gates

    def weight_grads(self):
        h_prev = self.sbuf[0][:-1]
        da = self.norm.input_grads() if self.ln else self.dgh
        db = _sum_tb(self.dgh) if self.b is not None else None
        dg = self.norm.dweight if self.ln else None
        return _grad_w(da, h_prev), db, dg


class GRUBeforeKernel(_GRUKernel):
    """The original GRU (reset before the product), optionally layer-normalised;
    ``xp`` holds every bias; weights: (weight_hh, ln_hh_weight).

    Kept per step: r, z, n and, in ``aux`` beside a slot that the backward pass fills,
    ``r * h_prev``. Before the backward loop, ``aux`` becomes
    ``[r(1-r) h_prev, z(1-z)(h_prev - n)]`` and n becomes ``(1-z)(1-n^2)``; each step
    multiplies the r factor by dL/d(r h_prev) and the others by dL/dh_t. ``r * h_prev`` is
    recomputed for the weight gradient."""

    consumed = ("gates", "aux")
    transposed = ("wt_rz", "wt_n")

    def __init__(self, xp, weights, sbuf):
        super().__init__(xp, weights, sbuf)
        self.w, self.g_hh = weights
        self.ln = self.g_hh is not None
        T, B, _ = xp.shape
        H = self.H
        self.w_rz, self.w_n = self.w[:2 * H], self.w[2 * H:]
        self.wt_rz, self.wt_n = self.w_rz.t().contiguous(), self.w_n.t().contiguous()
        self.aux = xp.new_empty(T, B, 2 * H)
        self._views()
        if self.ln:
            self.g_rz, self.g_n = self.g_hh[:2 * H], self.g_hh[2 * H:]
            self.norm_rz = _StepNorms(self.g_rz, buf=xp.new_empty(T, B, 2 * H))
            self.norm_n = _StepNorms(self.g_n, buf=xp.new_empty(T, B, H))

    def _views(self):
        # r * h_prev, the candidate's recurrent input, and h_prev - n
        self.rh, self.hmn = self.aux.split(self.H, -1)
        super()._views()
        self.RH = self.rh.unbind(0)

    def start_backward(self):
        if self.ln:  # first: a second pass recomputes their inputs from r * h_prev
            self.norm_rz.start_backward(self.S[0], self.wt_rz)
            self.norm_n.start_backward(self.RH, self.wt_n)
        H = self.H
        r, z, n = self.gates.split(H, -1)
        self.rh.addcmul_(self.rh, r, value=-1)  # r (1 - r) h_prev
        fz = self._h_minus_n(self.hmn).mul_(z)
        fz.addcmul_(fz, z, value=-1)  # z (1 - z)(h_prev - n)
        self.rh = self.hmn = self.RH = None
        self._candidate_factor(n)
        st = self._steps
        self.DXrz, self.DXr, self.DXz = st(self.aux), st(self.aux, 0, H), st(self.aux, H)

    def forward_step(self, t):
        (H,) = self.S
        h = H[t]
        if self.ln:
            a = torch.mm(h, self.wt_rz, out=self.norm_rz.steps[t])
            torch.add(self.XPrz[t], self.norm_rz.forward(a), out=self.Grz[t])
        else:
            torch.addmm(self.XPrz[t], h, self.wt_rz, out=self.Grz[t])
        self.Grz[t].sigmoid_()
        rh = torch.mul(self.Gr[t], h, out=self.RH[t])
        if self.ln:
            a = torch.mm(rh, self.wt_n, out=self.norm_n.steps[t])
            n = torch.add(self.XPn[t], self.norm_n.forward(a), out=self.Gn[t])
        else:
            n = torch.addmm(self.XPn[t], rh, self.wt_n, out=self.Gn[t])
        n.tanh_()
        self._blend(t, h, n)

    def backward_step(self, t, grads, base):
        (dh,) = grads
        dn = self.Gn[t].mul_(dh)
        drh = torch.mm(self.norm_n.backward(t, dn) if self.ln else dn, self.w_n)
        self.DXr[t].mul_(drh)
        self.DXz[t].mul_(dh)
        drz = self.DXrz[t]
        da_rz = self.norm_rz.backward(t, drz) if self.ln else drz
        direct = self._direct(t, dh, base).addcmul_(drh, self.Gr[t])
        return [torch.addmm(direct, da_rz, self.w_rz)]

    def input_grad(self):
        self.gates[..., :2 * self.H] = self.aux  # after the weight gradients: r was needed
        return self.gates

    def weight_grads(self):
        H, T = self.H, self.T
        h_prev, r = self.sbuf[0][:-1], self.gates[..., :H]
        if self.ln:
            da_rz, da_n = self.norm_rz.input_grads(), self.norm_n.input_grads()
        else:
            da_rz, da_n = self.aux, self.gates[..., 2 * H:]
        dw_n = sum(_grad_w(da_n[s], r[s] * h_prev[s]) for s in _chunks(T))
        dw = torch.cat([_grad_w(da_rz, h_prev), dw_n])
        dg = None
        if self.ln:
            dg = torch.cat([self.norm_rz.dweight, self.norm_n.dweight])
        return dw, dg


class MinimalGRUKernel(Kernel):
    """The notes' minimal GRU; ``xp`` holds every bias; weights: (weight_hh,).

    Kept per step: u and n. Before the backward loop, the gates become
    ``[u(1-u)(n - h_prev), u(1-n^2)]`` (u is kept aside); each step multiplies them by
    dL/dh_t in place."""

    consumed = ("gates",)

    def __init__(self, xp, weights, sbuf):
        super().__init__(xp, weights, sbuf)
        (self.w,) = weights
        self.wt = self.w.t().contiguous()  # (H, G): forward GEMMs read it row-major
        self.H = xp.shape[2] // 2
        self.gates = xp  # u, n after their nonlinearities, written over xp
        self._views()

    def _views(self):
        H, st = self.H, self._steps
        self.Gt, self.Gu, self.Gn = st(self.gates), st(self.gates, 0, H), st(self.gates, H)

    def start_backward(self):
        H = self.H
        u, n = self.gates.split(H, -1)
        fu = torch.sub(n, self.sbuf[0][:-1]).mul_(u)
        fu.addcmul_(fu, u, value=-1)  # u (1 - u)(n - h_prev)
        torch.addcmul(torch.ones_like(n[0]), n, n, value=-1, out=n).mul_(u)
        self.u = u.clone()
        u.copy_(fu)
        self.dxp = self.gates
        self.U = self.u.unbind(0)
        self.DX2 = self.gates.unflatten(-1, (2, H)).unbind(0)  # (B, 2, H) per step
        self.DX = self._steps(self.gates)

    def forward_step(self, t):
        (H,) = self.S
        h = H[t]
        torch.addmm(self.XP[t], h, self.wt, out=self.Gt[t])
        u, n = self.Gu[t].sigmoid_(), self.Gn[t].tanh_()
        torch.lerp(h, n, u, out=H[t + 1])

    def backward_step(self, t, grads, base):
        (dh,) = grads
        direct = torch.addcmul(dh, dh, self.U[t], value=-1)
        if base is not None:
            direct += base
        self.DX2[t].mul_(dh.unsqueeze(1))
        return [torch.addmm(direct, self.DX[t], self.w)]

    def input_grad(self):
        return self.dxp

    def weight_grads(self):
        return (_grad_w(self.dxp, self.sbuf[0][:-1]),)


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

    def _open(self) -> int:
        self.runs.append(None)
        return len(self.runs) - 1


_RECORDER: ContextVar[StateGradRecord | None] = ContextVar("rnnkit_bptt_recorder", default=None)


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


def _needed(grads: tuple[Tensor | None, ...], needs: tuple[bool, ...]) -> tuple:
    return tuple(g if need else None for g, need in zip(grads, needs))


def _keep_graph() -> bool:
    """Whether the running backward pass keeps the graph (``retain_graph=True``); True when
    this torch cannot tell, which costs memory, never correctness."""
    probe = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if probe is None else bool(probe())


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: a run makes thousands of small tensor objects
    (per-step views), all freed by reference counting, and the collections they would trigger
    cost more than the steps at batch 1."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Recurrence(Function):
    """Runs a :class:`Kernel` forward and backward through time, handling padding."""

    @staticmethod
    def forward(ctx, kernel_cls, mask, xp, *rest):
        ctx.set_materialize_grads(False)  # an unused state sequence's gradient comes as None
        with _gc_paused():
            return _Recurrence._forward(ctx, kernel_cls, mask, xp, *rest)

    @staticmethod
    def backward(ctx, *grad_seqs):
        with _gc_paused():
            return _Recurrence._backward(ctx, *grad_seqs)

    @staticmethod
    def _forward(ctx, kernel_cls, mask, xp, *rest):
        n = kernel_cls.num_states
        # plain tensors inside: views of tensors that require grad cost twice as much to make
        xp = xp.detach()
        rest = tuple(None if r is None else r.detach() for r in rest)
        states0, weights = rest[:n], rest[n:]
        T = xp.shape[0]
        sbuf = [xp.new_empty((T + 1, *s.shape)) for s in states0]
        for buf, s in zip(sbuf, states0):
            buf[0] = s
        kernel = kernel_cls(xp, weights, sbuf)
        kernel.forward_loop(mask)
        kernel.end_forward()
        ctx.kernel = kernel
        ctx.mask = mask
        recorder = _RECORDER.get()
        ctx.record = None if recorder is None else (recorder, recorder._open())
        return tuple(buf[1:] for buf in sbuf)

    @staticmethod
    def _backward(ctx, *grad_seqs):
        if torch.is_grad_enabled():
            raise RuntimeError("engine='bptt' computes gradients by hand and cannot be "
                               "differentiated twice (create_graph=True); use "
                               "engine='reference' for higher-order gradients")
        kernel, mask = ctx.kernel, ctx.mask
        if kernel is None:
            raise RuntimeError("Trying to backward through an engine='bptt' recurrence a second "
                               "time: its buffers were freed by the first backward pass; pass "
                               "retain_graph=True to the first backward call")
        if _keep_graph():
            kernel = kernel.keep()
        else:  # the buffers become gradients in place, and go once they are returned
            ctx.kernel = None
        kernel.needs_input_grad = ctx.needs_input_grad[2]
        kernel.start_backward()
        T = kernel.T
        n = len(grad_seqs)
        steps = [None if g is None else g.unbind(0) for g in grad_seqs]
        grads = [torch.zeros_like(seq[0]) if g is None else g[T - 1]
                 for seq, g in zip(kernel.S, steps)]
        masks = None if mask is None else mask.unbind(0)
        step = kernel.backward_step
        record = ctx.record
        if record is not None:
            seen = [buf.new_zeros(buf.shape[0] - 1, *buf.shape[1:]) for buf in kernel.sbuf]
        # the common case (nothing recorded) in the kernel's tight loop, where it has one
        done = None if record is not None else kernel.backward_loop(grads, grad_seqs, mask)
        if done is not None:
            grads = done
        else:
            for t in range(T - 1, -1, -1):
                if record is not None:
                    for buf, g in zip(seen, grads):
                        buf[t] = g
                after = [None if g is None or t == 0 else g[t - 1] for g in steps]
                if masks is None:
                    grads = step(t, grads, after[0])
                else:
                    m = masks[t]
                    inside = [torch.where(m, g, 0.0) for g in grads]
                    carried = [torch.where(m, 0.0, g) for g in grads]
                    base = carried[0] if after[0] is None else carried[0] + after[0]
                    grads = step(t, inside, base)
                    grads[1:] = [g + c for g, c in zip(grads[1:], carried[1:])]
                grads[1:] = [g if a is None else g + a for g, a in zip(grads[1:], after[1:])]
        kernel.end_backward()
        if record is not None:
            recorder, index = record
            recorder.runs[index] = tuple(seen)
        weight_grads = _needed(kernel.weight_grads(), ctx.needs_input_grad[3 + n:])
        return (None, None, kernel.input_grad(), *grads, *weight_grads)


def _bias_sum(*biases: Tensor | None) -> Tensor | None:
    present = [b for b in biases if b is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else sum(present[1:], present[0])


def _project(x: Tensor, w: Tensor, bias: Tensor | None, ln_weight: Tensor | None) -> Tensor:
    """The input projection of all steps in one GEMM: ``[LN](x W^T) + bias``, (T, B, G)."""
    if ln_weight is None:
        return F.linear(x, w, bias)
    xp = F.layer_norm(F.linear(x, w), w.shape[:1], ln_weight, None, LN_EPS)
    return xp if bias is None else xp + bias


def _plan(cell: RecurrentCell, p: Params) -> tuple[type[Kernel], Tensor | None, Tensor | None,
                                                   tuple[Tensor | None, ...]]:
    """Which kernel runs ``cell``, what goes into its input projection and what it receives."""
    g = p.get
    if isinstance(cell, ElmanCell):
        kernel = ReluKernel if cell.nonlinearity == "relu" else ElmanKernel
        return kernel, None, None, (p["weight_hh"], p["weight_ih"],
                                    _bias_sum(g("bias_ih"), g("bias_hh")))
    if isinstance(cell, LSTMCell):
        if cell.proj_size:
            raise ValueError("engine='bptt' does not support LSTMCell with proj_size > 0; "
                             "use engine='native' or 'reference'")
        return (LSTMKernel, _bias_sum(g("bias_ih"), g("bias_hh")), g("ln_ih_weight"),
                (p["weight_hh"], g("ln_hh_weight"), g("ln_c_weight"), g("ln_c_bias")))
    if isinstance(cell, PeepholeLSTMCell):
        return (PeepholeKernel, _bias_sum(g("bias_ih"), g("bias_hh")), None,
                (p["weight_hh"], p["peephole"]))
    if isinstance(cell, GRUCell):
        if cell.reset == "after":
            return (GRUAfterKernel, g("bias_ih"), g("ln_ih_weight"),
                    (p["weight_hh"], g("bias_hh"), g("ln_hh_weight")))
        return (GRUBeforeKernel, _bias_sum(g("bias_ih"), g("bias_hh")), g("ln_ih_weight"),
                (p["weight_hh"], g("ln_hh_weight")))
    if isinstance(cell, MinimalGRUCell):
        return MinimalGRUKernel, _bias_sum(g("bias_ih"), g("bias_hh")), None, (p["weight_hh"],)
    raise ValueError(f"engine='bptt' has no kernel for {type(cell).__name__}")


def bptt_supports(cell: RecurrentCell) -> bool:
    """Whether the ``bptt`` engine has a kernel for ``cell`` (with its options)."""
    try:
        _plan(cell, cell.params())
    except ValueError:
        return False
    return True


def run_bptt(
    cell: RecurrentCell,
    params: Params,
    x: Tensor,
    state: tuple[Tensor, ...],
    mask: Tensor | None,
) -> tuple[Tensor, ...]:
    """Run ``cell`` over ``x`` (T, B, I) with the hand-written BPTT kernel.

    Same contract as :func:`rnnkit.engines.reference.run_reference`: returns one (T, B, n)
    tensor per state tensor, the state after every step (carried through padding).
    """
    kernel, bias, ln_weight, weights = _plan(cell, params)
    if kernel.owns_projection:
        return _Recurrence.apply(kernel, mask, x, *state, *weights)
    # a fresh tensor that nothing else holds (the kernel writes the gates over it) and whose
    # autograd producers keep no reference to it (linear, layer norm and add save inputs only)
    xp = _project(x, params["weight_ih"], bias, ln_weight)
    return _Recurrence.apply(kernel, mask, xp, *state, *weights)
