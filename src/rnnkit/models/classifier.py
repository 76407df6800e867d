"""``Encoder`` (a sentence -> one vector) and ``Classifier`` (a sentence -> a label).

Architecture::

    x = dropout(embedding(w))                                  (B, T, E)
    h = recurrent stack(x), bidirectional by default           (B, T, D), D = 2H or H
    v = pool(h):                                               (B, D)
        last       the final state: forward output at each sentence's last token, joined with
                   the backward output at its first token
        mean       the mean over the sentence's tokens
        max        the element-wise max over its tokens (Conneau et al. 2017, InferSent)
        attention  sum_t a_t h_t, a = softmax_t(u . tanh(W h_t + b)) (Yang et al. 2016)
    logits = linear(dropout(v))                                (B, num_labels)

Padding never enters a pooled vector: ``lengths`` (B,) any order, every length at least 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import gemm
from rnnkit.cells.base import check_choice
from rnnkit.layers import stack
from rnnkit.layers.dropout import Dropout

POOLINGS = ("last", "mean", "max", "attention")


@dataclass
class EncoderConfig:
    """Everything needed to rebuild an :class:`Encoder` / :class:`Classifier`.

    ``cell_options`` are keyword options of every cell (the qrnn's ``{"window": 1}``), and
    ``layer_cell_options`` one mapping per layer over them (empty: none), as
    :class:`~rnnkit.models.lm.LMConfig`'s."""

    num_words: int
    num_labels: int = 0
    embed_dim: int = 128
    cell: str = "lstm"
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = True
    connection: str = "none"
    pooling: str = "max"
    dropout: float = 0.3
    pad_id: int = 0
    cell_options: dict = field(default_factory=dict)
    layer_cell_options: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        return cls(**data)


class Encoder(nn.Module):
    """A sentence encoder: ``forward(words (B, T), lengths (B,)) -> (B, output_size)``."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        check_choice("pooling", config.pooling, POOLINGS)
        self.config = config
        self.embedding = nn.Embedding(config.num_words, config.embed_dim,
                                      padding_idx=config.pad_id)
        self.dropout = Dropout(config.dropout)
        self.rnn = stack(config.cell, config.embed_dim, config.hidden_size, config.num_layers,
                         bidirectional=config.bidirectional, connection=config.connection,
                         dropout=config.dropout,
                         layer_options=config.layer_cell_options or None,
                         **config.cell_options)
        self.output_size = self.rnn.output_size
        if config.pooling == "attention":
            self.attend = nn.Linear(self.output_size, self.output_size)
            self.query = nn.Linear(self.output_size, 1, bias=False)
        gemm.adopt(self)  # its nn.Linear products on the machine's fastest GEMM

    def forward(self, words: Tensor, lengths: Tensor) -> Tensor:
        h = self.rnn(self.dropout(self.embedding(words)), lengths=lengths).output  # (B, T, D)
        lengths = lengths.to(h.device)
        mask = torch.arange(h.shape[1], device=h.device)[None, :] < lengths[:, None]  # (B, T)
        pooling = self.config.pooling
        if pooling == "last":
            rows = torch.arange(h.shape[0], device=h.device)
            last = h[rows, lengths - 1]  # (B, D)
            if not self.config.bidirectional:
                return last
            half = self.config.hidden_size
            return torch.cat([last[:, :half], h[:, 0, half:]], dim=-1)
        if pooling == "mean":
            return h.sum(1) / lengths[:, None].to(h.dtype)
        if pooling == "max":
            return h.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(dim=1).values
        scores = self.query(torch.tanh(self.attend(h))).squeeze(-1)  # (B, T)
        weights = F.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        return torch.bmm(weights.unsqueeze(1), h).squeeze(1)


class Classifier(nn.Module):
    """Sentence classifier: an :class:`Encoder` and a linear head.

    ``forward(words (B, T), lengths (B,)) -> logits (B, num_labels)``; ``.encoder`` gives the
    sentence vectors alone."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        if config.num_labels < 2:
            raise ValueError(f"num_labels must be at least 2, got {config.num_labels}")
        self.config = config
        self.encoder = Encoder(config)
        self.dropout = Dropout(config.dropout)
        self.head = nn.Linear(self.encoder.output_size, config.num_labels)
        gemm.adopt(self)  # its nn.Linear products on the machine's fastest GEMM

    def forward(self, words: Tensor, lengths: Tensor) -> Tensor:
        return self.head(self.dropout(self.encoder(words, lengths)))

    def loss(self, words: Tensor, lengths: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy over the batch."""
        return F.cross_entropy(self(words, lengths), labels)

    @torch.no_grad()
    def predict(self, words: Tensor, lengths: Tensor) -> Tensor:
        """Label ids (B,)."""
        return self(words, lengths).argmax(-1)
