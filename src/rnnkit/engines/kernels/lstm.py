"""``bptt`` kernels of the LSTM family: the LSTM (plain and layer-normalised) and the
peephole LSTM (see :mod:`rnnkit.cells.lstm` for the cells' equations)."""

from __future__ import annotations

import torch

from rnnkit.cells.base import LN_EPS
from rnnkit.cells.lstm import LSTMCell, PeepholeLSTMCell
from rnnkit.engines.kernels.base import (
    Kernel,
    Plan,
    StepNorms,
    Steps,
    bias_sum,
    chunks,
    dot_tb,
    grad_w,
    register_inference,
    register_kernel,
    sigmoid_with_tanh,
    step_views,
    steps,
    tanh_into,
)


class LSTMKernel(Kernel):
    r"""The LSTM, optionally layer-normalised; weights: (weight_hh, ln_hh_weight, ln_c_weight,
    ln_c_bias), the last three ``None`` without layer norm.

    Forward, per step (``xp_t = [LN](W_ih x<t>) + b``, computed before the loop)::

        gates = xp_t + [LN](W_hh a<t-1>)                i, f, g, o = sigma, sigma, tanh, sigma
        c<t> = f * c<t-1> + i * g                        tanh_c = tanh([LN](c<t>))
        a<t> = o * tanh_c

    Backward, per step from ``dL/da<t>`` and ``dL/dc<t>`` (from step t+1)::

        dL/dc<t>  += dL/da<t> * o (1 - tanh_c^2)            [through LN(c) with layer norm]
        dL/di = dL/dc<t> * g i(1-i)      dL/df = dL/dc<t> * c<t-1> f(1-f)
        dL/dg = dL/dc<t> * i (1-g^2)     dL/do = dL/da<t> * tanh_c o(1-o)
        dL/da<t-1> = W_hh^T dL/dgates    [through LN(W_hh a<t-1>)]
        dL/dc<t-1> = dL/dc<t> * f

    and at the end ``dL/dW_hh = sum_t dL/dgates_t^T a<t-1>`` in one GEMM.

    Kept per step: the gates after their nonlinearities (``gates``, i, f, g, o, written over
    xp), and with layer norm ``tanh_c`` (without, ``tanh(c)`` is recomputed from the cells, a
    few steps at a time, which keeps the peak memory of the backward pass low). Before the
    backward loop the gates become their factors ``g i(1-i)``, ``c<t-1> f(1-f)``,
    ``i (1-g^2)`` (each times dL/dc<t>) and ``tanh_c o(1-o)`` (times dL/da<t>); ``dh_to_dc`` =
    ``o (1 - tanh_c^2)``, the factor by which dL/da<t> reaches the cell, is computed and f is
    kept aside (``forget``).
    """

    num_states = 2
    consumed = ("gates", "tanh_c")
    fused = True
    #: the peephole weights (3, H) (:class:`PeepholeKernel`); the compiled loops take them
    peephole = None

    def __init__(self, xp, weights, state_seqs):
        super().__init__(xp, weights, state_seqs)
        self.w_hh, self.g_hh, self.g_c, self.b_c = weights
        self.ln = self.g_hh is not None
        self.fw = self.step_weight(self.w_hh, forward=True)  # its b: W_hh^T (H, 4H)
        T, B, G = xp.shape
        self.H = G // 4
        self.gates = xp  # (T, B, 4H) i, f, g, o after their nonlinearities, over xp
        # tanh(LN(c) * g_c + b_c) of every step; without layer norm, one step's tanh(c)
        self.tanh_c = xp.new_empty(T if self.ln else 1, B, self.H)
        self._views()
        if self.ln:
            self.norm_h = StepNorms(self.g_hh, buf=torch.empty_like(xp))  # of W_hh a<t-1>
            self.norm_c = StepNorms(self.g_c, self.b_c)  # of c<t>

    def _views(self):
        H, g = self.H, self.gates
        self.gate_steps, self.if_steps = step_views(g), step_views(g, 0, 2 * H)
        self.i_steps, self.f_steps = step_views(g, 0, H), step_views(g, H, 2 * H)
        self.g_steps, self.o_steps = step_views(g, 2 * H, 3 * H), step_views(g, 3 * H)
        self.gate_blocks = Steps(lambda: tuple(zip(self.if_steps, self.g_steps, self.o_steps)))
        self.tanh_c_steps = (steps(self.tanh_c) if self.ln
                             else (self.tanh_c[0],) * self.T)

    def start_backward(self):
        H, T = self.H, self.T
        i, f, g, o = self.gates.split(H, -1)
        c_prev, c = self.state_seqs[1][:-1], self.state_seqs[1][1:]
        # dh_to_dc = o (1 - tanh_c^2) and o's factor tanh_c o(1-o), an eighth of the steps at a
        # time: with layer norm written over the kept tanh_c; without, tanh(c) is recomputed
        dh_to_dc = self.tanh_c if self.ln else torch.empty_like(c_prev)
        for part in chunks(T):
            out, o_s = dh_to_dc[part], o[part]
            tanh_c = out.clone() if self.ln else torch.tanh(c[part])
            torch.addcmul(o_s, o_s, torch.mul(tanh_c, tanh_c, out=out), value=-1, out=out)
            torch.addcmul(o_s, o_s, o_s, value=-1, out=o_s).mul_(tanh_c)
        self.tanh_c = self.tanh_c_steps = None
        tmp = torch.addcmul(torch.ones_like(g[0]), g, g, value=-1).mul_(i)  # i (1 - g^2)
        torch.addcmul(i, i, i, value=-1, out=i).mul_(g)  # g i(1-i)
        g.copy_(tmp)
        forget = tmp.copy_(f)
        torch.addcmul(f, f, f, value=-1, out=f).mul_(c_prev)  # c<t-1> f(1-f)
        self.dgates = d = self.gates  # dL/dgates, once the loop is done
        self.dh_to_dc, self.forget = dh_to_dc, forget
        self.dh_to_dc_steps, self.forget_steps = steps(dh_to_dc), steps(forget)
        self.dgate_steps, self.do_steps = step_views(d), step_views(d, 3 * H)
        self.difg_steps = steps(d[..., :3 * H].unflatten(-1, (3, H)))  # (B, 3, H) per step
        self.bw = self.step_weight(self.w_hh, forward=False)
        if self.ln:
            self.norm_h.start_backward(self.state_steps[0], self.fw, self.forward_loops)
            self.norm_c.start_backward()

    def forward_step(self, t):
        h_steps, c_steps = self.state_steps
        H = self.H
        if self.ln:
            a = self.fw.addmm(None, h_steps[t], out=self.norm_h.steps[t])
            pre = torch.add(self.xp_steps[t], self.norm_h.forward(a), out=self.gate_steps[t])
        else:  # the pre-activations, in the gates' slot or (oneDNN) in a tensor of their own
            pre = self.fw.addmm(self.xp_steps[t], h_steps[t], out=self.gate_steps[t],
                                copy=False)
        g = sigmoid_with_tanh(pre, self.gate_steps[t], self.gate_blocks[t], 2 * H, 3 * H)
        c = torch.mul(self.f_steps[t], c_steps[t], out=c_steps[t + 1]).addcmul_(
            self.i_steps[t], g)
        tanh_c = tanh_into(self.norm_c.forward(c) if self.ln else c, self.tanh_c_steps[t])
        torch.mul(self.o_steps[t], tanh_c, out=h_steps[t + 1])

    def forward_loop(self, mask):
        loops = self.compiled_loops()
        if loops is None:
            return super().forward_loop(mask)
        ln = self.ln
        mask = None if mask is None else mask.contiguous()
        self.forward_loops = loops
        wt = self.fw.b_for(loops.uses_small_mm)
        self.stats = loops.lstm_forward(self.gates, *self.state_seqs, wt, self.tanh_c,
                                        mask, self.norm_h.buf if ln else None, self.g_hh,
                                        self.g_c, self.b_c, LN_EPS, self.peephole,
                                        self.fw.packed)
        if ln:  # for a backward pass in Python
            self.norm_h.adopt(self.norm_h.steps, *self.stats[:2])
            self.norm_c.adopt(self.state_steps[1][1:], *self.stats[2:])

    def backward_loop(self, grads, afters, mask):
        loops = self.compiled_loops(backward=True)
        if loops is None or not (self.dh_to_dc.is_contiguous() and self.forget.is_contiguous()):
            return super().backward_loop(grads, afters, mask)
        ln = self.ln
        stats = []
        if ln:
            nh, nc = self.norm_h, self.norm_c
            stats = self.stats or [*nh.moments(), *nc.moments()]
        out = loops.lstm_backward(self.dgates, self.dh_to_dc, self.forget, self.w_hh, *grads,
                                  *afters, mask, self.state_seqs[1], nh.buf if ln else None,
                                  self.g_hh, self.g_c, self.b_c, stats, self.bw.packed)
        if ln:  # the sums StepNorms would have made of its per-step lists
            nh.dweights, nc.dweights, nc.dbiases = [out[2]], [out[3]], out[4:]
        return out[:2]

    def backward_step(self, t, grads, base):
        dh, dc = grads
        if self.ln:
            dc_t = dc + self.norm_c.backward(t, dh * self.dh_to_dc_steps[t])
        else:
            dc_t = torch.addcmul(dc, dh, self.dh_to_dc_steps[t])
        self.difg_steps[t].mul_(dc_t.unsqueeze(1))
        self.do_steps[t].mul_(dh)
        dgates = self.dgate_steps[t]
        if self.ln:
            dgates = self.norm_h.backward(t, dgates)
        return [self.bw.addmm(base, dgates), dc_t * self.forget_steps[t]]

    def end_backward(self):
        self.dh_to_dc = self.dh_to_dc_steps = self.forget = self.forget_steps = self.bw = None

    def input_grad(self):
        return self.dgates

    def weight_grads(self):
        h_prev = self.state_seqs[0][:-1]
        if not self.ln:
            return (grad_w(self.dgates, h_prev), None, None, None)
        return (grad_w(self.norm_h.input_grads(), h_prev), self.norm_h.dweight,
                self.norm_c.dweight, self.norm_c.dbias)


class PeepholeKernel(LSTMKernel):
    r"""The peephole LSTM; weights: (weight_hh, peephole). Buffers as :class:`LSTMKernel`.

    Forward: the LSTM's, with ``i, f = sigma(gates_if + p_if * c<t-1>)`` and
    ``o = sigma(gates_o + p_o * c<t>)``. Backward: the LSTM's step, with the peepholes' terms
    folded into its per-step factors before the loop::

        dh_to_dc += p_o tanh_c o(1-o)                       (c<t> reaches L through o too)
        forget   += p_i g i(1-i) + p_f c<t-1> f(1-f)        (c<t-1> through i and f too)

    and ``dL/dp_i = sum_t dL/di_t c<t-1>``, ``dL/dp_f = sum_t dL/df_t c<t-1>``,
    ``dL/dp_o = sum_t dL/do_t c<t>`` at the end. At small batches the compiled loops run both
    (their LSTM forward step takes the peepholes; the backward step is the LSTM's).
    """

    def __init__(self, xp, weights, state_seqs):
        w_hh, peephole = weights
        self.peephole = peephole.contiguous()
        super().__init__(xp, (w_hh, None, None, None), state_seqs)
        self.p_if, self.p_o = self.peephole[:2], self.peephole[2]  # (2, H) for i, f; (H,) o
        self.c_rows = steps(state_seqs[1].unsqueeze(2))  # c before each step, (B, 1, H)

    def _views(self):
        super()._views()
        self.if_pair_steps = steps(self.gates[..., :2 * self.H].unflatten(-1, (2, self.H)))

    def start_backward(self):
        super().start_backward()
        H, p, d = self.H, self.peephole, self.dgates
        self.forget.addcmul_(d[..., :H], p[0]).addcmul_(d[..., H:2 * H], p[1])
        self.dh_to_dc.addcmul_(d[..., 3 * H:], self.p_o)

    def forward_step(self, t):
        h_steps, c_steps = self.state_steps
        c_prev = c_steps[t]
        self.fw.addmm(self.xp_steps[t], h_steps[t], out=self.gate_steps[t])
        self.if_pair_steps[t].addcmul_(self.p_if, self.c_rows[t])
        self.if_steps[t].sigmoid_()
        g = tanh_into(self.g_steps[t], self.g_steps[t])
        c = torch.mul(self.f_steps[t], c_prev, out=c_steps[t + 1]).addcmul_(self.i_steps[t], g)
        o = self.o_steps[t].addcmul_(self.p_o, c).sigmoid_()
        tanh_c = tanh_into(c, self.tanh_c_steps[t])
        torch.mul(o, tanh_c, out=h_steps[t + 1])

    def weight_grads(self):
        H = self.H
        c, d = self.state_seqs[1], self.dgates
        dp = torch.stack([dot_tb(d[..., :H], c[:-1]), dot_tb(d[..., H:2 * H], c[:-1]),
                          dot_tb(d[..., 3 * H:], c[1:])])
        return grad_w(d, self.state_seqs[0][:-1]), dp


@register_kernel(LSTMCell)
def _plan_lstm(cell: LSTMCell, p) -> Plan:
    if cell.proj_size:
        raise ValueError("engine='bptt' does not support LSTMCell with proj_size > 0; "
                         "use engine='native' or 'reference'")
    g = p.get
    return Plan(LSTMKernel, bias_sum(g("bias_ih"), g("bias_hh")), g("ln_ih_weight"),
                (p["weight_hh"], g("ln_hh_weight"), g("ln_c_weight"), g("ln_c_bias")))


@register_kernel(PeepholeLSTMCell)
def _plan_peephole(cell: PeepholeLSTMCell, p) -> Plan:
    return Plan(PeepholeKernel, bias_sum(p.get("bias_ih"), p.get("bias_hh")), None,
                (p["weight_hh"], p["peephole"]))


class LSTMInferenceStep:
    """The plain LSTM's inference step on one pre-transposed weight: ``gates = b + [x<t>,
    a<t-1>] W`` with ``W = [W_ih W_hh]^T`` (I + H, 4H) contiguous and ``b = b_ih + b_hh``,
    then the cell's own :meth:`~rnnkit.cells.LSTMCell.activate` and
    :meth:`~rnnkit.cells.LSTMCell.update`. Inputs (B, I) and ``(h, c)`` (B, H) each."""

    def __init__(self, cell: LSTMCell) -> None:
        self.cell = cell
        with torch.no_grad():
            self.w = torch.cat([cell.weight_ih, cell.weight_hh], dim=1).t().contiguous()
            self.b = (cell.bias_ih + cell.bias_hh).contiguous()

    def __call__(self, x_t, state):
        h_prev, c_prev = state
        gates = torch.addmm(self.b, torch.cat([x_t, h_prev], dim=1), self.w)  # (B, 4H)
        return self.cell.update(self.cell.activate(gates), c_prev, {})


@register_inference(LSTMCell)
def _lstm_inference(cell: LSTMCell) -> LSTMInferenceStep | None:
    plain = cell.bias and not cell.layer_norm and not cell.proj_size
    return LSTMInferenceStep(cell) if plain else None
