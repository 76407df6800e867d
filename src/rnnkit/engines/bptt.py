"""The ``bptt`` engine: backpropagation through time written by hand.

Structure (DESIGN.md, "the winning structure"):

1. the input projections of all T steps in one GEMM, outside the recurrence, by autograd
   (:func:`input_projection`), with every bias that can be folded into it;
2. a tight forward loop that keeps only what the backward needs (a kernel's ``forward_step``);
3. a hand-written backward-through-time loop (``backward_step``), storing the gradient of each
   step's recurrent pre-activation. Everything of a step's gradient that does not depend on
   the incoming gradient is computed for all T steps at once before the loop
   (``start_backward``), so a step costs a handful of calls;
4. the recurrent weight gradients as one GEMM over all steps at the end
   (``dW_hh = sum_t dA_t^T h_{t-1}``).

The kernels, one file per cell family with their equations, are in
:mod:`rnnkit.engines.kernels`, registered by exact cell type; this module is the driver that
runs any of them as one ``torch.autograd.Function``: padding, retain_graph, recording the
state gradients. The loops of the LSTM and the reset-after GRU also exist in C++
(``engines/csrc/recurrent_loops.cpp``, :mod:`rnnkit.engines.compiled`).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

from rnnkit import gemm
from rnnkit.cells.base import LN_EPS, Params, RecurrentCell
from rnnkit.engines.kernels import plan_for
from rnnkit.engines.kernels.base import materialize
from rnnkit.engines.state_grads import current_recorder


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
    """Runs a kernel forward and backward through time, handling padding."""

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
        state_seqs = [xp.new_empty((T + 1, *s.shape)) for s in states0]
        for buf, s in zip(state_seqs, states0):
            buf[0] = s
        kernel = kernel_cls(xp, weights, state_seqs)
        kernel.forward_loop(mask)
        kernel.end_forward()
        ctx.kernel = kernel
        ctx.mask = mask
        recorder = current_recorder()
        ctx.record = None if recorder is None else (recorder, recorder.open())
        return tuple(buf[1:] for buf in state_seqs)

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
        grads = [torch.zeros_like(buf[0]) if g is None else g[T - 1]
                 for buf, g in zip(kernel.state_seqs, grad_seqs)]
        record = ctx.record
        if record is not None:
            seen = [buf.new_zeros(buf.shape[0] - 1, *buf.shape[1:]) for buf in kernel.state_seqs]
        # the common case (nothing recorded) in the kernel's tight loop, where it has one
        done = None if record is not None else kernel.backward_loop(grads, grad_seqs, mask)
        if done is not None:
            grads = done
        else:
            materialize(kernel)
            step = kernel.backward_step
            steps = [None if g is None else g.unbind(0) for g in grad_seqs]
            masks = None if mask is None else mask.unbind(0)
            for t in range(T - 1, -1, -1):
                if record is not None:
                    for buf, g in zip(seen, grads):
                        buf[t] = g
                after = [None if g is None or t == 0 else g[t - 1] for g in steps]
                if masks is None:
                    grads = step(t, grads, after[0])
                else:  # a padded row's gradient passes the step unchanged
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


def input_projection(x: Tensor, w: Tensor, bias: Tensor | None, ln_weight: Tensor | None
                     ) -> Tensor:
    """The input projection of all steps in one GEMM (:func:`rnnkit.gemm.linear`):
    ``[LN](x W^T) + bias``, (T, B, G)."""
    if ln_weight is None:
        return gemm.linear(x, w, bias)
    xp = F.layer_norm(gemm.linear(x, w), w.shape[:1], ln_weight, None, LN_EPS)
    return xp if bias is None else xp + bias


def bptt_supports(cell: RecurrentCell) -> bool:
    """Whether a ``bptt`` kernel is registered for ``type(cell)`` and takes its options."""
    try:
        plan_for(cell, cell.params())
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
    """Run ``cell`` over ``x`` (T, B, I) with its registered hand-written BPTT kernel.

    Same contract as :func:`rnnkit.engines.reference.run_reference`: returns one (T, B, n)
    tensor per state tensor, the state after every step (carried through padding); ``mask``
    (T, B, 1) bool or None.
    """
    kernel, bias, ln_weight, weights = plan_for(cell, params)
    if kernel.owns_projection:
        return _Recurrence.apply(kernel, mask, x, *state, *weights)
    # a fresh tensor that nothing else holds (the kernel writes the gates over it) and whose
    # autograd producers keep no reference to it (linear, layer norm and add save inputs only)
    xp = input_projection(x, params["weight_ih"], bias, ln_weight)
    return _Recurrence.apply(kernel, mask, xp, *state, *weights)
