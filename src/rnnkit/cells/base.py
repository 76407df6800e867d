"""The contract every recurrent cell follows.

A cell is one step of a recurrence, ``(x_t, state) -> (h_t, state)``. It knows nothing of time:
running it over a sequence is the job of an engine (``rnnkit.engines``) driven by a layer
(``rnnkit.layers.Recurrent``).

States are a tensor ``(B, H)`` for cells whose only state is the hidden state (Elman, GRU,
minimal GRU) and a tuple ``(h, c)`` of two ``(B, H)`` tensors for the LSTMs.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

State = Tensor | tuple[Tensor, ...]
Params = dict[str, Tensor]

#: layer normalisation's epsilon, in every cell and kernel
LN_EPS = 1e-5


def new_param(*shape: int) -> nn.Parameter:
    """An uninitialised parameter of ``shape`` (the cell's ``reset_parameters`` fills it)."""
    return nn.Parameter(torch.empty(*shape))


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None = None) -> Tensor:
    """Layer normalisation over the last dimension (Ba et al. 2016), eps ``LN_EPS``."""
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps=LN_EPS)


def check_size(name: str, value: object) -> int:
    """Return ``value`` if it is a positive ``int``, else raise naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise naming the argument."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


class RecurrentCell(nn.Module):
    """Base class of rnnkit's cells.

    Subclasses define their parameters in ``__init__`` and one step in :meth:`step`, reading
    every parameter from the ``params`` mapping so that a layer can hand in modified weights
    (DropConnect on the recurrent matrix) without touching the module. A cell with gates
    computes them in :meth:`gates`, which :meth:`step`, the gate statistics of
    ``rnnkit.diagnostics`` and the models' inference steps all call: each equation is written
    once.

    A cell defined this way runs on the ``reference`` engine in every layer and task. The fast
    engines run a cell only if they were told about its exact class: ``native`` through
    :attr:`native_mode`, ``bptt`` through ``rnnkit.engines.kernels.register_kernel``. A subclass
    of a built-in cell inherits neither, so a changed :meth:`step` is never skipped.

    Class attributes:
        num_states: 1 for cells whose state is ``h`` alone, 2 for ``(h, c)``.
        recurrent_weights: names of the parameters DropConnect applies to.
        gate_kinds: gate name -> ``"sigmoid"``, ``"tanh"`` or ``"relu"`` for the fields of what
            :meth:`gates` returns (the diagnostics count saturation of the first two).
    """

    num_states: ClassVar[int] = 1
    recurrent_weights: ClassVar[tuple[str, ...]] = ("weight_hh",)
    gate_kinds: ClassVar[dict[str, str]] = {}

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = check_size("hidden_size", hidden_size)

    def add_projections(self, gates: int, recurrent_size: int | None = None,
                        bias: bool = True) -> None:
        """Create the input and recurrent projections of ``gates`` gate blocks, in torch.nn's
        names and order: ``weight_ih`` (gates * H, I), ``weight_hh`` (gates * H, R) with
        R = ``recurrent_size`` (default H), ``bias_ih`` and ``bias_hh`` (gates * H), or None
        without ``bias``. Uninitialised (``reset_parameters`` fills them)."""
        G = gates * self.hidden_size
        self.weight_ih = new_param(G, self.input_size)
        self.weight_hh = new_param(G, recurrent_size or self.hidden_size)
        self.bias_ih = new_param(G) if bias else None
        self.bias_hh = new_param(G) if bias else None

    # -- what engines ask of a cell ---------------------------------------------------------
    @property
    def native_mode(self) -> str | None:
        """torch's fused-kernel mode (``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``, ``"RNN_RELU"``)
        that equals this cell exactly, or ``None``. The built-in cells give it for their own
        class only, never for a subclass."""
        return None

    @property
    def output_size(self) -> int:
        """Size of ``h_t``, the output of one step."""
        return self.hidden_size

    def state_sizes(self) -> tuple[int, ...]:
        """Feature size of each state tensor, in the order of the state tuple."""
        return (self.output_size,) + (self.hidden_size,) * (self.num_states - 1)

    def params(self) -> Params:
        """The parameters one step reads, by name (the module's own, unmodified)."""
        return dict(self.named_parameters(recurse=False))

    # -- the public interface -----------------------------------------------------------------
    def init_state(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> State:
        """Zero state for ``batch_size`` sequences: ``(B, H)`` or a tuple of them."""
        check_size("batch_size", batch_size)
        ref = next(self.parameters())
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
        zeros = tuple(torch.zeros(batch_size, n, device=device, dtype=dtype)
                      for n in self.state_sizes())
        return zeros[0] if self.num_states == 1 else zeros

    def step(self, x_t: Tensor, state: State, params: Params | None = None) -> tuple[Tensor, State]:
        """One step: ``x_t`` ``(B, input_size)`` and the previous state to ``(h_t, state)``."""
        raise NotImplementedError

    def gates(self, x_t: Tensor, state: State, params: Params | None = None) -> Any:
        """The gate activations of one step, a NamedTuple of (B, H) tensors whose fields
        :attr:`gate_kinds` names; ``None`` for a cell that does not say (the default)."""
        return None

    def forward(self, x_t: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Same as :meth:`step`, with a zero state when ``state`` is ``None``."""
        if x_t.dim() != 2 or x_t.shape[-1] != self.input_size:
            raise ValueError(
                f"x_t must have shape (batch, {self.input_size}), got {tuple(x_t.shape)}")
        if state is None:
            state = self.init_state(x_t.shape[0], device=x_t.device, dtype=x_t.dtype)
        check_state("state", self, state, x_t.shape[0])
        return self.step(x_t, state)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"

    def reset_uniform(self) -> None:
        """torch.nn's initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)


def as_tuple(state: State) -> tuple[Tensor, ...]:
    """A state as a tuple of tensors, whatever the cell."""
    return state if isinstance(state, tuple) else (state,)


def from_tuple(cell: RecurrentCell, states: tuple[Tensor, ...]) -> State:
    """Inverse of :func:`as_tuple` for ``cell``."""
    return states[0] if cell.num_states == 1 else tuple(states)


def check_state(name: str, cell: RecurrentCell, state: object, batch_size: int) -> None:
    """Raise naming ``name`` unless ``state`` has the shapes ``cell`` expects for ``batch_size``."""
    expected = tuple((batch_size, n) for n in cell.state_sizes())
    if cell.num_states == 1 and isinstance(state, Tensor):
        got: tuple = (tuple(state.shape),)
    elif (cell.num_states > 1 and isinstance(state, (tuple, list))
          and all(isinstance(s, Tensor) for s in state)):
        got = tuple(tuple(s.shape) for s in state)
    else:
        kind = "a tensor" if cell.num_states == 1 else f"a tuple of {cell.num_states} tensors"
        raise TypeError(f"{name} must be {kind} for {type(cell).__name__}, "
                        f"got {type(state).__name__}")
    if got != expected:
        want = expected[0] if len(expected) == 1 else expected
        have = got[0] if cell.num_states == 1 else got
        raise ValueError(f"{name} must have shape {want} for {type(cell).__name__}, got {have}")
