"""Diagnostics of recurrent networks: gradient flow over time, recurrent Jacobians, gate
saturation and training logs, on any rnnkit model and engine.

    from rnnkit.diagnostics import gradient_flow, trace, jacobian_stats, gate_stats

    flow = gradient_flow(model, lambda: per_step_losses(model, batch))   # (B, T) losses
    flow.layers[0].total        # (S, T) || dL/ds_t || for every step t
    flow.layers[0].by_distance()  # || dL_T/ds_{T-1-k} || against the distance k

    with trace(model, probes=False) as tr:
        model(x)
    [jacobian_stats(r) for r in tr.records]; [gate_stats(r) for r in tr.records]

    diagnose_model(model, losses) -> Diagnosis; write_diagnosis(out, {"name": d}) -> REPORT.md

The claims experiments live in ``rnnkit.diagnostics.claims`` (``rnnkit claims``).
"""

from rnnkit.diagnostics.gates import GateStats, cell_gates, gate_stats, gate_values
from rnnkit.diagnostics.gradient_flow import GradientFlow, LayerFlow, gradient_flow
from rnnkit.diagnostics.jacobians import JacobianStats, jacobian_stats, step_jacobians
from rnnkit.diagnostics.report import Diagnosis, diagnose_model, write_diagnosis
from rnnkit.diagnostics.task_model import TaskModel, step_losses, train_on
from rnnkit.diagnostics.trace import LayerRecord, Trace, recurrent_layers, trace
from rnnkit.diagnostics.training_log import TrainingLog, read_training_log

__all__ = [
    "Diagnosis",
    "GateStats",
    "GradientFlow",
    "JacobianStats",
    "LayerFlow",
    "LayerRecord",
    "TaskModel",
    "Trace",
    "TrainingLog",
    "cell_gates",
    "diagnose_model",
    "gate_stats",
    "gate_values",
    "gradient_flow",
    "jacobian_stats",
    "read_training_log",
    "recurrent_layers",
    "step_jacobians",
    "step_losses",
    "trace",
    "train_on",
    "write_diagnosis",
]
