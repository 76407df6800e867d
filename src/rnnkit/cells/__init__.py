"""Recurrent cells: one step each, ``(x_t, state) -> (h_t, state)``.

One file per family (``elman``, ``lstm``, ``gru``, ``scan``) beside the contract every cell follows
(``base``). :data:`CELLS` is the one registry of cell names: the CLI's ``--cell`` choices,
:func:`make_cell` and the documentation's table (:func:`cell_table`) all read it.
"""

from __future__ import annotations

import warnings
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
from rnnkit.cells.scan import MinGRUCell, MinLSTMCell, QRNNCell, ScanCell, ScanCoefficients


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
    "gru-simple": CellSpec(MinimalGRUCell, {}, "the notes' simplified GRU: the update gate "
                           "only, computed from c<t-1> (was `mingru`)"),
    "scan-gru": CellSpec(MinGRUCell, {}, "minGRU (Feng et al. 2024): gates from the input "
                         "alone, a linear scan"),
    "scan-lstm": CellSpec(MinLSTMCell, {}, "minLSTM (Feng et al. 2024): normalised forget "
                          "and input gates, a linear scan"),
    "qrnn": CellSpec(QRNNCell, {}, "QRNN (Bradbury et al. 2016), fo-pooling, window 2"),
}

#: the registered names, in the order the CLI shows them
CELL_NAMES: tuple[str, ...] = tuple(CELLS)
#: names of earlier releases -> today's (CHANGELOG.md); they still work, with a warning
DEPRECATED_CELLS: dict[str, str] = {"mingru": "gru-simple"}


def canonical_cell(name: object) -> object:
    """Today's name of a cell named ``name`` (a deprecated name becomes its successor, with a
    :class:`DeprecationWarning`); any other value is returned as given, for the caller's
    check."""
    if isinstance(name, str) and name in DEPRECATED_CELLS:
        new = DEPRECATED_CELLS[name]
        warnings.warn(f"cell {name!r} is now called {new!r} (the notes' simplified GRU; Feng et "
                      f"al.'s minGRU is 'scan-gru'); the old name will be removed",
                      DeprecationWarning, stacklevel=3)
        return new
    return name


def make_cell(name: str, input_size: int, hidden_size: int, **options: object) -> RecurrentCell:
    """Build a cell by its registered name (one of :data:`CELL_NAMES`); ``options`` go to its
    constructor, over the options the name fixes."""
    name = canonical_cell(name)
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
    "DEPRECATED_CELLS",
    "LN_EPS",
    "CellSpec",
    "ElmanCell",
    "ElmanGates",
    "GRUCell",
    "GRUGates",
    "LSTMCell",
    "LSTMGates",
    "MinimalGRUCell",
    "MinGRUCell",
    "MinLSTMCell",
    "MinimalGRUGates",
    "Params",
    "PeepholeGates",
    "PeepholeLSTMCell",
    "QRNNCell",
    "RecurrentCell",
    "ScanCell",
    "ScanCoefficients",
    "State",
    "as_tuple",
    "canonical_cell",
    "cell_table",
    "check_state",
    "from_tuple",
    "layer_norm",
    "make_cell",
]
