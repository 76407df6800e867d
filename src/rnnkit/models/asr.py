"""The acoustic model of speech recognition: log-mel frames in, per-frame log-probabilities of
the characters and the CTC blank out.

    frames (B, T, n_mels) -> stack every ``subsample`` frames (B, T / k, k n_mels)
        -> [dropout] -> an rnnkit stack of any cell, bidirectional unless streaming
        -> [dropout] -> linear -> log_softmax over V = 1 + characters  (index 0: the blank)

Frame stacking (Sak et al. 2015) shortens time k times at no cost, and it is causal: a
unidirectional model can run on audio as it arrives (:meth:`AcousticModel.stream_step`).

Output delay (Sak et al. 2015's target delay): a unidirectional model with ``delay`` D runs
D steps of zeros past each utterance's end and emits output t at its step t + D, so it has
heard D steps (D x 10 k ms) past t before it speaks. Without it, a unidirectional CTC model
can lock into guessing the first word from its initial state alone (it has heard nothing
yet when the first steps' labels are due; RESULTS.md shows one that got the first word of
19 dev utterances of 300 right).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import gemm
from rnnkit.data.features import FeatureConfig
from rnnkit.layers import stack
from rnnkit.layers.dropout import Dropout

BLANK = 0


@dataclass
class ASRConfig:
    """The acoustic model (``config.json``'s ``"model"``).

    Attributes:
        alphabet: the characters, in output order after the blank (index i + 1).
        features: how audio becomes frames (:class:`~rnnkit.data.features.FeatureConfig`).
        subsample: frames stacked into one step (2-4: 20-40 ms steps).
        cell, hidden_size, num_layers: the recurrent stack.
        bidirectional: False for a streaming model.
        delay: steps a unidirectional model hears past each output before emitting it (0
            for a bidirectional one; see the module docstring).
        dropout: on the stack's input, between layers and before the output layer.
        cell_options: keyword options of every cell (the qrnn's ``{"window": 1}``), and
            layer_cell_options one mapping per layer over them (empty: none), as
            :class:`~rnnkit.models.lm.LMConfig`'s.
        mean, std: the training set's per-band statistics (``features.normalisation ==
            "global"``), else None.
    """

    alphabet: list[str]
    features: FeatureConfig = field(default_factory=FeatureConfig)
    subsample: int = 3
    cell: str = "lstm"
    hidden_size: int = 256
    num_layers: int = 3
    bidirectional: bool = True
    delay: int = 0
    dropout: float = 0.2
    cell_options: dict = field(default_factory=dict)
    layer_cell_options: list[dict] = field(default_factory=list)
    mean: list[float] | None = None
    std: list[float] | None = None

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 1

    @property
    def char_ids(self) -> dict[str, int]:
        """Each character's output index (the blank is 0)."""
        return {c: i + 1 for i, c in enumerate(self.alphabet)}

    def output_steps(self, frames):
        """Steps after stacking, for ``frames`` frames (an int or a tensor of them): a last
        partial group of ``subsample`` frames is dropped."""
        return frames // self.subsample

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = self.features.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict) -> ASRConfig:
        data = dict(data)
        data["features"] = FeatureConfig(**data.get("features", {}))
        return cls(**data)


class AcousticModel(nn.Module):
    """The CTC acoustic model of :class:`ASRConfig` (see the module docstring)."""

    def __init__(self, config: ASRConfig) -> None:
        super().__init__()
        self.config = config
        k, mels = config.subsample, config.features.n_mels
        if k < 1:
            raise ValueError(f"subsample must be a positive int, got {k}")
        if config.delay < 0 or (config.delay and config.bidirectional):
            raise ValueError(f"delay must be 0 for a bidirectional model and >= 0 for a "
                             f"unidirectional one, got {config.delay}")
        self.drop = Dropout(config.dropout)
        self.rnn = stack(config.cell, k * mels, config.hidden_size, config.num_layers,
                         bidirectional=config.bidirectional, dropout=config.dropout,
                         layer_options=config.layer_cell_options or None,
                         **config.cell_options)
        self.output = nn.Linear(self.rnn.output_size, config.vocab_size)
        gemm.adopt(self)  # its nn.Linear products on the machine's fastest GEMM

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Steps after stacking, for ``lengths`` frames (:meth:`ASRConfig.output_steps`)."""
        return self.config.output_steps(lengths)

    def stack_frames(self, frames: Tensor) -> Tensor:
        """(B, T, n_mels) -> (B, T // k, k n_mels)."""
        B, T, M = frames.shape
        k = self.config.subsample
        steps = T // k
        return frames[:, :steps * k].reshape(B, steps, k * M)

    def forward(self, frames: Tensor, lengths: Tensor, state: list | None = None
                ) -> tuple[Tensor, Tensor, list]:
        """Log-probabilities (B, T', V) over the blank and the alphabet, their lengths (B,)
        and the final state, for normalised frames (B, T, n_mels) of ``lengths`` (B,)."""
        x = self.stack_frames(frames)
        out_lengths = self.output_lengths(lengths).clamp_min(1)
        if x.shape[1] == 0:
            x = x.new_zeros(x.shape[0], 1, x.shape[2])
        steps, delay = x.shape[1], self.config.delay
        run_lengths = out_lengths.to(x.device)
        if delay:  # zeros from each utterance's end (a last partial group too) for D steps
            past_end = torch.arange(steps, device=x.device) >= run_lengths[:, None]
            x = F.pad(x.masked_fill(past_end[..., None], 0.0), (0, 0, 0, delay))
            run_lengths = run_lengths + delay
        res = self.rnn(self.drop(x), state, lengths=run_lengths)
        logits = self.output(self.drop(res.output[:, delay:delay + steps]))
        return F.log_softmax(logits, dim=-1), out_lengths, res.state

    def stream_step(self, stacked: Tensor, state: list | None) -> tuple[Tensor, list]:
        """A unidirectional model on the next stacked steps (1, S, k n_mels) from ``state``:
        log-probabilities (1, S, V) and the state after them. With a ``delay`` D the first D
        outputs of an utterance are not its (drop them), and D steps of zeros after its last
        step bring out its last D (``tasks.asr.stream`` does both)."""
        if self.config.bidirectional:
            raise ValueError("a bidirectional model cannot stream: it reads each utterance to "
                             "its end (train with --unidirectional)")
        res = self.rnn(stacked, state)
        return F.log_softmax(self.output(res.output), dim=-1), res.state


__all__ = ["ASRConfig", "AcousticModel", "BLANK"]
