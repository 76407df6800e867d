"""Layers: a cell over time, both directions, stacks with skip connections, torch.nn drop-ins."""

from rnnkit.layers.dropin import GRU, LSTM, RNN
from rnnkit.layers.recurrent import Recurrent, RecurrentOutput, RecurrentTrace, reverse_padded
from rnnkit.layers.stacking import (
    CONNECTIONS,
    MERGES,
    Bidirectional,
    Stacked,
    detach_states,
    map_states,
    stack,
)

__all__ = [
    "CONNECTIONS",
    "GRU",
    "LSTM",
    "MERGES",
    "RNN",
    "Bidirectional",
    "Recurrent",
    "RecurrentOutput",
    "RecurrentTrace",
    "Stacked",
    "detach_states",
    "map_states",
    "reverse_padded",
    "stack",
]
