"""Layers: a cell over time, both directions, stacks with skip connections, torch.nn drop-ins."""

from rnnkit.layers.crf import CRF, ViterbiOutput, scheme_constraints
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
    "CRF",
    "GRU",
    "LSTM",
    "MERGES",
    "RNN",
    "Bidirectional",
    "Recurrent",
    "RecurrentOutput",
    "RecurrentTrace",
    "Stacked",
    "ViterbiOutput",
    "detach_states",
    "map_states",
    "reverse_padded",
    "scheme_constraints",
    "stack",
]
