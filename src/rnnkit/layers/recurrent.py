"""``Recurrent(cell)``: one cell run over time, in one direction.

Handles what is the same for every cell: batch_first, variable lengths (a ``lengths`` tensor in
any order or a PackedSequence), reversal within each sequence's own length, initial states
(optionally learnable), variational dropout on inputs and outputs, DropConnect on the recurrent
weights, and the choice of engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit import engines
from rnnkit.cells.base import RecurrentCell, State, as_tuple, check_state, from_tuple
from rnnkit.layers.dropout import dropout


class RecurrentOutput(NamedTuple):
    """``(output, state)``: output (B, T, H_out) (or (T, B, H_out), or packed, like the input),
    zero past each sequence's length; state: the final state, each sequence's after its last
    step."""

    output: Tensor | PackedSequence
    state: object


class RecurrentTrace(NamedTuple):
    """:class:`RecurrentOutput` plus ``states``: the state after every step, one tensor per
    state tensor (h, and c for LSTMs) laid out like ``output`` (zero past each length)."""

    output: Tensor | PackedSequence
    state: object
    states: object


def check_probability(name: str, p: object) -> float:
    """Return ``p`` as a float if it is a probability in [0, 1), else raise naming it."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {p!r}")
    return float(p)


def check_lengths(lengths: object, batch_size: int, steps: int, device: torch.device) -> Tensor:
    """``lengths`` as a (B,) int64 tensor on ``device``, checked against the batch."""
    if isinstance(lengths, (list, tuple)):
        lengths = torch.tensor(lengths)
    if not isinstance(lengths, Tensor):
        raise TypeError(f"lengths must be a 1-D integer tensor, got {type(lengths).__name__}")
    if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool \
            or lengths.is_complex():
        raise TypeError(f"lengths must be a 1-D integer tensor, got {lengths.dim()}-D "
                        f"{lengths.dtype}")
    if lengths.shape[0] != batch_size:
        raise ValueError(f"lengths must have one entry per sequence ({batch_size}), "
                         f"got {lengths.shape[0]}")
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 1 or hi > steps:
        raise ValueError(f"lengths must lie in [1, {steps}] (the sequence length), "
                         f"got values from {lo} to {hi}")
    return lengths.to(device=device, dtype=torch.long)


def reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse time-major ``x`` (T, B, ...) within each sequence's own length; padding stays.

    Its own inverse."""
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T, device=x.device)[:, None]  # (T, 1)
    idx = torch.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)  # (T, B)
    idx = idx.view(T, -1, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, idx)


def variational_mask(p: float, batch: int, size: int, like: Tensor) -> Tensor:
    """A dropout mask (B, size), scaled by 1 / (1 - p), to be shared by every time step."""
    return dropout(like.new_ones(batch, size), p)


def unpack_input(x: Tensor | PackedSequence, batch_first: bool
                 ) -> tuple[Tensor, Tensor | None, PackedSequence | None]:
    """Time-major (T, B, I) input, lengths, and the packed input to re-pack the output like."""
    if isinstance(x, PackedSequence):
        padded, lengths = pad_packed_sequence(x)
        return padded, lengths, x
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a Tensor or a PackedSequence, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"input must have 3 dimensions ({'B, T' if batch_first else 'T, B'}, "
                         f"features), got shape {tuple(x.shape)}")
    return (x.transpose(0, 1) if batch_first else x), None, None


def pack_like(y: Tensor, packed: PackedSequence, lengths: Tensor) -> PackedSequence:
    """Pack time-major ``y`` (T, B, ...) with the same order as ``packed``."""
    order = packed.sorted_indices
    if order is None:
        return pack_padded_sequence(y, lengths.cpu(), enforce_sorted=True)
    data = pack_padded_sequence(y.index_select(1, order.to(y.device)),
                                lengths.cpu()[order.cpu()], enforce_sorted=True).data
    return PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)


def restore_layout(y: Tensor, batch_first: bool, packed: PackedSequence | None,
                   lengths: Tensor | None) -> Tensor | PackedSequence:
    """Time-major ``y`` back to the caller's layout: packed like the input, or batch-first."""
    if packed is not None:
        return pack_like(y, packed, lengths)
    return y.transpose(0, 1) if batch_first else y


class Recurrent(nn.Module):
    """A cell run over time in one direction.

    Args:
        cell: any :class:`rnnkit.cells.RecurrentCell`.
        batch_first: input and output are (B, T, F) when True, (T, B, F) when False.
        reverse: run from each sequence's last step to its first (within its own length);
            outputs are returned in the input's order.
        engine: ``"auto"``, ``"reference"``, ``"bptt"`` or ``"native"`` (see ``rnnkit.engines``).
        input_dropout: variational dropout on the input: one mask per sequence, every step.
        output_dropout: variational dropout on the output, likewise.
        dropconnect: DropConnect on the recurrent weights (Wan et al. 2013; AWD-LSTM's
            weight drop): one mask per forward call, every step.
        learn_init: learn the initial state (used when no state is given).

    Shapes: input (B, T, I) or packed; ``lengths`` (B,) in any order and on any device;
    output (B, T, H_out) zero past each length; state as the cell's (``(B, H)`` or ``(h, c)``).
    """

    def __init__(self, cell: RecurrentCell, batch_first: bool = True, reverse: bool = False,
                 engine: str = "auto", *, input_dropout: float = 0.0,
                 output_dropout: float = 0.0, dropconnect: float = 0.0,
                 learn_init: bool = False) -> None:
        super().__init__()
        if not isinstance(cell, RecurrentCell):
            raise TypeError(f"cell must be an rnnkit RecurrentCell, got {type(cell).__name__}")
        self.cell = cell
        self.batch_first = bool(batch_first)
        self.reverse = bool(reverse)
        engines.resolve_engine(engine, cell, torch.device("cpu"))  # checks name and support
        self.engine = engine
        self.input_dropout = check_probability("input_dropout", input_dropout)
        self.output_dropout = check_probability("output_dropout", output_dropout)
        self.dropconnect = check_probability("dropconnect", dropconnect)
        self.init_states = nn.ParameterList(
            [nn.Parameter(torch.zeros(n)) for n in cell.state_sizes()] if learn_init else [])

    @property
    def input_size(self) -> int:
        return self.cell.input_size

    @property
    def output_size(self) -> int:
        return self.cell.output_size

    def engine_for(self, device: torch.device, need_states: bool = False,
                   batch_size: int | None = None) -> str:
        """The concrete engine this layer runs on ``device`` (at ``batch_size``, when known:
        ``"auto"`` may measure, see :func:`rnnkit.engines.resolve_engine`)."""
        return engines.resolve_engine(self.engine, self.cell, device, need_states, batch_size)

    def initial_state(self, batch_size: int, like: Tensor) -> tuple[Tensor, ...]:
        """The initial state used when none is given: zeros or the learned one."""
        if len(self.init_states):
            return tuple(s.to(like.dtype).expand(batch_size, -1) for s in self.init_states)
        return as_tuple(self.cell.init_state(batch_size, device=like.device, dtype=like.dtype))

    def forward(self, x: Tensor | PackedSequence, state: State | None = None,
                lengths: Tensor | None = None, *, return_states: bool = False
                ) -> RecurrentOutput | RecurrentTrace:
        """Run over ``x``; see the class docstring for shapes.

        With ``return_states=True`` returns a :class:`RecurrentTrace` whose ``states`` holds
        the state after every step (h, and c for LSTMs)."""
        xt, packed_lengths, packed = unpack_input(x, self.batch_first)
        if packed is not None:
            if lengths is not None:
                raise ValueError("lengths must be None when the input is a PackedSequence")
            lengths = packed_lengths
        res = self.forward_time_major(xt, state, lengths, return_states)
        out = restore_layout(res.output, self.batch_first, packed, res.lengths)
        if not return_states:
            return RecurrentOutput(out, res.state)
        seqs = tuple(restore_layout(s, self.batch_first, packed, res.lengths) for s in res.states)
        return RecurrentTrace(out, res.state, from_tuple(self.cell, seqs))

    def forward_time_major(self, x: Tensor, state: State | None, lengths: Tensor | None,
                           need_states: bool = False) -> _TimeMajor:
        """The layer on time-major input (T, B, I); used by the stacking layers."""
        T, B, I = x.shape
        if self.cell.input_size != I:
            raise ValueError(f"input must have {self.cell.input_size} features (the cell's "
                             f"input_size), got {I}")
        if lengths is not None:
            lengths = check_lengths(lengths, B, T, x.device)
        run_lengths = None if lengths is None or bool((lengths == T).all()) else lengths
        if state is None:
            state_t = self.initial_state(B, x)
        else:
            check_state("state", self.cell, state, B)
            state_t = as_tuple(state)
        if self.training and self.input_dropout:
            x = x * variational_mask(self.input_dropout, B, I, x)
        if self.reverse:
            x = reverse_padded(x, run_lengths)
        params = self.cell.params()
        if self.training and self.dropconnect:
            for name in self.cell.recurrent_weights:
                params[name] = dropout(params[name], self.dropconnect)
        engine = self.engine_for(x.device, need_states, B)
        res = engines.run(engine, self.cell, params, x, state_t, run_lengths, need_states)
        out, states = res.output, res.states
        if self.reverse:
            out = reverse_padded(out, run_lengths)
            if states is not None:
                states = tuple(reverse_padded(s, run_lengths) for s in states)
        if self.training and self.output_dropout:
            out = out * variational_mask(self.output_dropout, B, out.shape[-1], out)
        return _TimeMajor(out, from_tuple(self.cell, res.state), states, lengths)

    def extra_repr(self) -> str:
        opts = [f"batch_first={self.batch_first}", f"engine={self.engine!r}"]
        if self.reverse:
            opts.append("reverse=True")
        for name in ("input_dropout", "output_dropout", "dropconnect"):
            if getattr(self, name):
                opts.append(f"{name}={getattr(self, name)}")
        return ", ".join(opts)


class _TimeMajor(NamedTuple):
    output: Tensor  # (T, B, H_out)
    state: object
    states: tuple[Tensor, ...] | None  # (T, B, n) each
    lengths: Tensor | None  # (B,) checked, on the input's device


def map_states(fn: Callable[[Tensor], Tensor], states: object) -> object:
    """Apply ``fn`` to every tensor of a (nested) state: tuples and lists keep their shape."""
    if isinstance(states, Tensor):
        return fn(states)
    if isinstance(states, (tuple, list)):
        return type(states)(map_states(fn, s) for s in states)
    if states is None:
        return None
    raise TypeError(f"a state must be a tensor or a tuple or list of them, got "
                    f"{type(states).__name__}")


def detach_states(states: object) -> object:
    """The state with every tensor detached: between truncated-BPTT windows."""
    return map_states(Tensor.detach, states)
