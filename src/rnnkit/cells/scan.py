"""Cells whose state update is elementwise linear in the previous state, the answer to the
notes' "recurrent computation is slow": every gate comes from the inputs alone, so the gates
of all steps are one GEMM (a convolution for the QRNN) and the recurrence

    c<t> = a<t> * c<t-1> + b<t>

is a linear scan (engine ``scan``: :mod:`rnnkit.engines.scan`), with no matrix product
between steps. Each cell states its ``a`` and ``b`` (and an output gate) from the gate
pre-activations in :meth:`ScanCell.activate`, the one place of its equations:
:meth:`ScanCell.coefficients` applies it to a whole sequence, :meth:`ScanCell.step` and the
decoding step (:class:`rnnkit.engines.scan.ScanInferenceStep`) to one step.

- :class:`MinGRUCell`, ``scan-gru`` (Feng et al. 2024, "Were RNNs All We Needed?"):
  ``z = sigma(W_z x + b_z)``, ``h~ = W_h x + b_h``, ``a<t> = (1 - z) * a<t-1> + z * h~``;
  ``positive=True`` is the paper's log-space form, ``h~ = g(W_h x + b_h)`` with
  ``g(v) = v + 1/2`` for v >= 0 and ``sigma(v)`` below, which keeps the state positive.
- :class:`MinLSTMCell`, ``scan-lstm`` (the same paper): ``f, i = sigma(W_f x + b_f),
  sigma(W_i x + b_i)``, normalised ``f' = f / (f + i)``, ``i' = i / (f + i)``,
  ``a<t> = f' * a<t-1> + i' * h~``.
- :class:`QRNNCell`, ``qrnn`` (Bradbury et al. 2016, "Quasi-Recurrent Neural Networks"), with
  fo-pooling: ``z, f, o`` from a causal convolution of window ``k`` (1 or 2) over the inputs,
  ``z = tanh(W_z [x<t-1>, x<t>])``, ``f = sigma(...)``, ``o = sigma(...)``;
  ``c<t> = f * c<t-1> + (1 - f) * z``, ``a<t> = o * c<t>``. With ``k = 2`` the state carries
  the last input beside ``(h, c)``, so that :meth:`step` continues a sequence exactly.

Parameters: ``weight_ih`` (G H, I k) and ``bias_ih`` (G H,), G gate blocks (minGRU 2, minLSTM
3, QRNN 3), torch-style initialisation U(-1/sqrt(H), 1/sqrt(H)). No ``weight_hh``: nothing
multiplies the state.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from rnnkit import gemm
from rnnkit.cells.base import Params, RecurrentCell, State, as_tuple, from_tuple, new_param


class ScanCoefficients(NamedTuple):
    """A sequence's linear recurrence ``c<t> = a<t> * c<t-1> + b<t>``, (T, B, H) each, and
    the output gate ``o`` (h = o * c) or None (h = c)."""

    a: Tensor
    b: Tensor
    o: Tensor | None


class ScanCell(RecurrentCell):
    """What the scan cells share: the input projection of all steps, the coefficients, and a
    :meth:`step` that is one step of the same recurrence."""

    recurrent_weights: ClassVar[tuple[str, ...]] = ()
    #: gate blocks of the input projection
    blocks: ClassVar[int] = 2

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 window: int = 1) -> None:
        super().__init__(input_size, hidden_size)
        self.window = window
        self.bias = bias
        G = self.blocks * hidden_size
        self.weight_ih = new_param(G, input_size * window)
        self.bias_ih = new_param(G) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_uniform()

    def windowed(self, x: Tensor, state: tuple[Tensor, ...]) -> Tensor:
        """What ``weight_ih`` multiplies at each step: inputs (T, B, I) -> (T, B, I k) (the
        inputs themselves with a window of 1)."""
        return x

    def projections(self, x: Tensor, state: tuple[Tensor, ...], params: Params) -> Tensor:
        """The gate pre-activations of every step, (T, B, G H), in one GEMM (on the
        machine's fastest backend, :func:`rnnkit.gemm.linear`)."""
        return gemm.linear(self.windowed(x, state), params["weight_ih"], params.get("bias_ih"))

    def activate(self, pre: Tensor) -> ScanCoefficients:
        """``a``, ``b`` and the output gate from the gate pre-activations (..., G H) of
        :meth:`projections` (the cell's equations, written here once)."""
        raise NotImplementedError

    def coefficients(self, x: Tensor, state: tuple[Tensor, ...], params: Params | None = None
                     ) -> ScanCoefficients:
        """``a``, ``b`` and the output gate of inputs (T, B, I) from ``state``."""
        p = self.params() if params is None else params
        return self.activate(self.projections(x, state, p))

    @property
    def scanned(self) -> int:
        """The index in the state of the scanned ``c``: 0 when the state is ``h = c`` alone,
        1 for ``(h, c, ...)``."""
        return 0 if self.num_states == 1 else 1

    def carried(self, x: Tensor, c: Tensor, o: Tensor | None) -> tuple[Tensor, ...]:
        """The state sequences (T, B, n) from the recurrence's c and the inputs: ``(h,)`` or
        ``(h, c)`` (and the last input with a window of 2)."""
        return (c,) if o is None else (o * c, c)

    def advance(self, x_t: Tensor, pre: Tensor, state: tuple[Tensor, ...]
                ) -> tuple[Tensor, State]:
        """One step from its gate pre-activations ``pre`` (B, G H): ``c<t> = a<t> * c<t-1> +
        b<t>`` and the new state, for inputs ``x_t`` (B, I); returns ``(h<t>, state)``."""
        co = self.activate(pre)
        c = torch.addcmul(co.b, co.a, state[self.scanned])
        new = self.carried(x_t, c, co.o)
        return new[0], from_tuple(self, new)

    def step(self, x_t: Tensor, state: State, params: Params | None = None
             ) -> tuple[Tensor, State]:
        s = as_tuple(state)
        p = self.params() if params is None else params
        return self.advance(x_t, self.projections(x_t.unsqueeze(0), s, p)[0], s)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + (
            f", window={self.window}" if self.window != 1 else "")


def _g(v: Tensor) -> Tensor:
    """Feng et al.'s g: v + 1/2 for v >= 0, sigma(v) below (continuous, positive)."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


class _MinCell(ScanCell):
    """What minGRU and minLSTM share: the candidate ``h~ = W_h x + b_h``, or with
    ``positive=True`` the paper's log-space form ``g(W_h x + b_h)``."""

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 positive: bool = False) -> None:
        self.positive = positive
        super().__init__(input_size, hidden_size, bias=bias)

    def candidate(self, h: Tensor) -> Tensor:
        return _g(h) if self.positive else h


class MinGRUCell(_MinCell):
    r"""minGRU (Feng et al. 2024): update gate and candidate from the input alone.

    ::

        z<t> = sigma(W_z x<t> + b_z)         h~<t> = W_h x<t> + b_h   [g(...) if positive]
        a<t> = (1 - z<t>) * a<t-1> + z<t> * h~<t>

    Gate order z, h~ in ``weight_ih`` (2H, I). State: ``h``.
    """

    blocks = 2
    gate_kinds: ClassVar[dict[str, str]] = {"update": "sigmoid"}

    def activate(self, pre):
        z, h = pre.chunk(2, dim=-1)
        z = torch.sigmoid(z)
        return ScanCoefficients(1 - z, z * self.candidate(h), None)


class MinLSTMCell(_MinCell):
    r"""minLSTM (Feng et al. 2024): forget and input gates from the input alone, normalised.

    ::

        f<t>, i<t> = sigma(W_f x<t> + b_f), sigma(W_i x<t> + b_i)
        h~<t> = W_h x<t> + b_h  [g(...) if positive]
        f' = f / (f + i),  i' = i / (f + i),   a<t> = f' * a<t-1> + i' * h~<t>

    Gate order f, i, h~ in ``weight_ih`` (3H, I). State: ``h``.
    """

    blocks = 3
    gate_kinds: ClassVar[dict[str, str]] = {"forget": "sigmoid", "input": "sigmoid"}

    def activate(self, pre):
        f, i, h = pre.chunk(3, dim=-1)
        f, i = torch.sigmoid(f), torch.sigmoid(i)
        total = f + i
        return ScanCoefficients(f / total, i / total * self.candidate(h), None)


class _Window(torch.autograd.Function):
    """The QRNN's window of 2, ``[x<t-1>, x<t>]``: inputs x (T, B, I) and the input before
    the first step ``last`` (B, I) -> (T, B, 2 I), the columns of x<t-1> first. One pass that
    writes each input twice, and one back (dL/dx<t> = the x<t> half of step t's gradient +
    the x<t-1> half of step t+1's): the same values as two ``torch.cat`` with a shifted
    slice, without their intermediate copy and the zero-padded gradient of the slice."""

    @staticmethod
    def forward(ctx, x: Tensor, last: Tensor) -> Tensor:
        size = x.shape[-1]
        out = x.new_empty(*x.shape[:-1], 2 * size)
        out[0, :, :size] = last
        out[1:, :, :size] = x[:-1]
        out[..., size:] = x
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        size = grad.shape[-1] // 2
        if torch.is_grad_enabled():  # a differentiable backward (create_graph=True)
            dx = grad[..., size:].clone(memory_format=torch.contiguous_format)
            dx[:-1] += grad[1:, :, :size]
        else:  # one pass over dx, not a copy and an add
            dx = grad.new_empty(*grad.shape[:-1], size)
            torch.add(grad[:-1, :, size:], grad[1:, :, :size], out=dx[:-1])
            dx[-1] = grad[-1, :, size:]
        return dx, grad[0, :, :size]


#: the QRNN's convolution window when none is given (Bradbury et al.'s k = 2)
QRNN_WINDOW = 2


class QRNNCell(ScanCell):
    r"""The QRNN with fo-pooling (Bradbury et al. 2016), window ``k`` of 1 or 2.

    ::

        z<t> = tanh(W_z [x<t-1>, x<t>] + b_z)    f<t>, o<t> = sigma(...), sigma(...)
        c<t> = f<t> * c<t-1> + (1 - f<t>) * z<t>          a<t> = o<t> * c<t>

    (with ``window=1`` only x<t>). Gate order z, f, o in ``weight_ih`` (3H, I k), the columns
    of x<t-1> first. State: ``(h, c)``, and with ``window=2`` the last input ``x`` (B, I).
    """

    blocks = 3
    gate_kinds: ClassVar[dict[str, str]] = {"forget": "sigmoid", "output": "sigmoid",
                                            "candidate": "tanh"}

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 window: int = QRNN_WINDOW) -> None:
        if window not in (1, 2) or isinstance(window, bool):
            raise ValueError(f"window must be 1 or 2, got {window!r}")
        self.num_states = 2 if window == 1 else 3
        super().__init__(input_size, hidden_size, bias=bias, window=window)

    def state_sizes(self) -> tuple[int, ...]:
        return (self.hidden_size, self.hidden_size) + ((self.input_size,) if self.window == 2
                                                       else ())

    def windowed(self, x, state):
        if self.window == 1:
            return x
        if torch.jit.is_tracing():  # exports see plain ops
            before = torch.cat([state[2].unsqueeze(0), x[:-1]], dim=0)
            return torch.cat([before, x], dim=-1)
        return _Window.apply(x, state[2])

    def activate(self, pre):
        z, f, o = pre.chunk(3, dim=-1)
        z, f, o = torch.tanh(z), torch.sigmoid(f), torch.sigmoid(o)
        return ScanCoefficients(f, (1 - f) * z, o)

    def carried(self, x, c, o):
        out = (o * c, c)
        return out + ((x,) if self.window == 2 else ())


__all__ = ["QRNN_WINDOW", "MinGRUCell", "MinLSTMCell", "QRNNCell", "ScanCell",
           "ScanCoefficients"]
