"""rnnkit: recurrent neural networks for PyTorch.

Cells from their equations (``rnnkit.cells``), three engines to run them over time
(``rnnkit.engines``), layers that stack and combine them (``rnnkit.layers``) and drop-in
replacements for torch.nn's recurrent layers (``rnnkit.RNN``, ``rnnkit.LSTM``, ``rnnkit.GRU``).
"""

from rnnkit.cells import (
    ElmanCell,
    GRUCell,
    LSTMCell,
    MinimalGRUCell,
    PeepholeLSTMCell,
    make_cell,
)
from rnnkit.layers import GRU, LSTM, RNN, Bidirectional, Recurrent, Stacked, stack

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "Bidirectional",
    "ElmanCell",
    "GRUCell",
    "LSTMCell",
    "MinimalGRUCell",
    "PeepholeLSTMCell",
    "Recurrent",
    "Stacked",
    "make_cell",
    "stack",
]
