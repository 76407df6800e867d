"""A diagnostics report of one or more models: gradient flow, Jacobians, gates, training logs.

:func:`diagnose` takes models by label, each with a function that runs it on a fixed batch
and returns the per-step losses, and writes PNG plots and ``REPORT.md`` into a directory.
``rnnkit diagnose`` is its command line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from rnnkit.diagnostics.gates import GateStats, gate_stats
from rnnkit.diagnostics.gradient_flow import GradientFlow, gradient_flow
from rnnkit.diagnostics.jacobians import JacobianStats, jacobian_stats
from rnnkit.diagnostics.markdown import fmt, table
from rnnkit.diagnostics.plots import (
    plot_gates,
    plot_gradient_flow,
    plot_jacobians,
    plot_training_logs,
)
from rnnkit.diagnostics.trace import trace
from rnnkit.diagnostics.training_log import TrainingLog


@dataclass
class Diagnosis:
    """Everything measured on one model."""

    flow: GradientFlow
    jacobians: dict[str, JacobianStats]
    gates: dict[str, GateStats]


def diagnose_model(model: nn.Module, step_losses: Callable[[], Tensor], *,
                   mode: str = "reference", max_svd: int = 64) -> Diagnosis:
    """Gradient flow, Jacobian norms and gate saturation of ``model`` on one batch.

    ``step_losses`` runs the model and returns its per-step losses (B, T). The model is put
    in eval mode (no dropout) for the measurement and restored after."""
    was = model.training
    model.eval()
    try:
        flow = gradient_flow(model, step_losses, mode=mode)
        with torch.no_grad(), trace(model, probes=False) as tr:
            step_losses()
        jac = {r.name: jacobian_stats(r, max_svd=max_svd) for r in tr.records}
        gates = {r.name: gate_stats(r) for r in tr.records}
    finally:
        model.train(was)
    return Diagnosis(flow, jac, gates)


def _label(model_label: str, layer: str, many: bool) -> str:
    return f"{model_label} {layer}" if many else model_label


def write_diagnosis(out: str | Path, results: Mapping[str, Diagnosis],
                    logs: Mapping[str, TrainingLog] | None = None, *,
                    title: str = "rnnkit diagnose", notes: str = "") -> Path:
    """Write the plots and ``out/REPORT.md`` for ``results`` (label -> Diagnosis)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    if notes:
        lines += [notes, ""]
    flows = {label: d.flow for label, d in results.items()}
    if results:
        plot_gradient_flow(out / "gradient_distance.png", flows, which="last")
        plot_gradient_flow(out / "gradient_flow.png", flows, which="total")
        many = any(len(d.jacobians) > 1 for d in results.values())
        jac = {_label(m, n, many): s for m, d in results.items() for n, s in d.jacobians.items()}
        gates = {_label(m, n, many): s for m, d in results.items() for n, s in d.gates.items()}
        plot_jacobians(out / "jacobians.png", jac)
        if any(s.saturated for s in gates.values()):
            plot_gates(out / "gates.png", gates)
        rows = []
        for label, d in results.items():
            for layer in d.flow.layers:
                curve = layer.by_distance()
                T = curve.numel()
                ratio = float(curve[-1] / curve[0]) if float(curve[0]) > 0 else math.nan
                js = d.jacobians.get(layer.name)
                rows.append([label, layer.name + (" (reverse)" if layer.reverse else ""), T,
                             float(layer.total[0].mean()), ratio, layer.decay_per_step(),
                             float(js.mean_spectral().mean()) if js else math.nan])
        lines += ["## Gradient flow over time", "",
                  "‖dL/dh_t‖: the total derivative of the loss (mean over steps) with respect "
                  "to each step's hidden state, through the recurrence. ‖dL_T/dh_(T-1-k)‖: "
                  "the loss at the last step only, against the distance k; the ratio compares "
                  "the farthest state with the last one.", "",
                  table(["model", "layer", "T", "mean ‖dL/dh_t‖", "‖dL_T/dh_0‖ / ‖dL_T/dh_(T-1)‖",
                         "decay per step", "mean ‖ds_t/ds_(t-1)‖₂"], rows), "",
                  "![gradient against distance](gradient_distance.png)", "",
                  "![gradient flow](gradient_flow.png)", "",
                  "## Recurrent Jacobians", "",
                  "Spectral norm of ds_t/ds_(t-1) per step (s = h, or [h, c] for LSTMs), "
                  "averaged over the batch: below 1 gradients shrink, above 1 they grow.", "",
                  "![Jacobian norms](jacobians.png)", ""]
        gate_rows = [[label, g, s.saturated[g], s.low[g], s.high[g], s.mean[g]]
                     for label, s in gates.items() for g in s.saturated]
        if gate_rows:
            lines += ["## Gate saturation", "",
                      "Share of gate values below 0.05 or above 0.95 (tanh activations: "
                      "|value| > 0.95).", "",
                      table(["layer", "gate", "saturated", "near 0 (-1)", "near 1", "mean"],
                            gate_rows), "", "![gates](gates.png)", ""]
    if logs:
        plot_training_logs(out / "training.png", logs)
        rows = []
        for label, log in logs.items():
            s = log.summary()
            spikes = s["loss_spikes"]
            rows.append([label, s["steps"], s["first_loss"], s["last_loss"],
                         s["median_grad_norm"], s["max_grad_norm"], s["clip_events"],
                         s["clip_fraction"], ", ".join(map(str, spikes[:10])) or "none",
                         ", ".join(map(str, s["nonfinite_steps"][:5])) or "none"])
        lines += ["## Training log", "",
                  "From the run's JSON-lines log (logged steps only): gradient norm before "
                  "clipping, clipping events, loss spikes (a loss above twice the median of "
                  "the previous 20 logged losses).", "",
                  table(["run", "logged steps", "first loss", "last loss", "median grad norm",
                         "max grad norm", "clipped", "clipped share", "loss spikes at",
                         "non-finite at"], rows), "", "![training](training.png)", ""]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


__all__ = ["Diagnosis", "diagnose_model", "fmt", "write_diagnosis"]
