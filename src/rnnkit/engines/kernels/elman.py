"""``bptt`` kernels of the Elman RNN, tanh and relu (see :mod:`rnnkit.cells.elman`)."""

from __future__ import annotations

import torch

from rnnkit import gemm
from rnnkit.cells.elman import ElmanCell
from rnnkit.engines.kernels.base import (
    Kernel,
    Plan,
    bias_sum,
    chunk_size,
    register_kernel,
    tanh_into,
)


class ElmanKernel(Kernel):
    r"""The tanh Elman RNN; weights: (weight_hh, weight_ih, bias or None).

    Forward, per step: ``a<t> = tanh(W_ih x<t> + b + W_hh a<t-1>)``. Backward, per step from
    ``dL/da<t>``::

        dL/dpre_t = dL/da<t> * (1 - a<t>^2)            (relu: * [a<t> > 0])
        dL/da<t-1> = W_hh^T dL/dpre_t

    and, a chunk of steps at a time, ``dL/dx<t> = W_ih^T dL/dpre_t``,
    ``dL/dW_ih += dL/dpre_t^T x<t>``, ``dL/dW_hh += dL/dpre_t^T a<t-1>``, ``dL/db += dL/dpre_t``.

    This kernel makes its own input projection (``owns_projection``), and so its backward
    pass can turn dL/da into dL/dx, dL/dW_ih and dL/db an eighth of the steps at a time: the
    pre-activations' gradient is never held whole, and the layer's peak memory is its outputs
    and dL/dx.
    """

    relu = False
    owns_projection = True

    def __init__(self, x, weights, state_seqs):
        self.w_hh, self.w_ih, self.b = weights
        self.x = x
        super().__init__(gemm.linear(x, self.w_ih, self.b), weights, state_seqs)
        self.fw = self.step_weight(self.w_hh, forward=True)  # its b: W_hh^T (H, H)

    def start_backward(self):
        self.chunk = chunk_size(self.T)
        self.dpre = torch.empty_like(self.state_seqs[0][1:1 + self.chunk])  # one chunk of steps
        self.ones = torch.ones_like(self.dpre[0])
        self.dx = (torch.empty(self.x.shape, dtype=self.x.dtype, device=self.x.device)
                   if self.needs_input_grad else None)
        self.dw_hh, self.dw_ih = torch.zeros_like(self.w_hh), torch.zeros_like(self.w_ih)
        self.db = None if self.b is None else torch.zeros_like(self.b)
        self.bw = self.step_weight(self.w_hh, forward=False)

    def forward_step(self, t):
        h_steps = self.state_steps[0]
        a = self.fw.addmm(self.xp_steps[t], h_steps[t], out=h_steps[t + 1])
        if self.relu:
            a.relu_()
        else:
            tanh_into(a, a)

    def backward_step(self, t, grads, base):
        (dh,) = grads
        lo = t - t % self.chunk
        if t == min(lo + self.chunk, self.T) - 1:  # the chunk's first step, going backward
            h, d = self.state_seqs[0][lo + 1:t + 2], self.dpre[:t + 1 - lo]
            if self.relu:  # 1 where h > 0: the derivative of relu
                torch.sign(h, out=d)
            else:
                torch.addcmul(self.ones, h, h, value=-1, out=d)
            self.dpre_steps = d.unbind(0)
        out = self.bw.addmm(base, self.dpre_steps[t - lo].mul_(dh))
        if t == lo:
            self._emit(lo, lo + len(self.dpre_steps))
        return [out]

    def _emit(self, lo: int, hi: int) -> None:
        """The gradients that steps lo..hi-1 contribute beyond the recurrence."""
        dpre = self.dpre[:hi - lo].reshape(-1, self.w_hh.shape[0])
        x = self.x[lo:hi].reshape(-1, self.x.shape[-1])
        if self.dx is not None:
            gemm.mm(dpre, self.w_ih, kind="dgrad", out=self.dx[lo:hi].view(-1, self.x.shape[-1]))
        gemm.mm(dpre.t(), x, self.dw_ih, out=self.dw_ih)
        gemm.mm(dpre.t(), self.state_seqs[0][lo:hi].reshape(-1, self.w_hh.shape[1]),
                self.dw_hh, out=self.dw_hh)
        if self.db is not None:
            self.db += dpre.sum(0)

    def end_backward(self):
        self.dpre = self.dpre_steps = self.bw = None

    def input_grad(self):
        return self.dx

    def weight_grads(self):
        return self.dw_hh, self.dw_ih, self.db


class ReluKernel(ElmanKernel):
    """The relu Elman RNN: :class:`ElmanKernel` with relu and its derivative."""

    relu = True


@register_kernel(ElmanCell)
def _plan_elman(cell: ElmanCell, p) -> Plan:
    kernel = ReluKernel if cell.nonlinearity == "relu" else ElmanKernel
    return Plan(kernel, None, None,
                (p["weight_hh"], p["weight_ih"], bias_sum(p.get("bias_ih"), p.get("bias_hh"))))
