"""Layers: a cell over time, both directions, stacks with skip connections, torch.nn drop-ins."""

from rnnkit.layers.bidirectional import MERGES, Bidirectional
from rnnkit.layers.crf import CRF, ViterbiOutput, scheme_constraints
from rnnkit.layers.dropin import GRU, LSTM, RNN
from rnnkit.layers.recurrent import (
    Recurrent,
    RecurrentOutput,
    RecurrentTrace,
    detach_states,
    map_states,
    reverse_padded,
)
from rnnkit.layers.stacking import CONNECTIONS, Stacked, stack

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
