"""The cells, each written from its equations.

Notation: the lecture notes' ``a<t>`` (hidden state), ``c<t>`` (memory cell), ``c~<t>``
(candidate), ``Gamma_u``/``Gamma_f``/``Gamma_o``/``Gamma_r`` (update, forget, output, reset
gates), beside the code's names. ``x @ W.T`` is written ``W x`` in the equations.

Every cell initialises all of its matrices and biases as torch.nn does, ~ U(-1/sqrt(H), 1/sqrt(H)),
layer-norm gains to 1 and shifts to 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.cells.base import Params, RecurrentCell, State, check_choice, check_size


def _param(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape))


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None = None) -> Tensor:
    """Layer normalisation over the last dimension (Ba et al. 2016), eps 1e-5."""
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps=LN_EPS)


LN_EPS = 1e-5


class ElmanCell(RecurrentCell):
    r"""The vanilla (Elman) RNN cell, torch.nn.RNN's cell.

    Equations (notes / code)::

        a<t> = g(W_ax x<t> + W_aa a<t-1> + b_a)
        h    = g(weight_ih x + bias_ih + weight_hh h_prev + bias_hh)

    with ``g`` = tanh or relu (``nonlinearity``); ``b_a`` is split as ``bias_ih + bias_hh``
    as in torch.nn.

    Parameters: ``weight_ih`` (H, I), ``weight_hh`` (H, H), ``bias_ih`` (H), ``bias_hh`` (H).
    """

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh",
                 bias: bool = True) -> None:
        super().__init__(input_size, hidden_size)
        self.nonlinearity = check_choice("nonlinearity", nonlinearity, ("tanh", "relu"))
        self.bias = bias
        H = hidden_size
        self.weight_ih = _param(H, input_size)
        self.weight_hh = _param(H, H)
        self.bias_ih = _param(H) if bias else None
        self.bias_hh = _param(H) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_uniform()

    @property
    def native_mode(self) -> str:
        return "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"

    def step(self, x_t: Tensor, state: State, params: Params | None = None) -> tuple[Tensor, State]:
        p = self.params() if params is None else params
        a = F.linear(x_t, p["weight_ih"], p.get("bias_ih")) + F.linear(
            state, p["weight_hh"], p.get("bias_hh"))
        h = torch.tanh(a) if self.nonlinearity == "tanh" else torch.relu(a)
        return h, h

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, nonlinearity={self.nonlinearity!r}"


class LSTMCell(RecurrentCell):
    r"""The LSTM cell (Hochreiter and Schmidhuber 1997, with a forget gate), torch.nn.LSTM's cell.

    Equations (notes / code), gates in torch.nn's order i, f, g, o::

        Gamma_u = sigma(W_u [a<t-1>, x<t>] + b_u)     i = sigmoid(gates[0:H])
        Gamma_f = sigma(W_f [a<t-1>, x<t>] + b_f)     f = sigmoid(gates[H:2H])
        c~<t>   = tanh(W_c [a<t-1>, x<t>] + b_c)      g = tanh(gates[2H:3H])
        Gamma_o = sigma(W_o [a<t-1>, x<t>] + b_o)     o = sigmoid(gates[3H:4H])
        c<t> = Gamma_u * c~<t> + Gamma_f * c<t-1>     c = f * c_prev + i * g
        a<t> = Gamma_o * tanh(c<t>)                   h = o * tanh(c)

    where ``gates = weight_ih x + bias_ih + weight_hh h_prev + bias_hh`` (4H).

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
        self.weight_ih = _param(4 * H, input_size)
        self.weight_hh = _param(4 * H, R)
        self.bias_ih = _param(4 * H) if bias else None
        self.bias_hh = _param(4 * H) if bias else None
        self.weight_hr = _param(proj_size, H) if proj_size else None
        if self.layer_norm:
            self.ln_ih_weight = _param(4 * H)
            self.ln_hh_weight = _param(4 * H)
            self.ln_c_weight = _param(H)
            self.ln_c_bias = _param(H)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_uniform()
        H = self.hidden_size
        with torch.no_grad():
            if self.layer_norm:
                for name in ("ln_ih_weight", "ln_hh_weight", "ln_c_weight"):
                    getattr(self, name).fill_(1.0)
                self.ln_c_bias.zero_()
            if self.forget_bias is not None and self.bias:
                self.bias_ih[H:2 * H].fill_(float(self.forget_bias))
                self.bias_hh[H:2 * H].zero_()

    @property
    def native_mode(self) -> str | None:
        return None if self.layer_norm else "LSTM"

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size

    def step(self, x_t: Tensor, state: State, params: Params | None = None) -> tuple[Tensor, State]:
        p = self.params() if params is None else params
        h_prev, c_prev = state
        xi = F.linear(x_t, p["weight_ih"])
        hh = F.linear(h_prev, p["weight_hh"])
        if self.layer_norm:
            xi = layer_norm(xi, p["ln_ih_weight"])
            hh = layer_norm(hh, p["ln_hh_weight"])
        gates = xi + hh
        if self.bias:
            gates = gates + p["bias_ih"] + p["bias_hh"]
        i, f, g, o = gates.chunk(4, dim=-1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c_prev + i * g
        c_out = layer_norm(c, p["ln_c_weight"], p["ln_c_bias"]) if self.layer_norm else c
        h = o * torch.tanh(c_out)
        if self.proj_size:
            h = F.linear(h, p["weight_hr"])
        return h, (h, c)

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

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 forget_bias: float | None = None) -> None:
        super().__init__(input_size, hidden_size)
        self.bias = bias
        self.forget_bias = forget_bias
        H = hidden_size
        self.weight_ih = _param(4 * H, input_size)
        self.weight_hh = _param(4 * H, H)
        self.bias_ih = _param(4 * H) if bias else None
        self.bias_hh = _param(4 * H) if bias else None
        self.peephole = _param(3, H)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_uniform()
        H = self.hidden_size
        if self.forget_bias is not None and self.bias:
            with torch.no_grad():
                self.bias_ih[H:2 * H].fill_(float(self.forget_bias))
                self.bias_hh[H:2 * H].zero_()

    def step(self, x_t: Tensor, state: State, params: Params | None = None) -> tuple[Tensor, State]:
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
        h = o * torch.tanh(c)
        return h, (h, c)


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

    def __init__(self, input_size: int, hidden_size: int, *, reset: str = "after",
                 bias: bool = True, layer_norm: bool = False) -> None:
        super().__init__(input_size, hidden_size)
        self.reset = check_choice("reset", reset, ("after", "before"))
        self.bias = bias
        self.layer_norm = bool(layer_norm)
        H = hidden_size
        self.weight_ih = _param(3 * H, input_size)
        self.weight_hh = _param(3 * H, H)
        self.bias_ih = _param(3 * H) if bias else None
        self.bias_hh = _param(3 * H) if bias else None
        if self.layer_norm:
            self.ln_ih_weight = _param(3 * H)
            self.ln_hh_weight = _param(3 * H)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_uniform()
        if self.layer_norm:
            with torch.no_grad():
                self.ln_ih_weight.fill_(1.0)
                self.ln_hh_weight.fill_(1.0)

    @property
    def native_mode(self) -> str | None:
        return "GRU" if self.reset == "after" and not self.layer_norm else None

    def step(self, x_t: Tensor, state: State, params: Params | None = None) -> tuple[Tensor, State]:
        p = self.params() if params is None else params
        H = self.hidden_size
        h_prev = state
        xg = F.linear(x_t, p["weight_ih"])
        if self.layer_norm:
            xg = layer_norm(xg, p["ln_ih_weight"])
        if self.bias:
            xg = xg + p["bias_ih"]
        xr, xz, xn = xg.chunk(3, dim=-1)
        w_hh, b_hh = p["weight_hh"], p.get("bias_hh")
        if self.reset == "after":
            hg = F.linear(h_prev, w_hh)
            if self.layer_norm:
                hg = layer_norm(hg, p["ln_hh_weight"])
            if self.bias:
                hg = hg + b_hh
            hr, hz, hn = hg.chunk(3, dim=-1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
        else:
            hrz = F.linear(h_prev, w_hh[:2 * H])
            if self.layer_norm:
                hrz = layer_norm(hrz, p["ln_hh_weight"][:2 * H])
            if self.bias:
                hrz = hrz + b_hh[:2 * H]
            hr, hz = hrz.chunk(2, dim=-1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            hn = F.linear(r * h_prev, w_hh[2 * H:])
            if self.layer_norm:
                hn = layer_norm(hn, p["ln_hh_weight"][2 * H:])
            if self.bias:
                hn = hn + b_hh[2 * H:]
            n = torch.tanh(xn + hn)
        h = (1 - z) * n + z * h_prev
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

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True) -> None:
        super().__init__(input_size, hidden_size)
        self.bias = bias
        H = hidden_size
        self.weight_ih = _param(2 * H, input_size)
        self.weight_hh = _param(2 * H, H)
        self.bias_ih = _param(2 * H) if bias else None
        self.bias_hh = _param(2 * H) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_uniform()

    def step(self, x_t: Tensor, state: State, params: Params | None = None) -> tuple[Tensor, State]:
        p = self.params() if params is None else params
        gates = F.linear(x_t, p["weight_ih"], p.get("bias_ih")) + F.linear(
            state, p["weight_hh"], p.get("bias_hh"))
        u, n = gates.chunk(2, dim=-1)
        u, n = torch.sigmoid(u), torch.tanh(n)
        h = u * n + (1 - u) * state
        return h, h


CELLS: dict[str, tuple[type[RecurrentCell], dict]] = {
    "rnn": (ElmanCell, {}),
    "rnn-relu": (ElmanCell, {"nonlinearity": "relu"}),
    "lstm": (LSTMCell, {}),
    "peephole": (PeepholeLSTMCell, {}),
    "gru": (GRUCell, {"reset": "after"}),
    "gru-before": (GRUCell, {"reset": "before"}),
    "mingru": (MinimalGRUCell, {}),
}


def make_cell(name: str, input_size: int, hidden_size: int, **options: object) -> RecurrentCell:
    """Build a cell by name: one of ``"rnn"``, ``"rnn-relu"``, ``"lstm"``, ``"peephole"``,
    ``"gru"``, ``"gru-before"``, ``"mingru"``; ``options`` go to its constructor."""
    check_choice("cell", name, tuple(CELLS))
    check_size("input_size", input_size)
    check_size("hidden_size", hidden_size)
    cls, defaults = CELLS[name]
    try:
        return cls(input_size, hidden_size, **{**defaults, **options})
    except TypeError as err:
        raise TypeError(f"cell {name!r} ({cls.__name__}): {err}") from None
