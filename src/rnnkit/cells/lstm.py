"""The LSTM family: the LSTM (plain, layer-normalised, with projections) and the peephole LSTM.

Notation: the lecture notes' ``a<t>`` (hidden state), ``c<t>`` (memory cell), ``c~<t>``
(candidate), ``Gamma_u`` / ``Gamma_f`` / ``Gamma_o`` (update, forget, output gates) beside the
code's names; ``x @ W.T`` is written ``W x``. Every matrix and bias is initialised as
torch.nn does, ~ U(-1/sqrt(H), 1/sqrt(H)); layer-norm gains to 1 and shifts to 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.cells.base import Params, RecurrentCell, State, layer_norm, new_param


class LSTMGates(NamedTuple):
    """The gate activations of one LSTM step, (B, H) each, in torch.nn's order i, f, g, o."""

    input: Tensor  # Gamma_u
    forget: Tensor  # Gamma_f
    cell: Tensor  # c~<t>, the candidate
    output: Tensor  # Gamma_o


class PeepholeGates(NamedTuple):
    """The gate activations of one peephole-LSTM step, (B, H) each, and the new cell c<t>
    (the output gate reads it)."""

    input: Tensor
    forget: Tensor
    cell: Tensor
    output: Tensor
    memory: Tensor  # c<t>


_LSTM_GATE_KINDS = {"input": "sigmoid", "forget": "sigmoid", "cell": "tanh",
                    "output": "sigmoid"}


def _set_forget_bias(cell: RecurrentCell, forget_bias: float | None) -> None:
    """``bias_ih[H:2H] = forget_bias``, ``bias_hh[H:2H] = 0`` (Keras' ``unit_forget_bias``)."""
    if forget_bias is not None and cell.bias:
        H = cell.hidden_size
        with torch.no_grad():
            cell.bias_ih[H:2 * H].fill_(float(forget_bias))
            cell.bias_hh[H:2 * H].zero_()


class LSTMCell(RecurrentCell):
    r"""The LSTM cell (Hochreiter and Schmidhuber 1997, with a forget gate), torch.nn.LSTM's cell.

    Equations (notes / code), gates in torch.nn's order i, f, g, o::

        Gamma_u = sigma(W_u [a<t-1>, x<t>] + b_u)     i = sigmoid(gates[0:H])
        Gamma_f = sigma(W_f [a<t-1>, x<t>] + b_f)     f = sigmoid(gates[H:2H])
        c~<t>   = tanh(W_c [a<t-1>, x<t>] + b_c)      g = tanh(gates[2H:3H])
        Gamma_o = sigma(W_o [a<t-1>, x<t>] + b_o)     o = sigmoid(gates[3H:4H])
        c<t> = Gamma_u * c~<t> + Gamma_f * c<t-1>     c = f * c_prev + i * g
        a<t> = Gamma_o * tanh(c<t>)                   h = o * tanh(c)

    where ``gates = weight_ih x + bias_ih + weight_hh h_prev + bias_hh`` (4H): the
    pre-activation (:meth:`preactivation`), its nonlinearities (:meth:`activate`) and the cell
    and output update (:meth:`update`) are the three parts of :meth:`step`.

    With ``layer_norm=True`` (Ba et al. 2016, as in their LSTM) the two projections are
    normalised separately over their 4H features before the biases, and so is the cell
    before its output tanh::

        gates = LN(weight_ih x) * ln_ih_weight + bias_ih
              + LN(weight_hh h_prev) * ln_hh_weight + bias_hh
        h = o * tanh(LN(c) * ln_c_weight + ln_c_bias)

    With ``proj_size = P > 0`` (torch.nn.LSTM's projections), ``h = weight_hr (o * tanh(c))``
    is (B, P) and ``weight_hh`` is (4H, P).

    Parameters: ``weight_ih`` (4H, I), ``weight_hh`` (4H, H or P), ``bias_ih`` (4H),
    ``bias_hh`` (4H), optionally ``weight_hr`` (P, H) and the layer-norm gains and shift.
    ``forget_bias``: ``None`` keeps torch.nn's uniform initialisation; a number sets the forget
    gate's total bias to it (``bias_ih[H:2H] = forget_bias``, ``bias_hh[H:2H] = 0``), as Keras'
    ``unit_forget_bias`` (1.0; Jozefowicz et al. 2015).
    State: ``(h, c)``.
    """

    num_states = 2
    gate_kinds = _LSTM_GATE_KINDS

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 forget_bias: float | None = None, layer_norm: bool = False,
                 proj_size: int = 0) -> None:
        super().__init__(input_size, hidden_size)
        if isinstance(proj_size, bool) or not isinstance(proj_size, int) or not (
                0 <= proj_size < hidden_size):
            raise ValueError(f"proj_size must be an int in [0, hidden_size={hidden_size}), "
                             f"got {proj_size!r}")
        self.bias = bias
        self.layer_norm = bool(layer_norm)
        self.proj_size = proj_size
        self.forget_bias = forget_bias
        H, R = hidden_size, (proj_size or hidden_size)
        self.add_projections(4, R, bias)
        self.weight_hr = new_param(proj_size, H) if proj_size else None
        if self.layer_norm:
            self.ln_ih_weight = new_param(4 * H)
            self.ln_hh_weight = new_param(4 * H)
            self.ln_c_weight = new_param(H)
            self.ln_c_bias = new_param(H)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_uniform()
        if self.layer_norm:
            with torch.no_grad():
                for name in ("ln_ih_weight", "ln_hh_weight", "ln_c_weight"):
                    getattr(self, name).fill_(1.0)
                self.ln_c_bias.zero_()
        _set_forget_bias(self, self.forget_bias)

    @property
    def native_mode(self) -> str | None:
        return "LSTM" if type(self) is LSTMCell and not self.layer_norm else None

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size

    def preactivation(self, x_t: Tensor, h_prev: Tensor, p: Params) -> Tensor:
        """``gates`` (B, 4H): ``[LN](weight_ih x) + [LN](weight_hh h_prev) + biases``."""
        xi = F.linear(x_t, p["weight_ih"])
        hh = F.linear(h_prev, p["weight_hh"])
        if self.layer_norm:
            xi = layer_norm(xi, p["ln_ih_weight"])
            hh = layer_norm(hh, p["ln_hh_weight"])
        gates = xi + hh
        if self.bias:
            gates = gates + p["bias_ih"] + p["bias_hh"]
        return gates

    @staticmethod
    def activate(gates: Tensor) -> LSTMGates:
        """The nonlinearities of the pre-activation (B, 4H): i, f, o sigmoid, g tanh."""
        i, f, g, o = gates.chunk(4, dim=-1)
        return LSTMGates(torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o))

    def gates(self, x_t: Tensor, state: State, params: Params | None = None) -> LSTMGates:
        p = self.params() if params is None else params
        return self.activate(self.preactivation(x_t, state[0], p))

    def update(self, gates: LSTMGates, c_prev: Tensor, p: Params) -> tuple[Tensor, State]:
        """``c = f * c_prev + i * g``, ``h = o * tanh([LN](c))`` (projected when ``proj_size``):
        the gates and ``c_prev`` (B, H) to ``(h, (h, c))``."""
        i, f, g, o = gates
        c = f * c_prev + i * g
        c_out = layer_norm(c, p["ln_c_weight"], p["ln_c_bias"]) if self.layer_norm else c
        h = o * torch.tanh(c_out)
        if self.proj_size:
            h = F.linear(h, p["weight_hr"])
        return h, (h, c)

    def step(self, x_t: Tensor, state: State, params: Params | None = None) -> tuple[Tensor, State]:
        p = self.params() if params is None else params
        return self.update(self.gates(x_t, state, p), state[1], p)

    def extra_repr(self) -> str:
        extra = ", layer_norm=True" if self.layer_norm else ""
        extra += f", proj_size={self.proj_size}" if self.proj_size else ""
        return f"{self.input_size}, {self.hidden_size}{extra}"


class PeepholeLSTMCell(RecurrentCell):
    r"""LSTM with diagonal peephole connections (Gers and Schmidhuber 2000).

    The input and forget gates also read the previous cell ``c<t-1>``, the output gate reads
    the new cell ``c<t>``; ``peephole`` holds the three diagonal weights, rows i, f, o::

        a = weight_ih x + bias_ih + weight_hh h_prev + bias_hh      (4H, order i, f, g, o)
        Gamma_u = sigma(a_i + p_i * c<t-1>)        i = sigmoid(a_i + peephole[0] * c_prev)
        Gamma_f = sigma(a_f + p_f * c<t-1>)        f = sigmoid(a_f + peephole[1] * c_prev)
        c~<t>   = tanh(a_g)                        g = tanh(a_g)
        c<t> = Gamma_u * c~<t> + Gamma_f * c<t-1>  c = f * c_prev + i * g
        Gamma_o = sigma(a_o + p_o * c<t>)          o = sigmoid(a_o + peephole[2] * c)
        a<t> = Gamma_o * tanh(c<t>)                h = o * tanh(c)

    Parameters: as :class:`LSTMCell`, plus ``peephole`` (3, H), initialised like the rest.
    State: ``(h, c)``.
    """

    num_states = 2
    gate_kinds = _LSTM_GATE_KINDS

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 forget_bias: float | None = None) -> None:
        super().__init__(input_size, hidden_size)
        self.bias = bias
        self.forget_bias = forget_bias
        self.add_projections(4, bias=bias)
        self.peephole = new_param(3, hidden_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_uniform()
        _set_forget_bias(self, self.forget_bias)

    def gates(self, x_t: Tensor, state: State, params: Params | None = None) -> PeepholeGates:
        """The gates and the new cell ``c`` from ``x_t`` and ``(h_prev, c_prev)``."""
        p = self.params() if params is None else params
        h_prev, c_prev = state
        a = F.linear(x_t, p["weight_ih"], p.get("bias_ih")) + F.linear(
            h_prev, p["weight_hh"], p.get("bias_hh"))
        a_i, a_f, a_g, a_o = a.chunk(4, dim=-1)
        p_i, p_f, p_o = p["peephole"]
        i = torch.sigmoid(a_i + p_i * c_prev)
        f = torch.sigmoid(a_f + p_f * c_prev)
        g = torch.tanh(a_g)
        c = f * c_prev + i * g
        o = torch.sigmoid(a_o + p_o * c)
        return PeepholeGates(i, f, g, o, c)

    def step(self, x_t: Tensor, state: State, params: Params | None = None) -> tuple[Tensor, State]:
        gates = self.gates(x_t, state, params)
        c = gates.memory
        h = gates.output * torch.tanh(c)
        return h, (h, c)
