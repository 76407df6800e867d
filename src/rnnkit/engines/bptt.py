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


def _ln_forward(a: Tensor) -> tuple[Tensor, Tensor]:
    """Normalise ``a`` (B, N) over N: returns ``(n, rstd)`` with rstd (B, 1)."""
    n, _, rstd = torch.native_layer_norm(a, a.shape[-1:], None, None, LN_EPS)
    return n, rstd.view(-1, 1)


def _ln_backward(dn: Tensor, n: Tensor, rstd: Tensor) -> Tensor:
    """Gradient through ``n = (a - mean(a)) * rstd`` given ``dn``: returns ``da``."""
    return rstd * (dn - dn.mean(-1, keepdim=True) - n * (dn * n).mean(-1, keepdim=True))


def _sum_tb(x: Tensor) -> Tensor:
    """Sum over the time and batch dimensions of (T, B, N)."""
    return x.sum((0, 1))


def _grad_w(da: Tensor, h: Tensor) -> Tensor:
    """``sum_t da_t^T h_t`` as one GEMM: da (T, B, G), h (T, B, H) -> (G, H)."""
    return torch.mm(da.reshape(-1, da.shape[-1]).t(), h.reshape(-1, h.shape[-1]))


class Kernel:
    """One cell's forward and backward step for :class:`_Recurrence`.

    ``sbuf`` holds the state sequences, (T + 1, B, n) each, with the initial state at index 0,
    filled by the driver. A kernel allocates whatever else it keeps in ``__init__``.
    """

    num_states: ClassVar[int] = 1

    def __init__(self, xp: Tensor, weights: tuple[Tensor | None, ...], sbuf: list[Tensor]):
        self.xp = xp
        self.T, self.B = xp.shape[:2]
        self.sbuf = sbuf

    def forward_step(self, t: int, states: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def backward_step(self, t: int, grads: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
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
        self.wt = self.w.t()
        self.da = torch.empty_like(xp)

    def forward_step(self, t, states):
        a = torch.addmm(self.xp[t], states[0], self.wt)
        return (a.relu_() if self.relu else a.tanh_(),)

    def backward_step(self, t, grads):
        h = self.sbuf[0][t + 1]
        da = self.da[t]
        if self.relu:
            torch.mul(grads[0], h > 0, out=da)
        else:
            torch.mul(grads[0], 1 - h * h, out=da)
        return (torch.mm(da, self.w),)

    def input_grad(self):
        return self.da

    def weight_grads(self):
        return (_grad_w(self.da, self.sbuf[0][:-1]),)


class ReluKernel(ElmanKernel):
    relu = True


class LSTMKernel(Kernel):
    """LSTM, optionally layer-normalised; weights: (weight_hh, ln_hh_weight, ln_c_weight,
    ln_c_bias), the last three ``None`` without layer norm."""

    num_states = 2

    def __init__(self, xp, weights, sbuf):
        super().__init__(xp, weights, sbuf)
        self.w, self.g_hh, self.g_c, self.b_c = weights
        self.ln = self.g_hh is not None
        self.wt = self.w.t()
        T, B, G = xp.shape
        H = self.H = G // 4
        self.gates = torch.empty_like(xp)  # (T, B, 4H) i, f, g, o after their nonlinearities
        self.dgates = torch.empty_like(xp)  # (T, B, 4H) d loss / d pre-activation
        if self.ln:
            self.nh = torch.empty_like(xp)  # (T, B, 4H) normalised W_hh h
            self.rs_h = xp.new_empty(T, B, 1)
            self.nc = xp.new_empty(T, B, H)  # normalised c
            self.rs_c = xp.new_empty(T, B, 1)
            self.tc = xp.new_empty(T, B, H)  # tanh(LN(c))
            self.dy = xp.new_empty(T, B, H)  # d loss / d (LN(c) * g_c + b_c)
            self.da = torch.empty_like(xp)  # d loss / d (W_hh h)

    def forward_step(self, t, states):
        h, c = states
        H = self.H
        gt = self.gates[t]
        if self.ln:
            n, rs = _ln_forward(torch.mm(h, self.wt))
            self.nh[t], self.rs_h[t] = n, rs
            torch.addcmul(self.xp[t], n, self.g_hh, out=gt)
        else:
            torch.addmm(self.xp[t], h, self.wt, out=gt)
        gt[:, :2 * H].sigmoid_()
        gt[:, 2 * H:3 * H].tanh_()
        gt[:, 3 * H:].sigmoid_()
        i, f, g, o = gt.chunk(4, 1)
        c_new = torch.addcmul(f * c, i, g)
        if self.ln:
            nc, rs = _ln_forward(c_new)
            self.nc[t], self.rs_c[t] = nc, rs
            tc = torch.tanh(torch.addcmul(self.b_c, nc, self.g_c))
            self.tc[t] = tc
        else:
            tc = torch.tanh(c_new)
        return o * tc, c_new

    def backward_step(self, t, grads):
        dh, dc = grads
        H = self.H
        i, f, g, o = self.gates[t].chunk(4, 1)
        c_prev = self.sbuf[1][t]
        tc = self.tc[t] if self.ln else torch.tanh(self.sbuf[1][t + 1])
        dy = dh * o * (1 - tc * tc)
        if self.ln:
            self.dy[t] = dy
            dy = _ln_backward(dy * self.g_c, self.nc[t], self.rs_c[t])
        dct = dc + dy
        dg = self.dgates[t]
        torch.mul(dct * g, i * (1 - i), out=dg[:, :H])
        torch.mul(dct * c_prev, f * (1 - f), out=dg[:, H:2 * H])
        torch.mul(dct * i, 1 - g * g, out=dg[:, 2 * H:3 * H])
        torch.mul(dh * tc, o * (1 - o), out=dg[:, 3 * H:])
        if self.ln:
            da = self.da[t]
            da.copy_(_ln_backward(dg * self.g_hh, self.nh[t], self.rs_h[t]))
        else:
            da = dg
        return torch.mm(da, self.w), dct * f

    def input_grad(self):
        return self.dgates

    def weight_grads(self):
        h_prev = self.sbuf[0][:-1]
        if not self.ln:
            return (_grad_w(self.dgates, h_prev), None, None, None)
        return (_grad_w(self.da, h_prev), _sum_tb(self.dgates * self.nh),
                _sum_tb(self.dy * self.nc), _sum_tb(self.dy))


class PeepholeKernel(Kernel):
    """Peephole LSTM; weights: (weight_hh, peephole)."""

    num_states = 2

    def __init__(self, xp, weights, sbuf):
        super().__init__(xp, weights, sbuf)
        self.w, self.p = weights
        self.wt = self.w.t()
        self.H = xp.shape[-1] // 4
        self.gates = torch.empty_like(xp)
        self.dgates = torch.empty_like(xp)

    def forward_step(self, t, states):
        h, c = states
        H = self.H
        p_i, p_f, p_o = self.p
        gt = self.gates[t]
        torch.addmm(self.xp[t], h, self.wt, out=gt)
        a_i, a_f, a_g, a_o = gt.chunk(4, 1)
        a_i.addcmul_(p_i, c)
        a_f.addcmul_(p_f, c)
        gt[:, :2 * H].sigmoid_()
        a_g.tanh_()
        i, f, g = a_i, a_f, a_g
        c_new = torch.addcmul(f * c, i, g)
        o = a_o.addcmul_(p_o, c_new).sigmoid_()
        return o * torch.tanh(c_new), c_new

    def backward_step(self, t, grads):
        dh, dc = grads
        H = self.H
        p_i, p_f, p_o = self.p
        i, f, g, o = self.gates[t].chunk(4, 1)
        c_prev = self.sbuf[1][t]
        tc = torch.tanh(self.sbuf[1][t + 1])
        dg = self.dgates[t]
        do = torch.mul(dh * tc, o * (1 - o), out=dg[:, 3 * H:])
        dct = dc + dh * o * (1 - tc * tc) + do * p_o
        di = torch.mul(dct * g, i * (1 - i), out=dg[:, :H])
        df = torch.mul(dct * c_prev, f * (1 - f), out=dg[:, H:2 * H])
        torch.mul(dct * i, 1 - g * g, out=dg[:, 2 * H:3 * H])
        dc_prev = dct * f + di * p_i + df * p_f
        return torch.mm(dg, self.w), dc_prev

    def input_grad(self):
        return self.dgates

    def weight_grads(self):
        H = self.H
        c = self.sbuf[1]
        d = self.dgates
        dp = torch.stack([_sum_tb(d[..., :H] * c[:-1]), _sum_tb(d[..., H:2 * H] * c[:-1]),
                          _sum_tb(d[..., 3 * H:] * c[1:])])
        return _grad_w(d, self.sbuf[0][:-1]), dp


class GRUAfterKernel(Kernel):
    """torch.nn.GRU's cell (reset after the product), optionally layer-normalised;
    ``xp = [LN](W_ih x) + b_ih``; weights: (weight_hh, bias_hh, ln_hh_weight)."""

    def __init__(self, xp, weights, sbuf):
        super().__init__(xp, weights, sbuf)
        self.w, self.b, self.g_hh = weights
        self.ln = self.g_hh is not None
        self.wt = self.w.t()
        T, B, G = xp.shape
        self.H = G // 3
        self.gates = torch.empty_like(xp)  # r, z, n after their nonlinearities
        self.hn = xp.new_empty(T, B, self.H)  # the recurrent part of n's pre-activation
        self.dxp = torch.empty_like(xp)
        self.dgh = torch.empty_like(xp)  # d loss / d (recurrent projection + bias)
        if self.ln:
            self.nh = torch.empty_like(xp)
            self.rs = xp.new_empty(T, B, 1)
            self.da = torch.empty_like(xp)

    def forward_step(self, t, states):
        (h,) = states
        H = self.H
        if self.ln:
            n, rs = _ln_forward(torch.mm(h, self.wt))
            self.nh[t], self.rs[t] = n, rs
            gh = n * self.g_hh
            if self.b is not None:
                gh += self.b
        elif self.b is not None:
            gh = torch.addmm(self.b, h, self.wt)
        else:
            gh = torch.mm(h, self.wt)
        gt = self.gates[t]
        xp = self.xp[t]
        torch.add(xp[:, :2 * H], gh[:, :2 * H], out=gt[:, :2 * H]).sigmoid_()
        r, z, n = gt.chunk(3, 1)
        self.hn[t] = gh[:, 2 * H:]
        torch.addcmul(xp[:, 2 * H:], r, gh[:, 2 * H:], out=n).tanh_()
        return (torch.addcmul(n, z, h - n),)

    def backward_step(self, t, grads):
        (dh,) = grads
        H = self.H
        r, z, n = self.gates[t].chunk(3, 1)
        h_prev = self.sbuf[0][t]
        dx, dgh = self.dxp[t], self.dgh[t]
        dn = torch.mul(dh * (1 - z), 1 - n * n, out=dx[:, 2 * H:])
        torch.mul(dn * self.hn[t], r * (1 - r), out=dx[:, :H])
        torch.mul(dh * (h_prev - n), z * (1 - z), out=dx[:, H:2 * H])
        dgh[:, :2 * H] = dx[:, :2 * H]
        torch.mul(dn, r, out=dgh[:, 2 * H:])
        if self.ln:
            da = self.da[t]
            da.copy_(_ln_backward(dgh * self.g_hh, self.nh[t], self.rs[t]))
        else:
            da = dgh
        return (torch.addmm(dh * z, da, self.w),)

    def input_grad(self):
        return self.dxp

    def weight_grads(self):
        h_prev = self.sbuf[0][:-1]
        da = self.da if self.ln else self.dgh
        db = _sum_tb(self.dgh) if self.b is not None else None
        dg = _sum_tb(self.dgh * self.nh) if self.ln else None
        return _grad_w(da, h_prev), db, dg


class GRUBeforeKernel(Kernel):
    """The original GRU (reset before the product), optionally layer-normalised;
    ``xp`` holds every bias; weights: (weight_hh, ln_hh_weight)."""

    def __init__(self, xp, weights, sbuf):
        super().__init__(xp, weights, sbuf)
        self.w, self.g_hh = weights
        self.ln = self.g_hh is not None
        T, B, G = xp.shape
        H = self.H = G // 3
        self.w_rz, self.w_n = self.w[:2 * H], self.w[2 * H:]
        self.wt_rz, self.wt_n = self.w_rz.t(), self.w_n.t()
        self.gates = torch.empty_like(xp)
        self.rh = xp.new_empty(T, B, H)  # r * h_prev, the candidate's recurrent input
        self.dxp = torch.empty_like(xp)
        if self.ln:
            self.g_rz, self.g_n = self.g_hh[:2 * H], self.g_hh[2 * H:]
            self.nh = torch.empty_like(xp)
            self.rs = xp.new_empty(T, B, 2)
            self.da = torch.empty_like(xp)

    def forward_step(self, t, states):
        (h,) = states
        H = self.H
        xp, gt = self.xp[t], self.gates[t]
        if self.ln:
            n1, rs1 = _ln_forward(torch.mm(h, self.wt_rz))
            self.nh[t, :, :2 * H], self.rs[t, :, :1] = n1, rs1
            torch.addcmul(xp[:, :2 * H], n1, self.g_rz, out=gt[:, :2 * H])
        else:
            torch.addmm(xp[:, :2 * H], h, self.wt_rz, out=gt[:, :2 * H])
        gt[:, :2 * H].sigmoid_()
        r, z, n = gt.chunk(3, 1)
        rh = torch.mul(r, h, out=self.rh[t])
        if self.ln:
            n2, rs2 = _ln_forward(torch.mm(rh, self.wt_n))
            self.nh[t, :, 2 * H:], self.rs[t, :, 1:] = n2, rs2
            torch.addcmul(xp[:, 2 * H:], n2, self.g_n, out=n)
        else:
            torch.addmm(xp[:, 2 * H:], rh, self.wt_n, out=n)
        n.tanh_()
        return (torch.addcmul(n, z, h - n),)

    def backward_step(self, t, grads):
        (dh,) = grads
        H = self.H
        r, z, n = self.gates[t].chunk(3, 1)
        h_prev = self.sbuf[0][t]
        dx = self.dxp[t]
        dn = torch.mul(dh * (1 - z), 1 - n * n, out=dx[:, 2 * H:])
        if self.ln:
            da_n = self.da[t, :, 2 * H:]
            da_n.copy_(_ln_backward(dn * self.g_n, self.nh[t, :, 2 * H:], self.rs[t, :, 1:]))
        else:
            da_n = dn
        drh = torch.mm(da_n, self.w_n)
        torch.mul(drh * h_prev, r * (1 - r), out=dx[:, :H])
        torch.mul(dh * (h_prev - n), z * (1 - z), out=dx[:, H:2 * H])
        if self.ln:
            da_rz = self.da[t, :, :2 * H]
            da_rz.copy_(_ln_backward(dx[:, :2 * H] * self.g_rz, self.nh[t, :, :2 * H],
                                     self.rs[t, :, :1]))
        else:
            da_rz = dx[:, :2 * H]
        return (torch.addmm(dh * z + drh * r, da_rz, self.w_rz),)

    def input_grad(self):
        return self.dxp

    def weight_grads(self):
        H = self.H
        da = self.da if self.ln else self.dxp
        dw = torch.cat([_grad_w(da[..., :2 * H], self.sbuf[0][:-1]),
                        _grad_w(da[..., 2 * H:], self.rh)])
        dg = _sum_tb(self.dxp * self.nh) if self.ln else None
        return dw, dg


class MinimalGRUKernel(Kernel):
    """The notes' minimal GRU; ``xp`` holds every bias; weights: (weight_hh,)."""

    def __init__(self, xp, weights, sbuf):
        super().__init__(xp, weights, sbuf)
        (self.w,) = weights
        self.wt = self.w.t()
        self.H = xp.shape[-1] // 2
        self.gates = torch.empty_like(xp)
        self.dxp = torch.empty_like(xp)

    def forward_step(self, t, states):
        (h,) = states
        H = self.H
        gt = self.gates[t]
        torch.addmm(self.xp[t], h, self.wt, out=gt)
        u, n = gt[:, :H].sigmoid_(), gt[:, H:].tanh_()
        return (torch.addcmul(h, u, n - h),)

    def backward_step(self, t, grads):
        (dh,) = grads
        H = self.H
        u, n = self.gates[t].chunk(2, 1)
        h_prev = self.sbuf[0][t]
        dx = self.dxp[t]
        torch.mul(dh * (n - h_prev), u * (1 - u), out=dx[:, :H])
        torch.mul(dh * u, 1 - n * n, out=dx[:, H:])
        return (torch.addmm(dh * (1 - u), dx, self.w),)

    def input_grad(self):
        return self.dxp

    def weight_grads(self):
        return (_grad_w(self.dxp, self.sbuf[0][:-1]),)


class _Recurrence(Function):
    """Runs a :class:`Kernel` forward and backward through time, handling padding."""

    @staticmethod
    def forward(ctx, kernel_cls, mask, xp, *rest):
        n = kernel_cls.num_states
        states0, weights = rest[:n], rest[n:]
        T = xp.shape[0]
        sbuf = [xp.new_empty((T + 1, *s.shape)) for s in states0]
        for buf, s in zip(sbuf, states0):
            buf[0] = s
        kernel = kernel_cls(xp, weights, sbuf)
        current = tuple(states0)
        for t in range(T):
            new = kernel.forward_step(t, current)
            if mask is None:
                for buf, s in zip(sbuf, new):
                    buf[t + 1] = s
            else:
                for buf, s, old in zip(sbuf, new, current):
                    torch.where(mask[t], s, old, out=buf[t + 1])
            current = tuple(buf[t + 1] for buf in sbuf)
        ctx.kernel = kernel
        ctx.mask = mask
        ctx.n_weights = len(weights)
        ctx.weight_needs_grad = [w is not None and w.requires_grad for w in weights]
        return tuple(buf[1:] for buf in sbuf)

    @staticmethod
    def backward(ctx, *grad_seqs):
        kernel, mask = ctx.kernel, ctx.mask
        del ctx.kernel
        n = len(grad_seqs)
        grads = [torch.zeros_like(buf[0]) for buf in kernel.sbuf]
        for t in range(kernel.T - 1, -1, -1):
            for j, g in enumerate(grad_seqs):
                if g is not None:
                    grads[j] = grads[j] + g[t]
            if mask is None:
                grads = list(kernel.backward_step(t, tuple(grads)))
            else:
                m = mask[t]
                inside = tuple(torch.where(m, g, 0.0) for g in grads)
                carried = [torch.where(m, 0.0, g) for g in grads]
                grads = [c + g for c, g in zip(carried, kernel.backward_step(t, inside))]
        weight_grads = kernel.weight_grads()
        weight_grads = tuple(g if need else None
                             for g, need in zip(weight_grads, ctx.weight_needs_grad))
        return (None, None, kernel.input_grad(), *grads[:n], *weight_grads)


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
