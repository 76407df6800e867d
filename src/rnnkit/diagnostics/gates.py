"""Gate statistics: how often each gate of each layer is saturated (near 0 or near 1).

The gates are recomputed from the cell's parameters, the input and the previous state of
every step of a traced run (:func:`rnnkit.diagnostics.trace.trace`), following each cell's
equations (``rnnkit.cells``). Names, in the lecture notes' terms:

- LSTM, peephole LSTM: ``input`` (Gamma_u), ``forget`` (Gamma_f), ``output`` (Gamma_o) and the
  candidate ``cell`` (c~, a tanh: saturated when ``|c~| > 1 - eps``);
- GRU: ``reset`` (Gamma_r), ``update`` (torch's z, which *keeps* the old state; the notes'
  Gamma_u = 1 - z) and the candidate;
- minimal GRU: ``update`` (Gamma_u) and the candidate;
- vanilla RNN: no gates; ``hidden`` is its tanh (saturated when ``|h| > 1 - eps``).

A sigmoid gate counts as saturated when it is below ``eps`` or above ``1 - eps``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rnnkit.cells.base import Params, RecurrentCell, from_tuple
from rnnkit.diagnostics.trace import LayerRecord


def cell_gates(cell: RecurrentCell, x_t: Tensor, state: tuple[Tensor, ...],
               params: Params | None = None) -> dict[str, Tensor]:
    """The saturating gate activations of one step, computed by the cell's own
    :meth:`~rnnkit.cells.RecurrentCell.gates`: ``x_t`` (B, I), ``state`` a tuple of (B, n).

    Returns a dict gate name -> (B, H) for the gates whose kind (``cell.gate_kinds``) is
    sigmoid or tanh; empty for a cell that names no gates."""
    gates = cell.gates(x_t, from_tuple(cell, state), params)
    if gates is None:
        return {}
    return {name: getattr(gates, name) for name, kind in cell.gate_kinds.items()
            if kind in ("sigmoid", "tanh")}


@dataclass
class GateStats:
    """Gate statistics of one layer over a traced run (valid steps only).

    Attributes:
        name: the layer's module path.
        saturated: gate name -> share of values saturated (near 0 or 1; ``|.| > 1 - eps`` for
            tanh activations).
        low: gate name -> share below ``eps`` (for tanh: below ``-1 + eps``).
        high: gate name -> share above ``1 - eps``.
        mean: gate name -> mean value.
    """

    name: str
    saturated: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    mean: dict[str, float]


def gate_values(record: LayerRecord) -> dict[str, Tensor]:
    """Every gate of every step of a traced layer: name -> (T, B, H)."""
    prev = [record.state0] + [tuple(s[t] for s in record.states)
                              for t in range(record.x.shape[0] - 1)]
    steps = [cell_gates(record.cell, x_t, s, record.params)
             for x_t, s in zip(record.x.unbind(0), prev)]
    if not steps or not steps[0]:
        return {}
    return {k: torch.stack([g[k] for g in steps]).detach() for k in steps[0]}


def gate_stats(record: LayerRecord, eps: float = 0.05) -> GateStats:
    """Saturation shares of every gate of one traced layer; ``eps``: distance from 0 or 1."""
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5), got {eps!r}")
    with torch.no_grad():
        values = gate_values(record)
        valid = None if record.mask is None else record.mask.expand(
            -1, -1, record.cell.hidden_size)
        sat, low, high, mean = {}, {}, {}, {}
        for name, v in values.items():
            v = v if valid is None else v[valid[..., :v.shape[-1]]]
            lo_edge = -1 + eps if record.cell.gate_kinds[name] == "tanh" else eps
            lo, hi = (v < lo_edge).double().mean(), (v > 1 - eps).double().mean()
            low[name], high[name] = float(lo), float(hi)
            sat[name] = float(lo + hi)
            mean[name] = float(v.double().mean())
    return GateStats(record.name, sat, low, high, mean)
