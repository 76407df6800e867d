"""Recurrent cells: one step each, ``(x_t, state) -> (h_t, state)``.

One file per family (``elman``, ``lstm``, ``gru``) beside the contract every cell follows
(``base``). :data:`CELLS` is the one registry of cell names: the CLI's ``--cell`` choices,
:func:`make_cell` and the documentation's table (:func:`cell_table`) all read it.
"""

from __future__ import annotations

from typing import NamedTuple

from rnnkit.cells.base import (
    LN_EPS,
    Params,
    RecurrentCell,
    State,
    as_tuple,
    check_choice,
    check_size,
    check_state,
    from_tuple,
    layer_norm,
)
from rnnkit.cells.elman import ElmanCell, ElmanGates
from rnnkit.cells.gru import GRUCell, GRUGates, MinimalGRUCell, MinimalGRUGates
from rnnkit.cells.lstm import LSTMCell, LSTMGates, PeepholeGates, PeepholeLSTMCell


class CellSpec(NamedTuple):
    """A registered cell name: its class, the constructor options the name fixes, and a
    one-line description for the documentation."""

    cls: type[RecurrentCell]
    options: dict
    summary: str


CELLS: dict[str, CellSpec] = {
    "rnn": CellSpec(ElmanCell, {}, "torch.nn.RNN's cell (tanh)"),
    "rnn-relu": CellSpec(ElmanCell, {"nonlinearity": "relu"}, "torch.nn.RNN's cell (relu)"),
    "lstm": CellSpec(LSTMCell, {}, "torch.nn.LSTM's cell, gates i, f, g, o"),
    "peephole": CellSpec(PeepholeLSTMCell, {}, "Gers and Schmidhuber 2000, diagonal peepholes"),
    "gru": CellSpec(GRUCell, {"reset": "after"}, "torch.nn.GRU's cell exactly"),
    "gru-before": CellSpec(GRUCell, {"reset": "before"},
                           "the original GRU (Cho et al. 2014), the notes' full GRU"),
    "mingru": CellSpec(MinimalGRUCell, {}, "the notes' simplified GRU, update gate only"),
}

#: the registered names, in the order the CLI shows them
CELL_NAMES: tuple[str, ...] = tuple(CELLS)


def make_cell(name: str, input_size: int, hidden_size: int, **options: object) -> RecurrentCell:
    """Build a cell by its registered name (one of :data:`CELL_NAMES`); ``options`` go to its
    constructor, over the options the name fixes."""
    check_choice("cell", name, CELL_NAMES)
    check_size("input_size", input_size)
    check_size("hidden_size", hidden_size)
    cls, defaults, _ = CELLS[name]
    try:
        return cls(input_size, hidden_size, **{**defaults, **options})
    except TypeError as err:
        raise TypeError(f"cell {name!r} ({cls.__name__}): {err}") from None


def cell_table() -> str:
    """The markdown table of the registered cells (README's "Cells" table)."""
    rows = ["| name | class | notes |", "|---|---|---|"]
    for name, (cls, options, summary) in CELLS.items():
        opts = ", ".join(f"{k}={v!r}" for k, v in options.items())
        rows.append(f"| `{name}` | `{cls.__name__}({opts})` | {summary} |")
    return "\n".join(rows)


__all__ = [
    "CELLS",
    "CELL_NAMES",
    "LN_EPS",
    "CellSpec",
    "ElmanCell",
    "ElmanGates",
    "GRUCell",
    "GRUGates",
    "LSTMCell",
    "LSTMGates",
    "MinimalGRUCell",
    "MinimalGRUGates",
    "Params",
    "PeepholeGates",
    "PeepholeLSTMCell",
    "RecurrentCell",
    "State",
    "as_tuple",
    "cell_table",
    "check_state",
    "from_tuple",
    "layer_norm",
    "make_cell",
]
