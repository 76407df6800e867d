"""Both directions over one input: ``Bidirectional(fwd, bwd, merge)``."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkit.cells.base import check_choice
from rnnkit.layers.recurrent import (
    Recurrent,
    RecurrentOutput,
    RecurrentTrace,
    _TimeMajor,
    map_states,
    restore_layout,
    unpack_input,
)

MERGES = ("concat", "sum", "mean")


def finish(res: _TimeMajor, batch_first: bool, packed: PackedSequence | None,
            return_states: bool) -> RecurrentOutput | RecurrentTrace:
    out = restore_layout(res.output, batch_first, packed, res.lengths)
    if not return_states:
        return RecurrentOutput(out, res.state)
    states = map_states(lambda s: restore_layout(s, batch_first, packed, res.lengths), res.states)
    return RecurrentTrace(out, res.state, states)


def cell_states(layer: Recurrent, seqs: tuple[Tensor, ...] | None) -> object:
    return None if seqs is None else (seqs[0] if layer.cell.num_states == 1 else seqs)


class Bidirectional(nn.Module):
    """Two recurrent layers over the same input, one forward and one reversed.

    Args:
        fwd: a :class:`Recurrent` with ``reverse=False``.
        bwd: a :class:`Recurrent` with ``reverse=True`` (it reads each sequence from its own
            last step).
        merge: ``"concat"`` (output 2H), ``"sum"`` or ``"mean"`` (output H).

    ``forward(x, state=None, lengths=None)`` returns ``(output, (state_fwd, state_bwd))``;
    ``state`` is given the same way.
    """

    def __init__(self, fwd: Recurrent, bwd: Recurrent, merge: str = "concat") -> None:
        super().__init__()
        for name, layer, rev in (("fwd", fwd, False), ("bwd", bwd, True)):
            if not isinstance(layer, Recurrent):
                raise TypeError(f"{name} must be a Recurrent layer, got {type(layer).__name__}")
            if layer.reverse != rev:
                raise ValueError(f"{name} must have reverse={rev}, got reverse={layer.reverse}")
        if fwd.input_size != bwd.input_size:
            raise ValueError(f"fwd and bwd must read the same input size, got "
                             f"{fwd.input_size} and {bwd.input_size}")
        if fwd.batch_first != bwd.batch_first:
            raise ValueError("fwd and bwd must agree on batch_first")
        self.merge = check_choice("merge", merge, MERGES)
        if merge != "concat" and fwd.output_size != bwd.output_size:
            raise ValueError(f"merge={merge!r} needs equal output sizes, got "
                             f"{fwd.output_size} and {bwd.output_size}")
        self.fwd, self.bwd = fwd, bwd

    @property
    def batch_first(self) -> bool:
        return self.fwd.batch_first

    def fwd_bwd(self) -> tuple[Recurrent, Recurrent]:
        """The two directions, forward first."""
        return self.fwd, self.bwd

    @property
    def input_size(self) -> int:
        return self.fwd.input_size

    @property
    def output_size(self) -> int:
        if self.merge == "concat":
            return self.fwd.output_size + self.bwd.output_size
        return self.fwd.output_size

    def forward(self, x: Tensor | PackedSequence, state: object = None,
                lengths: Tensor | None = None, *, return_states: bool = False
                ) -> RecurrentOutput | RecurrentTrace:
        """Run both directions; shapes as :class:`Recurrent`, output features per ``merge``."""
        xt, packed_lengths, packed = unpack_input(x, self.batch_first)
        lengths = packed_lengths if packed is not None else lengths
        res = self.forward_time_major(xt, state, lengths, return_states)
        return finish(res, self.batch_first, packed, return_states)

    def forward_time_major(self, x: Tensor, state: object, lengths: Tensor | None,
                           need_states: bool = False) -> _TimeMajor:
        if state is None:
            state = (None, None)
        elif not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError("state of a Bidirectional layer must be a pair "
                            "(state_fwd, state_bwd)")
        f = self.fwd.forward_time_major(x, state[0], lengths, need_states)
        b = self.bwd.forward_time_major(x, state[1], lengths, need_states)
        if self.merge == "concat":
            out = torch.cat([f.output, b.output], dim=-1)
        else:
            out = f.output + b.output
            if self.merge == "mean":
                out = out * 0.5
        states = None
        if need_states:
            states = (cell_states(self.fwd, f.states), cell_states(self.bwd, b.states))
        return _TimeMajor(out, (f.state, b.state), states, f.lengths)

    def extra_repr(self) -> str:
        return f"merge={self.merge!r}"


