"""The vanilla (Elman) RNN cell.

Notation: the lecture notes' ``a<t>`` (hidden state) beside the code's ``h``; ``x @ W.T`` is
written ``W x``. Initialisation as torch.nn: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.cells.base import Params, RecurrentCell, State, check_choice


class ElmanGates(NamedTuple):
    """The Elman cell has no gates; its one activation is the new hidden state (B, H)."""

    hidden: Tensor


class ElmanCell(RecurrentCell):
    r"""The vanilla (Elman) RNN cell, torch.nn.RNN's cell.

    Equations (notes / code)::

        a<t> = g(W_ax x<t> + W_aa a<t-1> + b_a)
        h    = g(weight_ih x + bias_ih + weight_hh h_prev + bias_hh)

    with ``g`` = tanh or relu (``nonlinearity``); ``b_a`` is split as ``bias_ih + bias_hh``
    as in torch.nn.

    Parameters: ``weight_ih`` (H, I), ``weight_hh`` (H, H), ``bias_ih`` (H), ``bias_hh`` (H).
    State: ``h``.
    """

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh",
                 bias: bool = True) -> None:
        super().__init__(input_size, hidden_size)
        self.nonlinearity = check_choice("nonlinearity", nonlinearity, ("tanh", "relu"))
        self.bias = bias
        self.add_projections(1, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_uniform()

    @property
    def gate_kinds(self) -> dict[str, str]:  # type: ignore[override]
        return {"hidden": self.nonlinearity}

    @property
    def native_mode(self) -> str | None:
        if type(self) is not ElmanCell:
            return None
        return "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"

    def gates(self, x_t: Tensor, state: State, params: Params | None = None) -> ElmanGates:
        """``h = g(weight_ih x + bias_ih + weight_hh h_prev + bias_hh)``, (B, H)."""
        p = self.params() if params is None else params
        a = F.linear(x_t, p["weight_ih"], p.get("bias_ih")) + F.linear(
            state, p["weight_hh"], p.get("bias_hh"))
        return ElmanGates(torch.tanh(a) if self.nonlinearity == "tanh" else torch.relu(a))

    def step(self, x_t: Tensor, state: State, params: Params | None = None) -> tuple[Tensor, State]:
        h = self.gates(x_t, state, params).hidden
        return h, h

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, nonlinearity={self.nonlinearity!r}"
