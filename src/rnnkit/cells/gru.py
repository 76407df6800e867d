"""The GRU family: the GRU with the reset gate after the product (torch.nn.GRU) or before it
(the original GRU, the notes' full GRU), and the notes' simplified GRU.

Notation: the lecture notes' ``c<t>`` (the GRU's state, = ``a<t>``), ``c~<t>`` (candidate),
``Gamma_u`` / ``Gamma_r`` (update, reset gates) beside the code's names; ``x @ W.T`` is written
``W x``. Every matrix and bias is initialised as torch.nn does, ~ U(-1/sqrt(H), 1/sqrt(H));
layer-norm gains to 1.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.cells.base import Params, RecurrentCell, State, check_choice, layer_norm, new_param


class GRUGates(NamedTuple):
    """The gate activations of one GRU step, (B, H) each, in torch.nn's order r, z, n."""

    reset: Tensor  # Gamma_r
    update: Tensor  # torch's z, which keeps the old state: Gamma_u = 1 - z
    candidate: Tensor  # c~<t>


class MinimalGRUGates(NamedTuple):
    """The gate activations of one minimal-GRU step, (B, H) each."""

    update: Tensor  # Gamma_u
    candidate: Tensor  # c~<t>


def _rows(t: Tensor | None, rows: slice) -> Tensor | None:
    return None if t is None else t[rows]


class GRUCell(RecurrentCell):
    r"""The gated recurrent unit, with the reset gate applied after or before the matrix product.

    Gates in torch.nn's order r, z, n. ``z`` is torch's update gate, which keeps the old
    state; the notes' update gate is ``Gamma_u = 1 - z``::

        Gamma_r = sigma(W_r [c<t-1>, x<t>] + b_r)      r = sigmoid(xr + hr)
        Gamma_u = sigma(W_u [c<t-1>, x<t>] + b_u)      z = sigmoid(xz + hz),  Gamma_u = 1 - z
        c<t> = Gamma_u * c~<t> + (1 - Gamma_u) * c<t-1>  h = (1 - z) * n + z * h_prev

    where ``x* = weight_ih x + bias_ih`` and ``h* = weight_hh h_prev + bias_hh`` (3H each), and
    the candidate is

    - ``reset="after"`` (torch.nn.GRU and cuDNN, exactly)::

          c~<t> = tanh(W_cx x<t> + Gamma_r * (W_cc c<t-1> + b_cc))   n = tanh(xn + r * hn)

    - ``reset="before"`` (Cho et al. 2014 and the notes' full GRU)::

          c~<t> = tanh(W_c [Gamma_r * c<t-1>, x<t>] + b_c)
          n = tanh(xn + weight_hh[2H:] (r * h_prev) + bias_hh[2H:])

    With ``layer_norm=True`` (Ba et al. 2016) ``weight_ih x`` is normalised over its 3H features
    and the recurrent products over theirs (over 3H for "after"; for "before", the r, z product
    over 2H and the candidate's over H), each times a gain (``ln_ih_weight``, ``ln_hh_weight``),
    before the biases are added.

    Parameters: ``weight_ih`` (3H, I), ``weight_hh`` (3H, H), ``bias_ih`` (3H), ``bias_hh`` (3H).
    State: ``h``.
    """

    gate_kinds: ClassVar[dict[str, str]] = {
        "reset": "sigmoid", "update": "sigmoid", "candidate": "tanh"}

    def __init__(self, input_size: int, hidden_size: int, *, reset: str = "after",
                 bias: bool = True, layer_norm: bool = False) -> None:
        super().__init__(input_size, hidden_size)
        self.reset = check_choice("reset", reset, ("after", "before"))
        self.bias = bias
        self.layer_norm = bool(layer_norm)
        H = hidden_size
        self.add_projections(3, bias=bias)
        if self.layer_norm:
            self.ln_ih_weight = new_param(3 * H)
            self.ln_hh_weight = new_param(3 * H)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_uniform()
        if self.layer_norm:
            with torch.no_grad():
                self.ln_ih_weight.fill_(1.0)
                self.ln_hh_weight.fill_(1.0)

    @property
    def native_mode(self) -> str | None:
        plain = self.reset == "after" and not self.layer_norm
        return "GRU" if type(self) is GRUCell and plain else None

    def _recurrent(self, h: Tensor, w: Tensor, ln_weight: Tensor | None,
                   b: Tensor | None) -> Tensor:
        """``[LN](w h) * ln_weight + b``: one recurrent product (whole, or the rows of r, z or
        of the candidate)."""
        a = F.linear(h, w)
        if self.layer_norm:
            a = layer_norm(a, ln_weight)
        if self.bias:
            a = a + b
        return a

    def gates(self, x_t: Tensor, state: State, params: Params | None = None) -> GRUGates:
        p = self.params() if params is None else params
        H = self.hidden_size
        h_prev = state
        xg = F.linear(x_t, p["weight_ih"])
        if self.layer_norm:
            xg = layer_norm(xg, p["ln_ih_weight"])
        if self.bias:
            xg = xg + p["bias_ih"]
        xr, xz, xn = xg.chunk(3, dim=-1)
        w, g, b = p["weight_hh"], p.get("ln_hh_weight"), p.get("bias_hh")
        if self.reset == "after":
            hr, hz, hn = self._recurrent(h_prev, w, g, b).chunk(3, dim=-1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
        else:
            rz, cand = slice(0, 2 * H), slice(2 * H, None)
            hr, hz = self._recurrent(h_prev, w[rz], _rows(g, rz), _rows(b, rz)).chunk(2, dim=-1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            n = torch.tanh(xn + self._recurrent(r * h_prev, w[cand], _rows(g, cand),
                                                _rows(b, cand)))
        return GRUGates(r, z, n)

    def step(self, x_t: Tensor, state: State, params: Params | None = None) -> tuple[Tensor, State]:
        _, z, n = self.gates(x_t, state, params)
        h = (1 - z) * n + z * state
        return h, h

    def extra_repr(self) -> str:
        extra = ", layer_norm=True" if self.layer_norm else ""
        return f"{self.input_size}, {self.hidden_size}, reset={self.reset!r}{extra}"


class MinimalGRUCell(RecurrentCell):
    r"""The notes' simplified GRU: only the update gate, no reset gate.

    Gate order u, c (the candidate)::

        Gamma_u = sigma(W_u [c<t-1>, x<t>] + b_u)          u = sigmoid(gates[0:H])
        c~<t>   = tanh(W_c [c<t-1>, x<t>] + b_c)           n = tanh(gates[H:2H])
        c<t> = Gamma_u * c~<t> + (1 - Gamma_u) * c<t-1>    h = u * n + (1 - u) * h_prev

    where ``gates = weight_ih x + bias_ih + weight_hh h_prev + bias_hh`` (2H).
    ``Gamma_u = 0`` keeps the old state, ``Gamma_u = 1`` replaces it.

    Parameters: ``weight_ih`` (2H, I), ``weight_hh`` (2H, H), ``bias_ih`` (2H), ``bias_hh`` (2H).
    State: ``h``.
    """

    gate_kinds: ClassVar[dict[str, str]] = {"update": "sigmoid", "candidate": "tanh"}

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True) -> None:
        super().__init__(input_size, hidden_size)
        self.bias = bias
        self.add_projections(2, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_uniform()

    def gates(self, x_t: Tensor, state: State, params: Params | None = None) -> MinimalGRUGates:
        p = self.params() if params is None else params
        gates = F.linear(x_t, p["weight_ih"], p.get("bias_ih")) + F.linear(
            state, p["weight_hh"], p.get("bias_hh"))
        u, n = gates.chunk(2, dim=-1)
        return MinimalGRUGates(torch.sigmoid(u), torch.tanh(n))

    def step(self, x_t: Tensor, state: State, params: Params | None = None) -> tuple[Tensor, State]:
        u, n = self.gates(x_t, state, params)
        h = u * n + (1 - u) * state
        return h, h
