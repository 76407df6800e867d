"""Gradient flow over time: how much of the loss's gradient reaches each step's state.

For every recurrent layer (and direction) and every step t this measures

- ``total``: ``|| dL / ds_t ||``, the norm of the total derivative of the whole loss L (the
  mean of the per-step losses) with respect to the state after step t, through the recurrence
  and the layers above (the probes of :mod:`rnnkit.diagnostics.trace`);
- ``last``: ``|| dL_T / ds_t ||`` for the loss at the last step alone, L_T: how much a state t
  steps back still influences the last prediction, a curve against the distance ``T - 1 - t``.

Norms are Frobenius norms over the batch and features of the (B, n) gradient; for LSTMs both
the hidden state h and the cell c are measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rnnkit.diagnostics.trace import Trace, trace


@dataclass
class LayerFlow:
    """The gradient flow through one recurrent layer (one direction).

    Attributes:
        name: the layer's module path.
        reverse: True for a backward-in-time layer (steps are in its processing order).
        state_names: ``("h",)`` or ``("h", "c")``.
        total: (S, T) norms of dL/ds_t per state tensor S and processing step t.
        last: (S, T) norms of dL_T/ds_t, the loss at the last step only.
        total_grads: the raw gradients dL/ds_t, one (T, B, n) per state tensor.
    """

    name: str
    reverse: bool
    state_names: tuple[str, ...]
    total: Tensor
    last: Tensor
    total_grads: tuple[Tensor, ...]

    def by_distance(self, state: str = "h") -> Tensor:
        """``|| dL_T / ds_{T-1-k} ||`` for k = 0 .. T-1: the last step's gradient against the
        distance k back from it, (T,)."""
        return self.last[self.state_names.index(state)].flip(0)

    def decay_per_step(self, state: str = "h", skip: int = 1) -> float:
        """Geometric mean ratio of successive ``by_distance`` norms (< 1: vanishing, > 1:
        exploding), ignoring the first ``skip`` distances and zeros."""
        curve = self.by_distance(state)[skip:]
        curve = curve[curve > 0]
        if curve.numel() < 2:
            return float("nan")
        logs = curve.double().log()
        return float(((logs[-1] - logs[0]) / (curve.numel() - 1)).exp())


@dataclass
class GradientFlow:
    """Gradient flow through every recurrent layer of a model; ``loss`` is L's value."""

    layers: list[LayerFlow]
    loss: float

    def layer(self, name: str) -> LayerFlow:
        for flow in self.layers:
            if flow.name == name:
                return flow
        raise KeyError(f"no recurrent layer named {name!r}; have "
                       f"{', '.join(f.name for f in self.layers)}")


def _norms(grads: tuple[Tensor | None, ...], like: tuple[Tensor, ...]) -> Tensor:
    rows = []
    for g, p in zip(grads, like):
        if g is None:
            rows.append(p.new_zeros(p.shape[0]))
        else:
            rows.append(torch.linalg.vector_norm(g.flatten(1), dim=1))
    return torch.stack(rows).detach()


def _probe_grads(tr: Trace, loss: Tensor) -> list[tuple[Tensor | None, ...]]:
    """The gradient of ``loss`` with respect to every probe of ``tr``, grouped by record."""
    probes = tr.probes()
    if not probes:
        raise ValueError("the trace holds no probes: run the model inside "
                         "trace(model, probes=True) with gradients enabled")
    grads = torch.autograd.grad(loss, probes, allow_unused=True)
    out, i = [], 0
    for rec in tr.records:
        n = len(rec.probes)
        if rec.recorded is not None:  # the bptt engine recorded dL/ds_t itself
            record, index = rec.recorded
            seqs = record.runs[index]
            out.append(tuple(torch.zeros_like(s) for s in rec.states) if seqs is None
                       else tuple(seqs))
        else:
            out.append(grads[i:i + n])
        i += n
    return out


def _check_losses(losses: object) -> Tensor:
    if not isinstance(losses, Tensor) or losses.dim() < 1:
        raise ValueError("step_losses must return one loss per step, a tensor (..., T); got "
                         + (f"shape {tuple(losses.shape)}" if isinstance(losses, Tensor)
                            else type(losses).__name__))
    return losses


def gradient_flow(model: nn.Module, step_losses: Callable[[], Tensor], *,
                  mode: str = "reference") -> GradientFlow:
    """Measure the gradient flow of ``model``.

    Args:
        model: any module with rnnkit recurrent layers.
        step_losses: runs ``model`` once and returns the loss at every step, a tensor
            (B, T) or (T,) with time last (for example the unreduced cross-entropy of a
            language model). Steps without a loss can hold 0. L is ``losses.mean()``, L_T is
            ``losses[..., -1].mean()``.
        mode: ``"reference"`` (``cell.step`` loop) or ``"engine"`` (each layer's own engine:
            ``bptt`` records dL/ds_t in its backward pass, others run one step at a time);
            both give the same numbers, up to rounding.

    ``step_losses`` is called twice (once per loss, with the same random state, since the
    hand-written engines free their buffers after one backward pass). Nothing is accumulated
    into the parameters' ``.grad``.
    """
    rng = torch.get_rng_state()
    with trace(model, probes=True, mode=mode) as tr:
        losses = _check_losses(step_losses())
    total_loss = losses.mean()
    g_total = _probe_grads(tr, total_loss)
    torch.set_rng_state(rng)
    with trace(model, probes=True, mode=mode) as tr_last:
        losses_last = _check_losses(step_losses())
    g_last = _probe_grads(tr_last, losses_last[..., -1].mean())
    layers = []
    for rec, tot, last in zip(tr.records, g_total, g_last):
        layers.append(LayerFlow(
            name=rec.name, reverse=rec.reverse, state_names=rec.state_names,
            total=_norms(tot, rec.states), last=_norms(last, rec.states),
            total_grads=tuple(torch.zeros_like(s) if g is None else g.detach()
                              for g, s in zip(tot, rec.states))))
    return GradientFlow(layers, float(total_loss.detach()))
