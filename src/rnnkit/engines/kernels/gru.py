"""``bptt`` kernels of the GRU family: the reset-after GRU (torch.nn.GRU's, plain and
layer-normalised), the reset-before GRU and the minimal GRU (see :mod:`rnnkit.cells.gru` for
the cells' equations)."""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.cells.base import LN_EPS
from rnnkit.cells.gru import GRUCell, MinimalGRUCell
from rnnkit.engines.kernels.base import (
    Kernel,
    Plan,
    StepNorms,
    Steps,
    bias_sum,
    chunks,
    grad_w,
    register_kernel,
    sigmoid_with_tanh,
    step_views,
    steps,
    sum_tb,
    tanh_into,
)


class _GRUKernel(Kernel):
    """What both GRU kernels share: r, z, n after their nonlinearities (``gates``), the
    input projection split at the candidate, the blend ``a<t> = (1 - z) n + z a<t-1>``
    (``lerp``, one call) and the factors that depend on z and n."""

    def __init__(self, xp, weights, state_seqs):
        super().__init__(xp, weights, state_seqs)
        self.H = xp.shape[2] // 3
        self.gates = xp  # r, z, n after their nonlinearities, written over xp
        self.xp_rz_steps, self.xp_n_steps = step_views(xp, 0, 2 * self.H), step_views(
            xp, 2 * self.H)

    def _views(self):
        H, g = self.H, self.gates
        self.rz_steps, self.r_steps = step_views(g, 0, 2 * H), step_views(g, 0, H)
        self.z_steps, self.n_steps = step_views(g, H, 2 * H), step_views(g, 2 * H)

    def end_forward(self):
        super().end_forward()
        self.xp_rz_steps = self.xp_n_steps = None

    def _blend(self, t: int, h: Tensor, n: Tensor) -> None:
        """``a<t> = (1 - z) * n + z * a<t-1>`` in one call."""
        torch.lerp(n, h, self.z_steps[t], out=self.state_steps[0][t + 1])

    def _h_minus_n(self, out: Tensor) -> Tensor:
        """``out = a<t-1> - n`` for every step, (T, B, H), before the backward loop."""
        return torch.sub(self.state_seqs[0][:-1], self.gates[..., 2 * self.H:], out=out)

    def _candidate_factor(self, out: Tensor) -> Tensor:
        """``out = (1 - z)(1 - n^2)``, (T, B, H): what dL/da<t> becomes for n's
        pre-activation; ``out`` may be n's own slot of the gates."""
        z, n = self.gates[..., self.H:2 * self.H], self.gates[..., 2 * self.H:]
        q = torch.addcmul(torch.ones_like(n[0]), n, n, value=-1, out=out)
        return q.addcmul_(q, z, value=-1)

    def _direct(self, t: int, dh: Tensor, base: Tensor | None) -> Tensor:
        """``base + dL/da<t> * z``: the part of dL/da<t-1> that passes through no weight."""
        return dh * self.z_steps[t] if base is None else torch.addcmul(base, dh, self.z_steps[t])


class GRUAfterKernel(_GRUKernel):
    r"""torch.nn.GRU's cell (reset after the product), optionally layer-normalised;
    ``xp = [LN](W_ih x) + b_ih``; weights: (weight_hh, bias_hh, ln_hh_weight).

    Forward, per step::

        gh = [LN](W_hh a<t-1>) + b_hh                  (3H: gh_r, gh_z, gh_n)
        r = sigma(xp_r + gh_r)   z = sigma(xp_z + gh_z)   n = tanh(xp_n + r * gh_n)
        a<t> = (1 - z) * n + z * a<t-1>

    Backward, per step from ``dL/da<t>``, with ``q = (1 - z)(1 - n^2)``::

        dL/dgh_r = dL/da<t> * r(1-r) q gh_n     dL/dgh_z = dL/da<t> * z(1-z)(a<t-1> - n)
        dL/dgh_n = dL/da<t> * q r               dL/dxp_n = dL/da<t> * q
        dL/da<t-1> = dL/da<t> * z + W_hh^T dL/dgh     [through LN(W_hh a<t-1>)]

    (``dL/dxp_r``, ``dL/dxp_z`` equal those of gh) and ``dL/dW_hh = sum_t dL/dgh_t^T a<t-1>``.

    Kept per step: r, z, n and ``gh``, in ``gh_hmn`` (4H) beside a slot that the backward pass
    fills with ``a<t-1> - n``. Before the backward loop ``gh`` becomes
    ``[r(1-r) q gh_n, z(1-z)(a<t-1> - n), q r]`` and the slot ``q``: each step multiplies all
    four by dL/da<t> in place (one call), which makes them dL/dgh and dL/dxp_n.
    """

    consumed = ("gates", "gh_hmn")
    fused = True

    def __init__(self, xp, weights, state_seqs):
        super().__init__(xp, weights, state_seqs)
        self.w_hh, self.b_hh, self.g_hh = weights
        self.ln = self.g_hh is not None
        self.fw = self.step_weight(self.w_hh, forward=True)  # its b: W_hh^T (H, 3H)
        self.gh_hmn = xp.new_empty(*xp.shape[:2], 4 * self.H)
        self._views()
        if self.ln:
            self.norm = StepNorms(self.g_hh, self.b_hh, buf=torch.empty_like(xp))

    def _views(self):
        H = self.H
        # the recurrent projection + bias_hh, and a<t-1> - n
        self.gh, self.h_minus_n = self.gh_hmn[..., :3 * H], self.gh_hmn[..., 3 * H:]
        super()._views()
        self.gh_steps = step_views(self.gh)
        self.gh_rz_steps, self.gh_n_steps = step_views(self.gh, 0, 2 * H), step_views(
            self.gh, 2 * H)

    def start_backward(self):
        H = self.H
        r, z, _ = self.gates.split(H, -1)
        d = self.dgh = self.gh  # dL/dgh, once the loop is done
        dr, dz, dn = d.split(H, -1)
        torch.addcmul(z, z, z, value=-1, out=dz).mul_(self._h_minus_n(self.h_minus_n))
        q = self.dxp_n = self._candidate_factor(self.h_minus_n)
        torch.addcmul(r, r, r, value=-1, out=dr).mul_(q).mul_(dn)
        torch.mul(q, r, out=dn)
        self.dgh_steps = step_views(d)
        self.factor_steps = steps(self.gh_hmn.unflatten(-1, (4, H)))  # (B, 4, H) per step
        self.bw = self.step_weight(self.w_hh, forward=False)
        if self.ln:
            self.norm.start_backward(self.state_steps[0], self.fw, self.forward_loops)

    def forward_step(self, t):
        (h_steps,) = self.state_steps
        h = h_steps[t]
        if self.ln:
            a = self.fw.addmm(None, h, out=self.norm.steps[t])
            self.gh_steps[t].copy_(self.norm.forward(a))
        else:
            self.fw.addmm(None, h, out=self.gh_steps[t], bias=self.b_hh)
        torch.add(self.xp_rz_steps[t], self.gh_rz_steps[t], out=self.rz_steps[t]).sigmoid_()
        n = torch.addcmul(self.xp_n_steps[t], self.r_steps[t], self.gh_n_steps[t],
                          out=self.n_steps[t])
        n = tanh_into(n, n)
        self._blend(t, h, n)

    def forward_loop(self, mask):
        loops = self.compiled_loops()
        if loops is None:
            return super().forward_loop(mask)
        mask = None if mask is None else mask.contiguous()
        self.forward_loops = loops
        wt = self.fw.b_for(loops.uses_small_mm)
        self.stats = loops.gru_forward(self.gates, self.state_seqs[0], self.gh_hmn, wt,
                                       self.b_hh, mask, self.norm.buf if self.ln else None,
                                       self.g_hh, LN_EPS, self.fw.packed)
        if self.ln:  # for a backward pass in Python
            self.norm.adopt(self.norm.steps, *self.stats)

    def backward_loop(self, grads, afters, mask):
        loops = self.compiled_loops(backward=True)
        if loops is None:
            return super().backward_loop(grads, afters, mask)
        stats = (self.stats or self.norm.moments()) if self.ln else []
        out = loops.gru_backward(self.gh_hmn, self.gates, self.w_hh, grads[0], afters[0], mask,
                                 self.norm.buf if self.ln else None, self.g_hh, stats,
                                 self.bw.packed)
        if self.ln:  # the sum StepNorms would have made of its per-step list
            self.norm.dweights = [out[1]]
        return out[:1]

    def backward_step(self, t, grads, base):
        (dh,) = grads
        self.factor_steps[t].mul_(dh.unsqueeze(1))
        dgh = self.norm.backward(t, self.dgh_steps[t]) if self.ln else self.dgh_steps[t]
        return [self.bw.addmm(self._direct(t, dh, base), dgh)]

    def input_grad(self):
        H = self.H
        self.gates[..., :2 * H] = self.dgh[..., :2 * H]  # the gates are no longer needed
        self.gates[..., 2 * H:] = self.dxp_n
        return self.gates

    def weight_grads(self):
        h_prev = self.state_seqs[0][:-1]
        da = self.norm.input_grads() if self.ln else self.dgh
        db = sum_tb(self.dgh) if self.b_hh is not None else None
        dg = self.norm.dweight if self.ln else None
        return grad_w(da, h_prev), db, dg


class GRUBeforeKernel(_GRUKernel):
    r"""The original GRU (reset before the product), optionally layer-normalised; ``xp``
    holds every bias; weights: (weight_hh, ln_hh_weight).

    Forward, per step::

        r, z = sigma(xp_rz + [LN](W_rz a<t-1>))
        n = tanh(xp_n + [LN](W_n (r * a<t-1>)))
        a<t> = (1 - z) * n + z * a<t-1>

    Backward, per step from ``dL/da<t>``::

        dL/dn_pre = dL/da<t> * (1 - z)(1 - n^2)
        dL/d(r a<t-1>) = W_n^T dL/dn_pre                      [through LN]
        dL/dr_pre = dL/d(r a<t-1>) * r(1-r) a<t-1>   dL/dz_pre = dL/da<t> * z(1-z)(a<t-1> - n)
        dL/da<t-1> = dL/da<t> * z + dL/d(r a<t-1>) * r + W_rz^T dL/drz_pre   [through LN]

    and ``dL/dW_rz = sum_t dL/drz_pre_t^T a<t-1>``, ``dL/dW_n = sum_t dL/dn_pre_t^T (r a<t-1>)``.

    Kept per step: r, z, n and, in ``rh_hmn`` beside a slot that the backward pass fills,
    ``r * a<t-1>``. Before the backward loop ``rh_hmn`` becomes
    ``[r(1-r) a<t-1>, z(1-z)(a<t-1> - n)]`` and n becomes ``(1-z)(1-n^2)``; each step
    multiplies the r factor by dL/d(r a<t-1>) and the others by dL/da<t>. ``r * a<t-1>`` is
    recomputed for the weight gradient. Without layer norm, at small batches the compiled
    loops run both loops (``gru_before_forward``, ``gru_before_backward``).
    """

    consumed = ("gates", "rh_hmn")
    transposed = ("fw_rz", "fw_n")
    fused = True  # without layer norm (compiled_loops)

    def __init__(self, xp, weights, state_seqs):
        super().__init__(xp, weights, state_seqs)
        self.w_hh, self.g_hh = weights
        self.ln = self.g_hh is not None
        T, B, _ = xp.shape
        H = self.H
        self.w_rz, self.w_n = self.w_hh[:2 * H], self.w_hh[2 * H:]
        self.fw_rz = self.step_weight(self.w_rz, forward=True)
        self.fw_n = self.step_weight(self.w_n, forward=True)
        self.rh_hmn = xp.new_empty(T, B, 2 * H)
        self._views()
        if self.ln:
            self.norm_rz = StepNorms(self.g_hh[:2 * H], buf=xp.new_empty(T, B, 2 * H))
            self.norm_n = StepNorms(self.g_hh[2 * H:], buf=xp.new_empty(T, B, H))

    def _views(self):
        # r * a<t-1>, the candidate's recurrent input, and a<t-1> - n
        self.r_h, self.h_minus_n = self.rh_hmn.split(self.H, -1)
        super()._views()
        self.r_h_steps = steps(self.r_h)

    def start_backward(self):
        if self.ln:  # first: a second pass recomputes their inputs from r * a<t-1>
            self.norm_rz.start_backward(self.state_steps[0], self.fw_rz)
            self.norm_n.start_backward(self.r_h_steps, self.fw_n)
        self.bw_rz = self.step_weight(self.w_rz, forward=False)
        self.bw_n = self.step_weight(self.w_n, forward=False)
        H = self.H
        r, z, n = self.gates.split(H, -1)
        self.r_h.addcmul_(self.r_h, r, value=-1)  # r (1 - r) a<t-1>
        fz = self._h_minus_n(self.h_minus_n).mul_(z)
        fz.addcmul_(fz, z, value=-1)  # z (1 - z)(a<t-1> - n)
        self.r_h = self.h_minus_n = self.r_h_steps = None
        self._candidate_factor(n)
        f = self.rh_hmn
        self.drz_steps, self.dr_steps, self.dz_steps = (step_views(f), step_views(f, 0, H),
                                                        step_views(f, H))

    def forward_step(self, t):
        (h_steps,) = self.state_steps
        h = h_steps[t]
        if self.ln:
            a = self.fw_rz.addmm(None, h, out=self.norm_rz.steps[t])
            torch.add(self.xp_rz_steps[t], self.norm_rz.forward(a), out=self.rz_steps[t])
        else:
            self.fw_rz.addmm(self.xp_rz_steps[t], h, out=self.rz_steps[t])
        self.rz_steps[t].sigmoid_()
        rh = torch.mul(self.r_steps[t], h, out=self.r_h_steps[t])
        if self.ln:
            a = self.fw_n.addmm(None, rh, out=self.norm_n.steps[t])
            n = torch.add(self.xp_n_steps[t], self.norm_n.forward(a), out=self.n_steps[t])
        else:
            n = self.fw_n.addmm(self.xp_n_steps[t], rh, out=self.n_steps[t])
        tanh_into(n, n)
        self._blend(t, h, n)

    def compiled_loops(self, backward=False):
        return None if self.ln else super().compiled_loops(backward)  # no layer norm there

    def forward_loop(self, mask):
        loops = self.compiled_loops()
        if loops is None:
            return super().forward_loop(mask)
        small = loops.uses_small_mm
        loops.gru_before_forward(self.gates, self.state_seqs[0], self.rh_hmn,
                                 self.fw_rz.b_for(small), self.fw_n.b_for(small),
                                 None if mask is None else mask.contiguous(),
                                 self.fw_rz.packed, self.fw_n.packed)

    def backward_loop(self, grads, afters, mask):
        loops = self.compiled_loops(backward=True)
        if loops is None:
            return super().backward_loop(grads, afters, mask)
        return loops.gru_before_backward(self.gates, self.rh_hmn, self.w_rz, self.w_n, grads[0],
                                         afters[0], None if mask is None else mask.contiguous(),
                                         self.bw_rz.packed, self.bw_n.packed)

    def backward_step(self, t, grads, base):
        (dh,) = grads
        dn = self.n_steps[t].mul_(dh)
        drh = self.bw_n.addmm(None, self.norm_n.backward(t, dn) if self.ln else dn)
        self.dr_steps[t].mul_(drh)
        self.dz_steps[t].mul_(dh)
        drz = self.drz_steps[t]
        da_rz = self.norm_rz.backward(t, drz) if self.ln else drz
        direct = self._direct(t, dh, base).addcmul_(drh, self.r_steps[t])
        return [self.bw_rz.addmm(direct, da_rz)]

    def input_grad(self):
        self.gates[..., :2 * self.H] = self.rh_hmn  # after the weight gradients: r was needed
        return self.gates

    def weight_grads(self):
        H, T = self.H, self.T
        h_prev, r = self.state_seqs[0][:-1], self.gates[..., :H]
        if self.ln:
            da_rz, da_n = self.norm_rz.input_grads(), self.norm_n.input_grads()
        else:
            da_rz, da_n = self.rh_hmn, self.gates[..., 2 * H:]
        dw_n = sum(grad_w(da_n[s], r[s] * h_prev[s]) for s in chunks(T))
        dw = torch.cat([grad_w(da_rz, h_prev), dw_n])
        dg = None
        if self.ln:
            dg = torch.cat([self.norm_rz.dweight, self.norm_n.dweight])
        return dw, dg


class MinimalGRUKernel(Kernel):
    r"""The notes' minimal GRU; ``xp`` holds every bias; weights: (weight_hh,).

    Forward, per step::

        u, n = sigma, tanh of (xp_t + W_hh a<t-1>)        a<t> = u * n + (1 - u) * a<t-1>

    Backward, per step from ``dL/da<t>``::

        dL/du_pre = dL/da<t> * u(1-u)(n - a<t-1>)    dL/dn_pre = dL/da<t> * u(1 - n^2)
        dL/da<t-1> = dL/da<t> * (1 - u) + W_hh^T dL/dgates

    Kept per step: u and n. Before the backward loop the gates become their two factors
    (u is kept aside); each step multiplies them by dL/da<t> in place. At small batches the
    compiled loops run both loops (``minimal_gru_forward``, ``minimal_gru_backward``).
    """

    consumed = ("gates",)
    fused = True

    def __init__(self, xp, weights, state_seqs):
        super().__init__(xp, weights, state_seqs)
        (self.w_hh,) = weights
        self.fw = self.step_weight(self.w_hh, forward=True)  # its b: W_hh^T (H, 2H)
        self.H = xp.shape[2] // 2
        self.gates = xp  # u, n after their nonlinearities, written over xp
        self._views()

    def _views(self):
        H, g = self.H, self.gates
        self.gate_steps, self.u_steps, self.n_steps = (step_views(g), step_views(g, 0, H),
                                                       step_views(g, H))
        self.gate_blocks = Steps(lambda: tuple((u, n, None)
                                               for u, n in zip(self.u_steps, self.n_steps)))

    def start_backward(self):
        H = self.H
        u, n = self.gates.split(H, -1)
        fu = torch.sub(n, self.state_seqs[0][:-1]).mul_(u)
        fu.addcmul_(fu, u, value=-1)  # u (1 - u)(n - a<t-1>)
        torch.addcmul(torch.ones_like(n[0]), n, n, value=-1, out=n).mul_(u)
        self.u = u.clone()
        u.copy_(fu)
        self.dgates = self.gates
        self.u_kept_steps = steps(self.u)
        self.factor_steps = steps(self.gates.unflatten(-1, (2, H)))  # (B, 2, H) per step
        self.dgate_steps = step_views(self.gates)
        self.bw = self.step_weight(self.w_hh, forward=False)

    def forward_step(self, t):
        (h_steps,) = self.state_steps
        h = h_steps[t]
        pre, H = self.fw.addmm(self.xp_steps[t], h, out=self.gate_steps[t], copy=False), self.H
        n = sigmoid_with_tanh(pre, self.gate_steps[t], self.gate_blocks[t], H, 2 * H)
        u = self.u_steps[t]
        torch.lerp(h, n, u, out=h_steps[t + 1])

    def forward_loop(self, mask):
        loops = self.compiled_loops()
        if loops is None:
            return super().forward_loop(mask)
        loops.minimal_gru_forward(self.gates, self.state_seqs[0],
                                  self.fw.b_for(loops.uses_small_mm),
                                  None if mask is None else mask.contiguous(), self.fw.packed)

    def backward_loop(self, grads, afters, mask):
        loops = self.compiled_loops(backward=True)
        if loops is None:
            return super().backward_loop(grads, afters, mask)
        return loops.minimal_gru_backward(self.gates, self.u, self.w_hh, grads[0], afters[0],
                                          None if mask is None else mask.contiguous(),
                                          self.bw.packed)

    def backward_step(self, t, grads, base):
        (dh,) = grads
        direct = torch.addcmul(dh, dh, self.u_kept_steps[t], value=-1)
        if base is not None:
            direct += base
        self.factor_steps[t].mul_(dh.unsqueeze(1))
        return [self.bw.addmm(direct, self.dgate_steps[t])]

    def input_grad(self):
        return self.dgates

    def weight_grads(self):
        return (grad_w(self.dgates, self.state_seqs[0][:-1]),)


@register_kernel(GRUCell)
def _plan_gru(cell: GRUCell, p) -> Plan:
    g = p.get
    if cell.reset == "after":
        return Plan(GRUAfterKernel, g("bias_ih"), g("ln_ih_weight"),
                    (p["weight_hh"], g("bias_hh"), g("ln_hh_weight")))
    return Plan(GRUBeforeKernel, bias_sum(g("bias_ih"), g("bias_hh")), g("ln_ih_weight"),
                (p["weight_hh"], g("ln_hh_weight")))


@register_kernel(MinimalGRUCell)
def _plan_gru_simple(cell: MinimalGRUCell, p) -> Plan:
    return Plan(MinimalGRUKernel, bias_sum(p.get("bias_ih"), p.get("bias_hh")), None,
                (p["weight_hh"],))
