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
import torch.nn.functional as F
from torch import Tensor

from rnnkit.cells.base import Params, RecurrentCell
from rnnkit.cells.cells import (
    ElmanCell,
    GRUCell,
    LSTMCell,
    MinimalGRUCell,
    PeepholeLSTMCell,
    layer_norm,
)
from rnnkit.diagnostics.trace import LayerRecord

TANH_GATES = ("cell", "candidate", "hidden")


def _lstm_gates(cell: LSTMCell, x: Tensor, h: Tensor, p: Params) -> dict[str, Tensor]:
    xi, hh = F.linear(x, p["weight_ih"]), F.linear(h, p["weight_hh"])
    if cell.layer_norm:
        xi, hh = layer_norm(xi, p["ln_ih_weight"]), layer_norm(hh, p["ln_hh_weight"])
    a = xi + hh
    if cell.bias:
        a = a + p["bias_ih"] + p["bias_hh"]
    i, f, g, o = a.chunk(4, -1)
    return {"input": i.sigmoid(), "forget": f.sigmoid(), "cell": g.tanh(), "output": o.sigmoid()}


def _peephole_gates(cell: PeepholeLSTMCell, x: Tensor, h: Tensor, c: Tensor,
                    p: Params) -> dict[str, Tensor]:
    a = F.linear(x, p["weight_ih"], p.get("bias_ih")) + F.linear(h, p["weight_hh"],
                                                                 p.get("bias_hh"))
    a_i, a_f, a_g, a_o = a.chunk(4, -1)
    p_i, p_f, p_o = p["peephole"]
    i, f, g = (a_i + p_i * c).sigmoid(), (a_f + p_f * c).sigmoid(), a_g.tanh()
    c_new = f * c + i * g
    return {"input": i, "forget": f, "cell": g, "output": (a_o + p_o * c_new).sigmoid()}


def _gru_gates(cell: GRUCell, x: Tensor, h: Tensor, p: Params) -> dict[str, Tensor]:
    H = cell.hidden_size
    xg = F.linear(x, p["weight_ih"])
    if cell.layer_norm:
        xg = layer_norm(xg, p["ln_ih_weight"])
    if cell.bias:
        xg = xg + p["bias_ih"]
    xr, xz, xn = xg.chunk(3, -1)
    w, b = p["weight_hh"], p.get("bias_hh")
    if cell.reset == "after":
        hg = F.linear(h, w)
        if cell.layer_norm:
            hg = layer_norm(hg, p["ln_hh_weight"])
        if b is not None:
            hg = hg + b
        hr, hz, hn = hg.chunk(3, -1)
        r = (xr + hr).sigmoid()
        n = (xn + r * hn).tanh()
    else:
        hrz = F.linear(h, w[:2 * H])
        if cell.layer_norm:
            hrz = layer_norm(hrz, p["ln_hh_weight"][:2 * H])
        if b is not None:
            hrz = hrz + b[:2 * H]
        hr, hz = hrz.chunk(2, -1)
        r = (xr + hr).sigmoid()
        hn = F.linear(r * h, w[2 * H:])
        if cell.layer_norm:
            hn = layer_norm(hn, p["ln_hh_weight"][2 * H:])
        if b is not None:
            hn = hn + b[2 * H:]
        n = (xn + hn).tanh()
    z = (xz + hz).sigmoid()
    return {"reset": r, "update": z, "candidate": n}


def cell_gates(cell: RecurrentCell, x_t: Tensor, state: tuple[Tensor, ...],
               params: Params | None = None) -> dict[str, Tensor]:
    """The gate activations of one step: ``x_t`` (B, I), ``state`` a tuple of (B, n).

    Returns a dict gate name -> (B, H) (see the module docstring for the names)."""
    p = cell.params() if params is None else params
    if isinstance(cell, LSTMCell):
        return _lstm_gates(cell, x_t, state[0], p)
    if isinstance(cell, PeepholeLSTMCell):
        return _peephole_gates(cell, x_t, state[0], state[1], p)
    if isinstance(cell, GRUCell):
        return _gru_gates(cell, x_t, state[0], p)
    if isinstance(cell, MinimalGRUCell):
        gates = F.linear(x_t, p["weight_ih"], p.get("bias_ih")) + F.linear(
            state[0], p["weight_hh"], p.get("bias_hh"))
        u, n = gates.chunk(2, -1)
        return {"update": u.sigmoid(), "candidate": n.tanh()}
    if isinstance(cell, ElmanCell):
        h, _ = cell.step(x_t, state[0], p)
        return {"hidden": h} if cell.nonlinearity == "tanh" else {}
    return {}


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
            lo_edge = -1 + eps if name in TANH_GATES else eps
            lo, hi = (v < lo_edge).double().mean(), (v > 1 - eps).double().mean()
            low[name], high[name] = float(lo), float(hi)
            sat[name] = float(lo + hi)
            mean[name] = float(v.double().mean())
    return GateStats(record.name, sat, low, high, mean)
