"""``Tagger``: one tag per token (part of speech, named entities), T_x = T_y.

Architecture (Plank et al. 2016; Lample et al. 2016)::

    x_t = [word_embedding(w_t) ; char_encoder(characters of w_t)]     (B, T, E + C)
    h   = bidirectional recurrent stack(dropout(x))                   (B, T, 2H)
    e   = linear(dropout(h))                                          (B, T, K) emissions
    output: softmax over e_t per token, or a linear-chain CRF over e (rnnkit.layers.CRF)

The character encoder gives every word a vector, so words unseen in training are still tagged
by their spelling. ``word_dropout`` replaces training words by ``<unk>`` with that probability,
so that the ``<unk>`` embedding is trained too.

Padding-aware throughout: ``lengths`` (B,) in any order; padded positions are ignored by the
loss and the decoder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import gemm
from rnnkit.cells.base import check_choice
from rnnkit.layers import CRF, scheme_constraints, stack
from rnnkit.layers.dropout import Dropout
from rnnkit.models.chars import CharEncoder

CHAR_KINDS = ("lstm", "cnn", "none")


@dataclass
class TaggerConfig:
    """Everything needed to rebuild a :class:`Tagger` (saved in the run's config.json).

    ``tags`` (the tag names, in id order) and ``scheme`` give the CRF's transition constraints
    when ``crf`` and ``constrained`` are set. ``cell_options`` are keyword options of every
    cell (the qrnn's ``{"window": 1}``), and ``layer_cell_options`` one mapping per layer over
    them (empty: none), as :class:`~rnnkit.models.lm.LMConfig`'s."""

    num_words: int
    num_tags: int
    num_chars: int = 0
    word_dim: int = 100
    char_dim: int = 32
    char_hidden: int = 50
    char_encoder: str = "lstm"
    cell: str = "lstm"
    hidden_size: int = 128
    num_layers: int = 1
    connection: str = "none"
    dropout: float = 0.33
    word_dropout: float = 0.05
    crf: bool = False
    constrained: bool = True
    scheme: str = "none"
    tags: list[str] = field(default_factory=list)
    cell_options: dict = field(default_factory=dict)
    layer_cell_options: list[dict] = field(default_factory=list)
    unk_id: int = 0
    pad_id: int = 0
    char_pad_id: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TaggerConfig:
        return cls(**data)


class TaggerBatch(NamedTuple):
    """A batch for :class:`Tagger` (build with :func:`rnnkit.data.padding.word_characters`).

    words (B, T) long; lengths (B,) long; chars (U, L) long, the characters of the U distinct
    words of the batch; char_lengths (U,); char_index (B, T) long, each token's row in chars;
    tags (B, T) long or ``None``."""

    words: Tensor
    lengths: Tensor
    chars: Tensor | None = None
    char_lengths: Tensor | None = None
    char_index: Tensor | None = None
    tags: Tensor | None = None

    def to(self, device: torch.device | str) -> TaggerBatch:
        return TaggerBatch(*(None if x is None else x.to(device) for x in self))


class Tagger(nn.Module):
    """Sequence tagger; see the module docstring.

    Methods: :meth:`emissions` (B, T, K) scores; :meth:`loss` (mean per token);
    :meth:`decode` the best tags (argmax, or Viterbi with a CRF), as lists of ids.
    """

    def __init__(self, config: TaggerConfig) -> None:
        super().__init__()
        check_choice("char_encoder", config.char_encoder, CHAR_KINDS)
        self.config = config
        self.embedding = nn.Embedding(config.num_words, config.word_dim)
        size = config.word_dim
        self.chars: CharEncoder | None = None
        if config.char_encoder != "none":
            if config.num_chars < 1:
                raise ValueError("num_chars must be positive with a character encoder")
            self.chars = CharEncoder(config.num_chars, config.char_dim, config.char_hidden,
                                     config.char_encoder, pad=config.char_pad_id)
            size += self.chars.output_size
        self.dropout = Dropout(config.dropout)
        self.rnn = stack(config.cell, size, config.hidden_size, config.num_layers,
                         bidirectional=True, connection=config.connection,
                         dropout=config.dropout,
                         layer_options=config.layer_cell_options or None,
                         **config.cell_options)
        self.output = nn.Linear(self.rnn.output_size, config.num_tags)
        self.crf: CRF | None = None
        if config.crf:
            masks = (None, None, None)
            if config.constrained and config.scheme != "none" and config.tags:
                masks = scheme_constraints(config.tags, config.scheme)
            self.crf = CRF(config.num_tags, *masks)
        gemm.adopt(self)  # its nn.Linear products on the machine's fastest GEMM

    def features(self, batch: TaggerBatch) -> Tensor:
        """Token features [word ; chars] (B, T, E + C), before dropout."""
        words = batch.words
        if self.training and self.config.word_dropout > 0:
            drop = torch.rand(words.shape, device=words.device) < self.config.word_dropout
            words = words.masked_fill(drop, self.config.unk_id)
        x = self.embedding(words)
        if self.chars is not None:
            if batch.chars is None:
                raise ValueError("this tagger reads characters: the batch has no chars")
            per_word = self.chars(batch.chars, batch.char_lengths)  # (U, C)
            x = torch.cat([x, per_word[batch.char_index]], dim=-1)
        return x

    def emissions(self, batch: TaggerBatch) -> Tensor:
        """Per-token tag scores (B, T, K); rows past each length are meaningless."""
        h = self.rnn(self.dropout(self.features(batch)), lengths=batch.lengths).output
        return self.output(self.dropout(h))

    def mask(self, batch: TaggerBatch) -> Tensor:
        steps = torch.arange(batch.words.shape[1], device=batch.words.device)
        return steps[None, :] < batch.lengths.to(batch.words.device)[:, None]

    def loss(self, batch: TaggerBatch) -> Tensor:
        """Mean loss per token: cross-entropy, or the CRF's negative log-likelihood."""
        if batch.tags is None:
            raise ValueError("the batch has no tags to compute a loss")
        e = self.emissions(batch)
        if self.crf is not None:
            return self.crf.nll(e, batch.tags, batch.lengths.to(e.device), "token_mean")
        mask = self.mask(batch)
        return F.cross_entropy(e[mask], batch.tags[mask])

    @torch.no_grad()
    def decode(self, batch: TaggerBatch) -> list[list[int]]:
        """The best tag ids of each sentence (its own length)."""
        e = self.emissions(batch)
        if self.crf is not None:
            best = self.crf.viterbi(e, batch.lengths.to(e.device)).tags
        else:
            best = e.argmax(-1)
        return [row[:n].tolist() for row, n in zip(best.cpu(), batch.lengths.tolist())]
