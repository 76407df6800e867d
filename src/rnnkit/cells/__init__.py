"""Recurrent cells: one step each, ``(x_t, state) -> (h_t, state)``."""

from rnnkit.cells.base import RecurrentCell, State, as_tuple, check_state, from_tuple
from rnnkit.cells.cells import (
    CELLS,
    ElmanCell,
    GRUCell,
    LSTMCell,
    MinimalGRUCell,
    PeepholeLSTMCell,
    make_cell,
)

__all__ = [
    "CELLS",
    "ElmanCell",
    "GRUCell",
    "LSTMCell",
    "MinimalGRUCell",
    "PeepholeLSTMCell",
    "RecurrentCell",
    "State",
    "as_tuple",
    "check_state",
    "from_tuple",
    "make_cell",
]
