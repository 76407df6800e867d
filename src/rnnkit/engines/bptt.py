"""The ``bptt`` engine: backpropagation through time written by hand.

Structure (DESIGN.md, "the winning structure"):

1. the input projections of all T steps in one GEMM, outside the recurrence, by autograd
   (``input_projection``), with every bias that can be folded into it;
2. a tight forward loop that keeps only what the backward needs (a :class:`Kernel`);
3. a hand-written backward-through-time loop (``Kernel.backward_step``), storing the gradient of
   each step's recurrent pre-activation;
4. the recurrent weight gradients as one GEMM over all steps at the end
   (``dW_hh = sum_t dA_t^T h_{t-1}``).

Padding (``mask``) is handled once, in :class:`_Recurrence`: a step outside its sequence carries
the state unchanged, so its gradient flows straight to the previous step and nothing of it reaches
the gates or the weights.
"""

from __future__ import annotations

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

_LN_BACKWARD = torch.ops.aten.native_layer_norm_backward


class _StepNorms:
    """Per-step layer normalisations ``y_t = LN(a_t) * weight + bias`` over the last dimension.

    With ``steps`` (one (B, N) view per step of a (T, B, N) buffer, see :meth:`inputs`) the
    caller writes each step's input there, and the backward pass overwrites it with that
    input's gradient once it is no longer needed, so :meth:`input_grads` costs no memory.
    Without, the inputs are views the caller keeps alive (the LSTM's cell buffer) and their
    gradients are only returned. The gain and shift gradients are summed as the backward
    pass goes (``dweight``, ``dbias``); nothing is recomputed at the end.
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

    def forward(self, a: Tensor) -> Tensor:
        """``LN(a) * weight + bias`` for the next step's input ``a`` (B, N); call in order."""
        y, mean, rstd = torch.native_layer_norm(a, a.shape[-1:], self.weight, self.bias,
                                                LN_EPS)
        self.a.append(a)
        self.mean.append(mean)
        self.rstd.append(rstd)
        return y

    def start_backward(self, inputs: tuple[Tensor, ...] = (), weight_t: Tensor | None = None
                       ) -> None:
        """Zero the gain and shift gradients. A backward pass overwrote the stored inputs
        with their gradients, so from the second one on (``retain_graph=True``) the inputs are
        recomputed as ``inputs[t] @ weight_t``, step by step, bit for bit as in the forward."""
        self.dweight = torch.zeros_like(self.weight)
        self.dbias = None if self.bias is None else torch.zeros_like(self.bias)
        self.passes = getattr(self, "passes", 0) + 1
        if self.passes > 1 and self.steps is not None:
            for x, a in zip(inputs, self.steps):
                torch.mm(x, weight_t, out=a)

    def backward(self, t: int, dy: Tensor) -> Tensor:
        """The gradient of step ``t``'s input from that of its output (stored in the buffer
        when there is one); the gain and shift gradients are accumulated."""
        a = self.a[t]
        da, dw, db = _LN_BACKWARD(dy, a, a.shape[-1:], self.mean[t], self.rstd[t],
                                  self.weight, self.bias, self.mask)
        self.dweight += dw
        if db is not None:
            self.dbias += db
        if self.steps is not None:
            return self.steps[t].copy_(da)
        return da

    def input_grads(self) -> Tensor:
        """Every step's input gradient, (T, B, N), after the backward pass."""
        return self.buf


def _sum_tb(x: Tensor) -> Tensor:
    """Sum over the time and batch dimensions of (T, B, N)."""
    return x.sum((0, 1))


def _grad_w(da: Tensor, h: Tensor) -> Tensor:
    """``sum_t da_t^T h_t`` as one GEMM: da (T, B, G), h (T, B, H) -> (G, H)."""
    return torch.mm(da.reshape(-1, da.shape[-1]).t(), h.reshape(-1, h.shape[-1]))


def _mm(base: Tensor | None, a: Tensor, w: Tensor) -> Tensor:
    """``base + a @ w``, or ``a @ w`` when ``base`` is None, in one call."""
    return torch.mm(a, w) if base is None else torch.addmm(base, a, w)


def _sigmoid_grad(s: Tensor) -> Tensor:
    """``s * (1 - s)`` in one call: the derivative of a sigmoid whose output is ``s``."""
    return torch.addcmul(s, s, s, value=-1)


class Kernel:
    """One cell's forward and backward step for :class:`_Recurrence`.

    ``sbuf`` holds the state sequences, (T + 1, B, n) each, with the initial state at index 0;
    ``self.S[j][t]`` is the view of state j before step t. ``forward_step(t)`` reads
    ``S[j][t]`` and writes ``S[j][t + 1]``. Everything is preallocated and every per-step view
    is made once (``unbind``), so a step costs only its arithmetic: at batch 1 the Python
    overhead per operation is the cost that matters.

    ``backward_step(t, grads, base)`` receives the gradients of the states after step t and
    returns those of the states before it; ``base`` (or None) is to be added to the gradient
    of ``h_{t-1}`` (the GEMM that makes it takes it as its addend).
    """

    num_states: ClassVar[int] = 1

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

    def forward_step(self, t: int) -> None:
        raise NotImplementedError

    def end_forward(self) -> None:
        """Drop what only the forward pass needed (the input projection)."""
        self.xp = self.XP = None

    def start_backward(self) -> None:
        """Allocate the gradient buffers: at backward time, not during the forward pass (lower
        peak memory), and afresh for every backward pass (``retain_graph=True``)."""

    def backward_step(self, t: int, grads: list[Tensor], base: Tensor | None) -> list[Tensor]:
        raise NotImplementedError

    def input_grad(self) -> Tensor:
        raise NotImplementedError

    def weight_grads(self) -> tuple[Tensor | None, ...]:
        raise NotImplementedError


class ElmanKernel(Kernel):
    """``h = g(xp + W_hh h_prev)``, g = tanh or relu; weights: (weight_hh,)."""

    relu = False

    def __init__(self, xp, weights, sbuf):
        super().__init__(xp, weights, sbuf)
        (self.w,) = weights
        self.wt = self.w.t().contiguous()  # (H, G): forward GEMMs read it row-major

    def start_backward(self):
        self.da = torch.empty_like(self.sbuf[0][1:])
        self.DA = self.da.unbind(0)

    def forward_step(self, t):
        H = self.S[0]
        a = torch.addmm(self.XP[t], H[t], self.wt, out=H[t + 1])
        if self.relu:
            a.relu_()
        else:
            a.tanh_()

    def backward_step(self, t, grads, base):
        (dh,) = grads
        h = self.S[0][t + 1]
        if self.relu:
            da = torch.mul(dh, h > 0, out=self.DA[t])
        else:
            da = torch.addcmul(dh, dh * h, h, value=-1, out=self.DA[t])
        return [_mm(base, da, self.w)]

    def input_grad(self):
        return self.da

    def weight_grads(self):
        return (_grad_w(self.da, self.sbuf[0][:-1]),)


class ReluKernel(ElmanKernel):
    relu = True


class LSTMKernel(Kernel):
    """LSTM, optionally layer-normalised; weights: (weight_hh, ln_hh_weight, ln_c_weight,
    ln_c_bias), the last three ``None`` without layer norm.

    Kept per step: the gates after their nonlinearities (i, f, g, o), ``tanh`` of the
    (normalised) cell and ``k = o * (1 - tanh^2)``, the factor by which dh reaches the cell.
    """

    num_states = 2

    def __init__(self, xp, weights, sbuf):
        super().__init__(xp, weights, sbuf)
        self.w, self.g_hh, self.g_c, self.b_c = weights
        self.ln = self.g_hh is not None
        self.wt = self.w.t().contiguous()  # (H, G): forward GEMMs read it row-major
        T, B, G = xp.shape
        H = self.H = G // 4
        self.gates = torch.empty_like(xp)  # (T, B, 4H) i, f, g, o after their nonlinearities
        self.tc = xp.new_empty(T, B, H)  # tanh(c), or tanh(LN(c) * g_c + b_c)
        self.k = xp.new_empty(T, B, H)  # o * (1 - tc^2)
        self.ones = xp.new_ones(B, H)
        st = self._steps
        self.Gt, self.IF = st(self.gates), st(self.gates, 0, 2 * H)
        self.Gi, self.Gf = st(self.gates, 0, H), st(self.gates, H, 2 * H)
        self.Gg, self.Go = st(self.gates, 2 * H, 3 * H), st(self.gates, 3 * H)
        self.TC, self.K = self.tc.unbind(0), self.k.unbind(0)
        self.d = xp.new_empty(B, G)  # one step's activation derivatives
        self.Dg = self.d[:, 2 * H:3 * H]
        if self.ln:
            self.norm_h = _StepNorms(self.g_hh, buf=torch.empty_like(xp))  # of W_hh h
            self.norm_c = _StepNorms(self.g_c, self.b_c)  # of c

    def start_backward(self):
        H = self.H
        st = self._steps
        self.dgates = torch.empty_like(self.gates)  # (T, B, 4H) d loss / d pre-activation
        self.DG = st(self.dgates)
        self.DGi, self.DGf = st(self.dgates, 0, H), st(self.dgates, H, 2 * H)
        self.DGg, self.DGo = st(self.dgates, 2 * H, 3 * H), st(self.dgates, 3 * H)
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
        h = torch.mul(o, tc, out=H[t + 1])
        torch.addcmul(o, h, tc, value=-1, out=self.K[t])

    def backward_step(self, t, grads, base):
        dh, dc = grads
        if self.ln:
            dct = dc + self.norm_c.backward(t, dh * self.K[t])
        else:
            dct = torch.addcmul(dc, dh, self.K[t])
        torch.mul(dct, self.Gg[t], out=self.DGi[t])
        torch.mul(dct, self.S[1][t], out=self.DGf[t])
        torch.mul(dct, self.Gi[t], out=self.DGg[t])
        torch.mul(dh, self.TC[t], out=self.DGo[t])
        g = self.Gg[t]
        d = torch.addcmul(self.Gt[t], self.Gt[t], self.Gt[t], value=-1, out=self.d)
        torch.addcmul(self.ones, g, g, value=-1, out=self.Dg)
        dg = self.DG[t].mul_(d)
        if self.ln:
            dg = self.norm_h.backward(t, dg)
        return [_mm(base, dg, self.w), dct * self.Gf[t]]

    def input_grad(self):
        return self.dgates

    def weight_grads(self):
        h_prev = self.sbuf[0][:-1]
        if not self.ln:
            return (_grad_w(self.dgates, h_prev), None, None, None)
        return (_grad_w(self.norm_h.input_grads(), h_prev), self.norm_h.dweight,
                self.norm_c.dweight, self.norm_c.dbias)


class PeepholeKernel(LSTMKernel):
    """Peephole LSTM; weights: (weight_hh, peephole). Buffers as :class:`LSTMKernel`."""

    def __init__(self, xp, weights, sbuf):
        w, self.p = weights
        super().__init__(xp, (w, None, None, None), sbuf)
        self.p_i, self.p_f, self.p_o = self.p.unbind(0)
        H = self.H
        self.Do, self.Digf = self.d[:, 3 * H:], self.d[:, :3 * H]

    def start_backward(self):
        super().start_backward()
        self.DGigf = self._steps(self.dgates, 0, 3 * self.H)

    def forward_step(self, t):
        H, C = self.S
        c_prev = C[t]
        gt = torch.addmm(self.XP[t], H[t], self.wt, out=self.Gt[t])
        self.Gi[t].addcmul_(self.p_i, c_prev)
        self.Gf[t].addcmul_(self.p_f, c_prev)
        self.IF[t].sigmoid_()
        g = self.Gg[t].tanh_()
        c = torch.mul(self.Gf[t], c_prev, out=C[t + 1]).addcmul_(self.Gi[t], g)
        o = self.Go[t].addcmul_(self.p_o, c).sigmoid_()
        tc = torch.tanh(c, out=self.TC[t])
        h = torch.mul(o, tc, out=H[t + 1])
        torch.addcmul(o, h, tc, value=-1, out=self.K[t])
        del gt

    def backward_step(self, t, grads, base):
        dh, dc = grads
        g = self.Gg[t]
        torch.addcmul(self.Gt[t], self.Gt[t], self.Gt[t], value=-1, out=self.d)
        torch.addcmul(self.ones, g, g, value=-1, out=self.Dg)
        do = torch.mul(dh, self.TC[t], out=self.DGo[t]).mul_(self.Do)
        dct = torch.addcmul(dc, dh, self.K[t]).addcmul_(do, self.p_o)
        torch.mul(dct, g, out=self.DGi[t])
        torch.mul(dct, self.S[1][t], out=self.DGf[t])
        torch.mul(dct, self.Gi[t], out=self.DGg[t])
        self.DGigf[t].mul_(self.Digf)
        dc_prev = (dct * self.Gf[t]).addcmul_(self.DGi[t], self.p_i).addcmul_(
            self.DGf[t], self.p_f)
        return [_mm(base, self.DG[t], self.w), dc_prev]

    def weight_grads(self):
        H = self.H
        c = self.sbuf[1]
        d = self.dgates
        dp = torch.stack([_sum_tb(d[..., :H] * c[:-1]), _sum_tb(d[..., H:2 * H] * c[:-1]),
                          _sum_tb(d[..., 3 * H:] * c[1:])])
        return _grad_w(d, self.sbuf[0][:-1]), dp


class _GRUKernel(Kernel):
    """What both GRU kernels share: r, z, n after their nonlinearities (``gates``), the
    input projection split at the candidate, ``h_prev - n`` and the candidate's gradient."""

    def __init__(self, xp, weights, sbuf):
        super().__init__(xp, weights, sbuf)
        T, B, G = xp.shape
        H = self.H = G // 3
        self.gates = torch.empty_like(xp)  # r, z, n after their nonlinearities
        self.hmn = xp.new_empty(T, B, H)  # h_prev - n
        self.ones = xp.new_ones(B, H)
        st = self._steps
        self.Grz, self.Gr = st(self.gates, 0, 2 * H), st(self.gates, 0, H)
        self.Gz, self.Gn = st(self.gates, H, 2 * H), st(self.gates, 2 * H)
        self.XPrz, self.XPn = st(xp, 0, 2 * H), st(xp, 2 * H)
        self.HMN = self.hmn.unbind(0)

    def end_forward(self):
        super().end_forward()
        self.XPrz = self.XPn = None

    def start_backward(self):
        H = self.H
        st = self._steps
        self.dxp = torch.empty_like(self.gates)
        self.DXn = st(self.dxp, 2 * H)
        self.DXrz, self.DXr = st(self.dxp, 0, 2 * H), st(self.dxp, 0, H)
        self.DXz = st(self.dxp, H, 2 * H)

    def _blend(self, t: int, h: Tensor, n: Tensor) -> None:
        """``h_t = (1 - z) * n + z * h_prev``, keeping ``h_prev - n``."""
        torch.addcmul(n, self.Gz[t], torch.sub(h, n, out=self.HMN[t]), out=self.S[0][t + 1])

    def _candidate_grad(self, t: int, dh: Tensor) -> tuple[Tensor, Tensor]:
        """``(dh * z, d loss / d n's pre-activation)``, the latter written to ``dxp``."""
        n = self.Gn[t]
        dhz = dh * self.Gz[t]
        dn = torch.sub(dh, dhz, out=self.DXn[t]).mul_(torch.addcmul(self.ones, n, n, value=-1))
        return dhz, dn


class GRUAfterKernel(_GRUKernel):
    """torch.nn.GRU's cell (reset after the product), optionally layer-normalised;
    ``xp = [LN](W_ih x) + b_ih``; weights: (weight_hh, bias_hh, ln_hh_weight).

    Kept per step: r, z, n, the recurrent projection ``gh`` (3H) and ``h_prev - n``."""

    def __init__(self, xp, weights, sbuf):
        super().__init__(xp, weights, sbuf)
        self.w, self.b, self.g_hh = weights
        self.ln = self.g_hh is not None
        self.wt = self.w.t().contiguous()  # (H, G): forward GEMMs read it row-major
        H = self.H
        self.gh = torch.empty_like(xp)  # recurrent projection + bias_hh
        st = self._steps
        self.GH, self.GHrz, self.GHn = st(self.gh), st(self.gh, 0, 2 * H), st(self.gh, 2 * H)
        if self.ln:
            self.norm = _StepNorms(self.g_hh, self.b, buf=torch.empty_like(xp))

    def start_backward(self):
        super().start_backward()
        H = self.H
        st = self._steps
        self.dgh = torch.empty_like(self.gh)  # d loss / d gh
        self.DGH, self.DGHrz = st(self.dgh), st(self.dgh, 0, 2 * H)
        self.DGHr, self.DGHz, self.DGHn = (st(self.dgh, 0, H), st(self.dgh, H, 2 * H),
                                           st(self.dgh, 2 * H))
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

    def backward_step(self, t, grads, base):
        (dh,) = grads
        dhz, dn = self._candidate_grad(t, dh)
        torch.mul(dn, self.GHn[t], out=self.DGHr[t])
        torch.mul(dh, self.HMN[t], out=self.DGHz[t])
        self.DGHrz[t].mul_(_sigmoid_grad(self.Grz[t]))
        dgh = self.DGH[t]
        torch.mul(dn, self.Gr[t], out=self.DGHn[t])
        if base is not None:
            dhz += base
        if self.ln:
            da = self.norm.backward(t, dgh)
        else:
            da = dgh
        return [torch.addmm(dhz, da, self.w)]

    def input_grad(self):
        H = self.H
        self.dxp[..., :2 * H] = self.dgh[..., :2 * H]
        return self.dxp

    def weight_grads(self):
        h_prev = self.sbuf[0][:-1]
        da = self.norm.input_grads() if self.ln else self.dgh
        db = _sum_tb(self.dgh) if self.b is not None else None
        dg = self.norm.dweight if self.ln else None
        return _grad_w(da, h_prev), db, dg


class GRUBeforeKernel(_GRUKernel):
    """The original GRU (reset before the product), optionally layer-normalised;
    ``xp`` holds every bias; weights: (weight_hh, ln_hh_weight).

    Kept per step: r, z, n, ``r * h_prev`` and ``h_prev - n``."""

    def __init__(self, xp, weights, sbuf):
        super().__init__(xp, weights, sbuf)
        self.w, self.g_hh = weights
        self.ln = self.g_hh is not None
        T, B, _ = xp.shape
        H = self.H
        self.w_rz, self.w_n = self.w[:2 * H], self.w[2 * H:]
        self.wt_rz, self.wt_n = self.w_rz.t().contiguous(), self.w_n.t().contiguous()
        self.rh = xp.new_empty(T, B, H)  # r * h_prev, the candidate's recurrent input
        self.RH = self.rh.unbind(0)
        if self.ln:
            self.g_rz, self.g_n = self.g_hh[:2 * H], self.g_hh[2 * H:]
            self.norm_rz = _StepNorms(self.g_rz, buf=xp.new_empty(T, B, 2 * H))
            self.norm_n = _StepNorms(self.g_n, buf=xp.new_empty(T, B, H))

    def start_backward(self):
        super().start_backward()
        if self.ln:
            self.norm_rz.start_backward(self.S[0], self.wt_rz)
            self.norm_n.start_backward(self.RH, self.wt_n)

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
        dhz, dn = self._candidate_grad(t, dh)
        if self.ln:
            da_n = self.norm_n.backward(t, dn)
        else:
            da_n = dn
        drh = torch.mm(da_n, self.w_n)
        torch.mul(drh, self.S[0][t], out=self.DXr[t])
        torch.mul(dh, self.HMN[t], out=self.DXz[t])
        drz = self.DXrz[t].mul_(_sigmoid_grad(self.Grz[t]))
        if self.ln:
            da_rz = self.norm_rz.backward(t, drz)
        else:
            da_rz = drz
        dhz.addcmul_(drh, self.Gr[t])
        if base is not None:
            dhz += base
        return [torch.addmm(dhz, da_rz, self.w_rz)]

    def input_grad(self):
        return self.dxp

    def weight_grads(self):
        H = self.H
        if self.ln:
            da_rz, da_n = self.norm_rz.input_grads(), self.norm_n.input_grads()
        else:
            da_rz, da_n = self.dxp[..., :2 * H], self.dxp[..., 2 * H:]
        dw = torch.cat([_grad_w(da_rz, self.sbuf[0][:-1]), _grad_w(da_n, self.rh)])
        dg = None
        if self.ln:
            dg = torch.cat([self.norm_rz.dweight, self.norm_n.dweight])
        return dw, dg


class MinimalGRUKernel(Kernel):
    """The notes' minimal GRU; ``xp`` holds every bias; weights: (weight_hh,).

    Kept per step: u, n and ``n - h_prev``."""

    def __init__(self, xp, weights, sbuf):
        super().__init__(xp, weights, sbuf)
        (self.w,) = weights
        self.wt = self.w.t().contiguous()  # (H, G): forward GEMMs read it row-major
        T, B, G = xp.shape
        H = self.H = G // 2
        self.gates = torch.empty_like(xp)
        self.nmh = xp.new_empty(T, B, H)  # n - h_prev
        self.ones = xp.new_ones(B, H)
        st = self._steps
        self.Gt, self.Gu, self.Gn = st(self.gates), st(self.gates, 0, H), st(self.gates, H)
        self.NMH = self.nmh.unbind(0)

    def start_backward(self):
        H = self.H
        st = self._steps
        self.dxp = torch.empty_like(self.gates)
        self.DX, self.DXu, self.DXn = st(self.dxp), st(self.dxp, 0, H), st(self.dxp, H)
        self.d = self.ones.new_empty(self.B, 2 * H)  # one step's activation derivatives
        self.Dn = self.d[:, H:]

    def forward_step(self, t):
        (H,) = self.S
        h = H[t]
        torch.addmm(self.XP[t], h, self.wt, out=self.Gt[t])
        u, n = self.Gu[t].sigmoid_(), self.Gn[t].tanh_()
        torch.addcmul(h, u, torch.sub(n, h, out=self.NMH[t]), out=H[t + 1])

    def backward_step(self, t, grads, base):
        (dh,) = grads
        u, n = self.Gu[t], self.Gn[t]
        direct = torch.addcmul(dh, dh, u, value=-1)
        if base is not None:
            direct += base
        torch.mul(dh, self.NMH[t], out=self.DXu[t])
        torch.mul(dh, u, out=self.DXn[t])
        d = torch.addcmul(self.Gt[t], self.Gt[t], self.Gt[t], value=-1, out=self.d)
        torch.addcmul(self.ones, n, n, value=-1, out=self.Dn)
        dx = self.DX[t].mul_(d)
        return [torch.addmm(direct, dx, self.w)]

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
        step = kernel.forward_step
        if mask is None:
            for t in range(T):
                step(t)
        else:
            masks = mask.unbind(0)
            for t in range(T):
                step(t)
                m = masks[t]
                for seq in kernel.S:
                    torch.where(m, seq[t + 1], seq[t], out=seq[t + 1])
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
        if masks is None and record is None and all(g is None for g in steps[1:]):
            # the common case (no padding, no recording, only h's sequence used), kept tight
            after = steps[0]
            for t in range(T - 1, 0, -1):
                grads = step(t, grads, None if after is None else after[t - 1])
            grads = step(0, grads, None)
            return (None, None, kernel.input_grad(), *grads,
                    *_needed(kernel.weight_grads(), ctx.needs_input_grad[3 + n:]))
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
        return kernel, _bias_sum(g("bias_ih"), g("bias_hh")), None, (p["weight_hh"],)
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
    xp = _project(x, params["weight_ih"], bias, ln_weight)
    # autograd needs contiguous, non-aliased buffers to write the input gradient into
    return _Recurrence.apply(kernel, mask, xp, *state, *weights)
