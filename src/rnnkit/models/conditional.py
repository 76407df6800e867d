"""``ConditionalLM``: a language model whose initial state comes from a condition (one-to-many).

    e        = Embed_label(label)                              (B, C)
    a<0>_l   = tanh(W_l e + b_l)   for every layer l (and c<0>_l likewise for LSTMs)
    y<1..T>  = LanguageModel(x<1..T>, state = a<0>)

The language model is :class:`rnnkit.models.lm.LanguageModel` unchanged (every cell, stack
and decoder option); only its initial state is conditioned. Generation runs its
``step()`` / ``reorder_state()``: sampling here, beam search with ``rnnkit.generation``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from rnnkit import gemm
from rnnkit.generation.sampling import check_sampling, sample
from rnnkit.models.lm import LanguageModel, LMConfig


@dataclass
class ConditionalLMConfig:
    """A :class:`ConditionalLM`: the language model's config, the labels, the label size."""

    lm: dict
    labels: list[str] = field(default_factory=list)
    label_size: int = 64

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ConditionalLMConfig:
        return cls(**data)


class ConditionalLM(nn.Module):
    """A language model started from a label's state (see the module docstring).

    Shapes: ``labels`` (B,) label ids; ``tokens`` (B, T); logits (B, T, V); the state is the
    language model's (a list with each layer's state).
    """

    def __init__(self, config: ConditionalLMConfig) -> None:
        super().__init__()
        self.config = config
        if not config.labels:
            raise ValueError("a ConditionalLM needs at least one label")
        self.lm = LanguageModel(LMConfig.from_dict(config.lm))
        self.label_embedding = nn.Embedding(len(config.labels), config.label_size)
        self.bridge = nn.ModuleList()
        for layer in self.lm.rnn.layers:
            sizes = layer.cell.state_sizes()
            self.bridge.append(nn.ModuleList(nn.Linear(config.label_size, n) for n in sizes))
        gemm.adopt(self)  # its nn.Linear products on the machine's fastest GEMM

    def label_id(self, label: str) -> int:
        """The id of ``label``; ValueError listing the known labels otherwise."""
        try:
            return self.config.labels.index(label)
        except ValueError:
            raise ValueError(f"unknown condition {label!r}; this model knows "
                             f"{', '.join(self.config.labels)}") from None

    def initial_state(self, labels: Tensor) -> list:
        """The language model's initial state for ``labels`` (B,): a<0> of every layer."""
        e = self.label_embedding(labels)  # (B, C)
        states = []
        for layer, projs in zip(self.lm.rnn.layers, self.bridge):
            parts = tuple(torch.tanh(p(e)) for p in projs)
            states.append(parts[0] if layer.cell.num_states == 1 else parts)
        return states

    def forward(self, labels: Tensor, tokens: Tensor) -> Tensor:
        """Logits (B, T, V) of the token after each of ``tokens`` (B, T), given ``labels``."""
        return self.lm(tokens, self.initial_state(labels)).logits

    def step(self, tokens: Tensor, state: list) -> tuple[Tensor, list]:
        """One step: ``tokens`` (B,) -> logits (B, V) and the new state."""
        return self.lm.step(tokens, state)

    @staticmethod
    def reorder_state(state: list, index: Tensor) -> list:
        return LanguageModel.reorder_state(state, index)

    @torch.no_grad()
    def generate(self, labels: Tensor, bos: int, eos: int, max_len: int,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None) -> list[list[int]]:
        """Sample one sequence per label of ``labels`` (B,), from ``bos`` until ``eos`` (not
        included) or ``max_len`` tokens; returns the ids of each."""
        check_sampling(temperature, top_k, top_p)
        was = self.training
        self.eval()
        gen = None
        if seed is not None:
            gen = torch.Generator(device=labels.device).manual_seed(int(seed))
        try:
            state = self.initial_state(labels)
            tokens = torch.full_like(labels, bos)
            out: list[list[int]] = [[] for _ in range(labels.shape[0])]
            done = [False] * labels.shape[0]
            for _ in range(max_len):
                logits, state = self.step(tokens, state)
                tokens = sample(logits, temperature, top_k, top_p, generator=gen)
                for b, t in enumerate(tokens.tolist()):
                    if done[b]:
                        continue
                    if t == eos:
                        done[b] = True
                    else:
                        out[b].append(t)
                if all(done):
                    break
        finally:
            self.train(was)
        return out
