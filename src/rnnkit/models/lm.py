"""``LanguageModel``: embedding -> any rnnkit recurrent stack -> decoder, and generation.

::

    config = LMConfig(vocab_size=len(vocab), embedding_size=256, hidden_size=512, num_layers=2,
                      cell="lstm", dropout=0.2, tie_weights=True)
    model = LanguageModel(config)
    loss, state = model.loss(inputs, targets, state)           # (B, T) ids -> mean nats/token
    ids = model.generate(prompt_ids, max_new_tokens=200, temperature=0.8, top_k=40, seed=1)

The recurrent part is :func:`rnnkit.layers.stack` with every option of it (cell, engine,
connection, dropout between layers, variational dropout, per-layer input/output dropout,
DropConnect, learned initial state, cell options such as ``layer_norm``). The decoder is a
linear layer (its weight tied to the embedding with ``tie_weights``, Press and Wolf 2017, through
a projection when the stack's output size differs from the embedding size), or an adaptive
softmax (Grave et al. 2017) with ``adaptive_cutoffs``.

Generation runs :meth:`LanguageModel.step`: one token for a batch, no autograd, through the
stack's :meth:`~rnnkit.layers.Stacked.step` (for plain LSTM layers on pre-transposed,
contiguous weights, ``[W_ih W_hh]^T`` as (I + H, 4H)) and the decoder as (D, V), since
decoding one token is bound by reading the weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple

import torch
from torch import Tensor, nn

from rnnkit import gemm
from rnnkit.cells.base import from_tuple
from rnnkit.data.lm import IGNORE
from rnnkit.generation.sampling import check_sampling, sample
from rnnkit.layers.dropout import Dropout
from rnnkit.layers.recurrent import map_states
from rnnkit.layers.stacking import stack
from rnnkit.losses import adaptive_cross_entropy, linear_cross_entropy

#: an untied decoder's weights are U(-0.2, 0.2): against +-0.1 (and nn.Linear's +-1/sqrt(fan-in))
#: the larger logits learn faster from the first steps, at 1 x 64 (150 steps: 2.60 against 2.68
#: nats/char) and for the 2 x 384 default alike (1,700 steps: 1.425 against 1.438);
#: ``benchmarks/lm_defaults.py``, benchmarks/RESULTS.md
DECODER_INIT = 0.2


@dataclass
class LMConfig:
    """Everything needed to rebuild a :class:`LanguageModel` (saved in ``config.json``).

    Attributes:
        vocab_size: V.
        embedding_size: E.
        hidden_size: H of every recurrent layer.
        num_layers: recurrent layers.
        cell: ``"lstm"``, ``"gru"``, ``"gru-before"``, ``"rnn"``, ``"rnn-relu"``,
            ``"peephole"``, ``"gru-simple"``, ``"scan-gru"``, ``"scan-lstm"`` or ``"qrnn"``.
        engine: ``"auto"``, ``"bptt"``, ``"native"`` or ``"reference"``.
        connection: ``"none"``, ``"residual"``, ``"dense"`` or ``"highway"``.
        dropout: dropout between recurrent layers (variational when ``variational``).
        embedding_dropout: dropout on the embeddings.
        output_dropout: dropout on the stack's output, before the decoder.
        layer_input_dropout / layer_output_dropout: each layer's variational dropout.
        dropconnect: DropConnect on the recurrent weights (AWD-LSTM's weight drop).
        learn_init: learn the initial state.
        cell_options: keyword options of every cell, e.g. ``{"layer_norm": True}``.
        layer_cell_options: one mapping per layer over ``cell_options`` (empty: none), e.g.
            AWD-LSTM's QRNN windows ``[{"window": 2}, {"window": 1}]``.
        tie_weights: share the embedding and the decoder weight.
        adaptive_cutoffs: cutoffs of an adaptive softmax (``None``: a full softmax).
        adaptive_div_value: its ``div_value``.
    """

    vocab_size: int
    embedding_size: int = 256
    hidden_size: int = 512
    num_layers: int = 2
    cell: str = "lstm"
    engine: str = "auto"
    connection: str = "none"
    dropout: float = 0.0
    embedding_dropout: float = 0.0
    output_dropout: float = 0.0
    variational: bool = False
    layer_input_dropout: float = 0.0
    layer_output_dropout: float = 0.0
    dropconnect: float = 0.0
    learn_init: bool = False
    cell_options: dict = field(default_factory=dict)
    layer_cell_options: list[dict] = field(default_factory=list)
    tie_weights: bool = False
    adaptive_cutoffs: list[int] | None = None
    adaptive_div_value: float = 4.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LMConfig:
        """Inverse of :meth:`to_dict`; ValueError naming unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown language-model options {unknown}")
        return cls(**data)


class LMOutput(NamedTuple):
    """``logits`` (B, T, V) (log-probabilities with an adaptive softmax) and the final
    ``state``: a list with each layer's state."""

    logits: Tensor
    state: list


class LanguageModel(nn.Module):
    """A recurrent language model (see the module docstring).

    Shapes: tokens (B, T) int64; logits (B, T, V); state: a list with one state per layer,
    each ``(B, H)`` or ``(h, c)``.
    """

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        c = self.config = config
        for name in ("vocab_size", "embedding_size", "hidden_size", "num_layers"):
            v = getattr(c, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if c.adaptive_cutoffs and c.tie_weights:
            raise ValueError("tie_weights cannot be combined with an adaptive softmax")
        self.embedding = nn.Embedding(c.vocab_size, c.embedding_size)
        self.rnn = stack(c.cell, c.embedding_size, c.hidden_size, c.num_layers,
                         connection=c.connection, dropout=c.dropout, variational=c.variational,
                         engine=c.engine, input_dropout=c.layer_input_dropout,
                         output_dropout=c.layer_output_dropout, dropconnect=c.dropconnect,
                         learn_init=c.learn_init, layer_options=c.layer_cell_options or None,
                         **c.cell_options)
        out = self.rnn.output_size
        self.proj = (nn.Linear(out, c.embedding_size)
                     if c.tie_weights and out != c.embedding_size else None)
        dec_in = c.embedding_size if c.tie_weights else out
        self.emb_drop = Dropout(c.embedding_dropout)
        self.out_drop = Dropout(c.output_dropout)
        self.adaptive: nn.AdaptiveLogSoftmaxWithLoss | None = None
        self.decoder: nn.Linear | None = None
        if c.adaptive_cutoffs:
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(
                dec_in, c.vocab_size, list(c.adaptive_cutoffs), div_value=c.adaptive_div_value)
        else:
            self.decoder = nn.Linear(dec_in, c.vocab_size)
        if c.tie_weights:  # the embedding is also the decoder: small, as in Press & Wolf
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        else:  # torch's N(0, 1): inputs of unit scale learn ~0.5 nats/char faster early on
            nn.init.normal_(self.embedding.weight)  # (benchmarks/lm_defaults.py)
        if self.decoder is not None:
            nn.init.zeros_(self.decoder.bias)
            if c.tie_weights:
                self.decoder.weight = self.embedding.weight
            else:
                nn.init.uniform_(self.decoder.weight, -DECODER_INIT, DECODER_INIT)
        self._fast: tuple | None = None
        gemm.adopt(self)  # its nn.Linear products on the machine's fastest GEMM

    # -- training ------------------------------------------------------------------------------
    def features(self, tokens: Tensor, state: list | None = None) -> tuple[Tensor, list]:
        """Decoder inputs (B, T, D) and the final state, for token ids (B, T)."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, time), got shape {tuple(tokens.shape)}")
        x = self.emb_drop(self.embedding(tokens))  # (B, T, E)
        y, state = self.rnn(x, state)
        y = self.out_drop(y)
        if self.proj is not None:
            y = self.proj(y)
        return y, state

    def forward(self, tokens: Tensor, state: list | None = None) -> LMOutput:
        """Logits (B, T, V) of the next token after each of ``tokens`` (B, T)."""
        h, state = self.features(tokens, state)
        if self.adaptive is not None:
            B, T, D = h.shape
            return LMOutput(self.adaptive.log_prob(h.reshape(B * T, D)).view(B, T, -1), state)
        return LMOutput(self.decoder(h), state)

    def loss(self, inputs: Tensor, targets: Tensor, state: list | None = None,
             reduction: str = "mean") -> tuple[Tensor, list]:
        """Cross-entropy in nats of ``targets`` (B, T) given ``inputs`` (B, T); targets equal
        to ``IGNORE`` (-100) are skipped. ``reduction``: ``"mean"`` per token or ``"sum"``."""
        h, state = self.features(inputs, state)
        D = h.shape[-1]
        flat_t = targets.reshape(-1)
        # the decoder and the cross-entropy in chunks of rows: the (B T, V) logits (or an
        # adaptive softmax's log-probabilities) are never made whole (rnnkit.losses)
        if self.adaptive is not None:
            return adaptive_cross_entropy(h.reshape(-1, D), self.adaptive, flat_t,
                                          ignore_index=IGNORE, reduction=reduction), state
        return linear_cross_entropy(h.reshape(-1, D), self.decoder.weight, self.decoder.bias,
                                    flat_t, ignore_index=IGNORE, reduction=reduction), state

    # -- one step, for generation and search ---------------------------------------------------
    def init_state(self, batch_size: int, device: torch.device | None = None) -> list:
        """The initial state of every layer for ``batch_size`` sequences."""
        like = self.embedding.weight if device is None else self.embedding.weight.to(device)
        states = []
        for layer in self.rnn.layers:
            init = tuple(t.detach() for t in layer.initial_state(batch_size, like))
            states.append(from_tuple(layer.cell, init))
        return states

    def _decoder_weights(self) -> tuple[Tensor, Tensor] | None:
        """The decoder's weight pre-transposed to (D, V) and its bias, contiguous, rebuilt
        whenever either changed; None with an adaptive softmax."""
        if self.decoder is None:
            return None
        w, b = self.decoder.weight, self.decoder.bias
        key = (id(w), w._version, id(b), b._version, w.device, w.dtype)
        if self._fast is None or self._fast[0] != key:
            with torch.no_grad():
                self._fast = (key, (w.t().contiguous(), b.contiguous()))
        return self._fast[1]

    @torch.no_grad()
    def step(self, tokens: Tensor, state: list | None = None) -> tuple[Tensor, list]:
        """One step of inference (no dropout, no autograd): ``tokens`` (B,) and the state
        after the previous tokens to the logits (B, V) of the next token and the new state.
        ``state=None`` starts from the initial state. The stack runs its own
        :meth:`~rnnkit.layers.Stacked.step`."""
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be (batch,), got shape {tuple(tokens.shape)}")
        if state is None:
            state = self.init_state(tokens.shape[0], tokens.device)
        x = self.embedding.weight.index_select(0, tokens)  # (B, E)
        h, new_state = self.rnn.step(x, state)
        if self.proj is not None:
            h = self.proj(h)
        dec = self._decoder_weights()
        if dec is not None:
            logits = torch.addmm(dec[1], h, dec[0])  # (B, V)
        else:
            logits = self.adaptive.log_prob(h)
        return logits, new_state

    @staticmethod
    def reorder_state(state: list, index: Tensor) -> list:
        """The state of rows ``index`` (B',) of a batch (beam search)."""
        return map_states(lambda s: s.index_select(0, index), state)

    @torch.no_grad()
    def generate(self, prompt: Tensor | list[int], max_new_tokens: int,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, greedy: bool = False) -> Tensor:
        """Continue ``prompt`` (T,) or (B, T) ids by ``max_new_tokens`` tokens.

        Sampling as :func:`rnnkit.generation.sampling.sample` (temperature, then top-k, then
        top-p) with a generator seeded by ``seed`` (the global one when ``None``), or the
        most probable token with ``greedy=True`` (or ``temperature=0``). Returns the new ids
        only, shaped like the prompt's batch: (N,) or (B, N). :meth:`stream` yields them one
        step at a time, in constant memory."""
        ids = torch.as_tensor(prompt, dtype=torch.long)
        single = ids.dim() == 1
        batch = ids.view(1, -1) if single else ids
        out = list(self.stream(batch, max_new_tokens, temperature, top_k, top_p, seed, greedy))
        res = torch.stack(out, dim=1) if out else torch.zeros(
            batch.shape[0], 0, dtype=torch.long, device=self.embedding.weight.device)
        return res[0] if single else res

    @torch.no_grad()
    def stream(self, prompt: Tensor | list[int], max_new_tokens: int,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               seed: int | None = None, greedy: bool = False) -> Iterator[Tensor]:
        """The tokens :meth:`generate` returns, one step at a time: (B,) ids for a (B, T)
        prompt ((1,) for a (T,) one), as they are drawn."""
        check_sampling(temperature, top_k, top_p)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
                or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        device = self.embedding.weight.device
        ids = torch.as_tensor(prompt, dtype=torch.long, device=device)
        ids = ids.view(1, -1) if ids.dim() == 1 else ids
        if ids.dim() != 2 or ids.shape[1] == 0:
            raise ValueError("prompt must hold at least one token (use <eos> for none)")
        if int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size:
            raise ValueError(f"prompt ids must lie in [0, {self.config.vocab_size})")
        return self._stream(ids, max_new_tokens, temperature, top_k, top_p, seed, greedy)

    def _stream(self, ids: Tensor, max_new_tokens: int, temperature: float,
                top_k: int | None, top_p: float | None, seed: int | None, greedy: bool
                ) -> Iterator[Tensor]:
        gen = None
        if seed is not None:
            gen = torch.Generator(device=ids.device).manual_seed(int(seed))
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                state = None
                for t in range(ids.shape[1]):
                    logits, state = self.step(ids[:, t], state)
                for _ in range(max_new_tokens):
                    if greedy or temperature == 0:
                        nxt = logits.argmax(dim=-1)
                    else:
                        nxt = sample(logits, temperature, top_k, top_p, generator=gen)
                    yield nxt
                    logits, state = self.step(nxt, state)
        finally:
            self.train(was_training)

    def num_parameters(self) -> int:
        """Trainable parameters, tied weights counted once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

