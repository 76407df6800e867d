"""Character-level word representations: a vector for any word, seen in training or not.

- ``"lstm"``: a bidirectional recurrent layer over the word's characters; the vector is the
  forward output at the last character concatenated with the backward output at the first
  (Lample et al. 2016; Plank et al. 2016).
- ``"cnn"``: a 1-D convolution (width 3) over character embeddings, then max over positions
  (Ma and Hovy 2016).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnkit.cells.base import check_choice
from rnnkit.layers import stack

CHAR_ENCODERS = ("lstm", "cnn")


class CharEncoder(nn.Module):
    """Words as sequences of characters -> one vector per word.

    Args:
        num_chars: size of the character vocabulary (id ``pad`` is padding).
        char_dim: character embedding size.
        hidden_size: per direction for ``"lstm"``; filters for ``"cnn"``.
        kind: ``"lstm"`` or ``"cnn"``.
        cell: recurrent cell name for ``"lstm"`` (any of :func:`rnnkit.cells.make_cell`'s).
        pad: padding id.

    ``forward(chars (U, L), lengths (U,)) -> (U, output_size)``; lengths at least 1.
    ``output_size`` is ``2 * hidden_size`` for ``"lstm"``, ``hidden_size`` for ``"cnn"``.
    """

    def __init__(self, num_chars: int, char_dim: int = 32, hidden_size: int = 32,
                 kind: str = "lstm", cell: str = "lstm", pad: int = 0) -> None:
        super().__init__()
        self.kind = check_choice("char encoder", kind, CHAR_ENCODERS)
        self.embedding = nn.Embedding(num_chars, char_dim, padding_idx=pad)
        if kind == "lstm":
            self.rnn = stack(cell, char_dim, hidden_size, bidirectional=True)
            self.output_size = 2 * hidden_size
        else:
            self.conv = nn.Conv1d(char_dim, hidden_size, kernel_size=3, padding=1)
            self.output_size = hidden_size
        self.hidden_size = hidden_size

    def forward(self, chars: Tensor, lengths: Tensor) -> Tensor:
        x = self.embedding(chars)  # (U, L, C)
        if self.kind == "lstm":
            out = self.rnn(x, lengths=lengths).output  # (U, L, 2H)
            h = self.hidden_size
            last = (lengths - 1).clamp(min=0).to(out.device)
            fwd = out[torch.arange(out.shape[0], device=out.device), last, :h]  # (U, H)
            bwd = out[:, 0, h:]  # (U, H)
            return torch.cat([fwd, bwd], dim=-1)
        mask = torch.arange(chars.shape[1], device=chars.device)[None, :] < lengths[:, None]
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (U, L, F)
        y = y.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        return torch.relu(y.max(dim=1).values)
