"""``Seq2Seq``: an encoder-decoder with attention, for T_x != T_y (translation).

    encoder:  a bidirectional stack (``rnnkit.layers.stack``) of any rnnkit cell over the
              source embeddings; its outputs m_1..m_S (B, S, 2H_enc) are the memory
    bridge:   decoder layer l starts from tanh(W_l [a_fwd; a_bwd]) of encoder layer
              min(l, L_enc - 1)'s final states (each state tensor separately: h, and c for
              LSTMs), or from zeros (``bridge="none"``)
    decoder:  a unidirectional stack of the same cell; at step t its input is
              [E y<t-1>; h~<t-1>] (input feeding, Luong et al. 2015) or E y<t-1>
    attention (``rnnkit.layers.attention``): c<t> from the top decoder output s<t>
    output:   h~<t> = tanh(W_c [c<t>; s<t>]),  logits<t> = W_o h~<t> + b_o
              (W_o is the decoder embedding E when ``tie_embeddings``, so h~ has E's size)

Attention scores are computed from the current decoder output s<t> (Luong's order) for every
kind, additive (Bahdanau's score) included. Training uses teacher forcing; with
``sampling_rate`` p > 0 (scheduled sampling, Bengio et al. 2015) each input token is, with
probability p, the model's own previous greedy prediction instead of the reference.

Decoding uses the interface of ``rnnkit.generation``: :meth:`Seq2Seq.encode` gives the
initial :class:`DecoderState`, :meth:`Seq2Seq.step` one token, :meth:`Seq2Seq.reorder_state`
selects or repeats batch rows for beam search. The attention weights of every step are in
:class:`Seq2SeqOutput` (training) and in ``DecoderState.weights`` (decoding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import gemm
from rnnkit.cells.base import check_choice
from rnnkit.layers import map_states, stack
from rnnkit.layers.attention import ATTENTIONS, Attention, length_mask
from rnnkit.layers.dropout import Dropout

BRIDGES = ("linear", "none")


@dataclass
class Seq2SeqConfig:
    """Everything needed to rebuild a :class:`Seq2Seq` (saved as JSON with the weights)."""

    src_vocab_size: int
    tgt_vocab_size: int
    cell: str = "lstm"
    embedding_size: int = 256
    encoder_hidden_size: int = 256  # per direction
    decoder_hidden_size: int = 512
    encoder_layers: int = 2
    decoder_layers: int = 1
    bidirectional: bool = True
    attention: str = "general"
    input_feeding: bool = True
    tie_embeddings: bool = True
    bridge: str = "linear"
    dropout: float = 0.2
    connection: str = "none"
    engine: str = "auto"
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3
    cell_options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Seq2SeqConfig:
        return cls(**d)


class DecoderState(NamedTuple):
    """Decoding state for a batch of B rows (sentences, or sentences x beams).

    rnn: the decoder stack's per-layer states; feed (B, A): h~<t-1> (input feeding; zeros at
    the start, ``None`` without it); memory (B, S, M); keys (B, S, .): the attention's
    prepared memory; mask (B, S): real source positions; weights (B, S): the last step's
    attention weights (``None`` before the first step)."""

    rnn: list
    feed: Tensor | None
    memory: Tensor
    keys: Tensor
    mask: Tensor
    weights: Tensor | None


class Seq2SeqOutput(NamedTuple):
    """``logits`` (B, T, V_tgt) and ``attention`` (B, T, S): alpha<t, s> for every target
    step t and source position s (zero at padding)."""

    logits: Tensor
    attention: Tensor


class Seq2Seq(nn.Module):
    """Encoder-decoder with attention; see the module docstring for the equations.

    Shapes: ``src`` (B, S) ids, ``src_lengths`` (B,) in any order, ``tgt_in`` (B, T) ids
    starting with BOS. Padding id ``config.pad_id``.
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        c = self.config = config
        check_choice("attention", c.attention, ATTENTIONS)
        check_choice("bridge", c.bridge, BRIDGES)
        E, He, Hd = c.embedding_size, c.encoder_hidden_size, c.decoder_hidden_size
        self.src_embed = nn.Embedding(c.src_vocab_size, E, padding_idx=c.pad_id)
        self.tgt_embed = nn.Embedding(c.tgt_vocab_size, E, padding_idx=c.pad_id)
        self.encoder = stack(c.cell, E, He, c.encoder_layers, bidirectional=c.bidirectional,
                             connection=c.connection, dropout=c.dropout, engine=c.engine,
                             **c.cell_options)
        M = self.encoder.output_size
        if c.attention == "dot" and Hd != M:
            raise ValueError(f"attention='dot' needs decoder_hidden_size ({Hd}) equal to the "
                             f"encoder's output size ({M} = directions x encoder_hidden_size)")
        out_size = E if c.tie_embeddings else Hd
        self.decoder = stack(c.cell, E + (out_size if c.input_feeding else 0), Hd,
                             c.decoder_layers, connection=c.connection, dropout=c.dropout,
                             engine=c.engine, **c.cell_options)
        dirs = 2 if c.bidirectional else 1
        num_states = self.decoder.layers[0].cell.num_states
        self.bridge = nn.ModuleList(
            [nn.Linear(dirs * He, Hd) for _ in range(c.decoder_layers * num_states)]
            if c.bridge == "linear" else [])
        self.attention = Attention(c.attention, Hd, M)
        self.combine = nn.Linear(M + Hd, out_size, bias=False)
        self.out = nn.Linear(out_size, c.tgt_vocab_size)
        if c.tie_embeddings:
            self.out.weight = self.tgt_embed.weight
        self.drop = Dropout(c.dropout)
        gemm.adopt(self)  # its nn.Linear products on the machine's fastest GEMM

    # -- encoding ------------------------------------------------------------------------------
    def _bridge(self, finals: list, batch: int, like: Tensor) -> list:
        c = self.config
        num_states = self.decoder.layers[0].cell.num_states
        if c.bridge == "none":
            return [None] * c.decoder_layers
        states = []
        for layer in range(c.decoder_layers):
            enc = finals[min(layer, len(finals) - 1)]
            parts = enc if c.bidirectional else (enc,)
            per_dir = [p if isinstance(p, tuple) else (p,) for p in parts]  # [(h, c?)] per dir
            made = []
            for k in range(num_states):
                x = torch.cat([d[k] for d in per_dir], dim=-1)  # (B, dirs * He)
                made.append(torch.tanh(self.bridge[layer * num_states + k](x)))
            states.append(made[0] if num_states == 1 else tuple(made))
        return states

    def encode(self, src: Tensor, src_lengths: Tensor) -> DecoderState:
        """Run the encoder: the initial :class:`DecoderState` for ``src`` (B, S)."""
        src_lengths = src_lengths.to(src.device)
        emb = self.drop(self.src_embed(src))  # (B, S, E)
        memory, finals = self.encoder(emb, lengths=src_lengths)  # (B, S, M)
        memory = self.drop(memory)
        B, S = src.shape
        mask = length_mask(src_lengths, S)
        feed = None
        if self.config.input_feeding:
            feed = memory.new_zeros(B, self.combine.out_features)
        return DecoderState(self._bridge(finals, B, memory), feed, memory,
                            self.attention.prepare(memory), mask, None)

    # -- one decoder step ----------------------------------------------------------------------
    def _step(self, emb: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """h~<t> (B, A) from the embedded input (B, E)."""
        x = torch.cat([emb, state.feed], dim=-1) if state.feed is not None else emb
        s, rnn = self.decoder.step(x, state.rnn)  # (B, Hd)
        ctx, w = self.attention(s, state.memory, state.mask, state.keys)
        h = self.drop(torch.tanh(self.combine(torch.cat([ctx, s], dim=-1))))  # (B, A)
        return h, DecoderState(rnn, h if state.feed is not None else None, state.memory,
                               state.keys, state.mask, w)

    def step(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """Feed ``tokens`` (B,): the next-token logits (B, V_tgt) and the new state."""
        h, state = self._step(self.tgt_embed(tokens), state)
        return self.out(h), state

    @staticmethod
    def reorder_state(state: DecoderState, index: Tensor) -> DecoderState:
        """The state of rows ``index`` (B',) of ``state``: beam search's select and repeat."""
        def sel(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.index_select(0, index)
        return DecoderState(map_states(lambda t: t.index_select(0, index), state.rnn),
                            sel(state.feed), sel(state.memory), sel(state.keys),
                            sel(state.mask), sel(state.weights))

    # -- training ------------------------------------------------------------------------------
    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor,
                sampling_rate: float = 0.0) -> Seq2SeqOutput:
        """Teacher-forced logits (B, T, V) and attention (B, T, S) for ``tgt_in`` (B, T).

        ``sampling_rate``: the probability of feeding the model's own greedy prediction
        instead of ``tgt_in[:, t]`` (t >= 1), per token (scheduled sampling)."""
        if not 0.0 <= sampling_rate <= 1.0:
            raise ValueError(f"sampling_rate must lie in [0, 1], got {sampling_rate}")
        state = self.encode(src, src_lengths)
        emb = self.drop(self.tgt_embed(tgt_in))  # (B, T, E)
        if state.feed is None and sampling_rate == 0.0:
            # no step depends on an earlier output: the whole target in one pass
            y, _ = self.decoder(emb, state.rnn)  # (B, T, Hd)
            ctx, w = self.attention(y, state.memory, state.mask, state.keys)
            h = self.drop(torch.tanh(self.combine(torch.cat([ctx, y], dim=-1))))
            return Seq2SeqOutput(self.out(h), w)
        hs, ws = [], []
        prev_logits = None
        for t in range(tgt_in.shape[1]):
            e = emb[:, t]
            if sampling_rate > 0.0 and prev_logits is not None:
                own = self.drop(self.tgt_embed(prev_logits.argmax(-1)))
                pick = torch.rand(e.shape[0], 1, device=e.device) < sampling_rate
                e = torch.where(pick, own, e)
            h, state = self._step(e, state)
            if sampling_rate > 0.0:
                prev_logits = self.out(h).detach()
            hs.append(h)
            ws.append(state.weights)
        return Seq2SeqOutput(self.out(torch.stack(hs, 1)), torch.stack(ws, 1))

    # -- decoding ------------------------------------------------------------------------------
    @torch.no_grad()
    def translate(self, src: Tensor, src_lengths: Tensor, beam_size: int = 1,
                  max_len_ratio: float = 1.5, max_len_offset: int = 10,
                  length_penalty: float = 1.0) -> list[list[int]]:
        """Best target ids (no BOS/EOS) for each source row: greedy when ``beam_size`` is 1,
        beam search otherwise; at most ``ceil(ratio * source length) + offset`` tokens."""
        from rnnkit.generation.search import beam_search, greedy

        was = self.training
        self.eval()
        try:
            state = self.encode(src, src_lengths)
            start = torch.full((src.shape[0],), self.config.bos_id, dtype=torch.long,
                               device=src.device)
            max_len = (torch.ceil(src_lengths.double() * max_len_ratio).long()
                       + max_len_offset)
            if beam_size == 1:
                return [h.tokens for h in greedy(self, state, start, self.config.eos_id,
                                                 max_len)]
            hyps = beam_search(self, state, start, self.config.eos_id, max_len,
                               beam_size=beam_size, length_penalty=length_penalty)
            return [h[0].tokens for h in hyps]
        finally:
            self.train(was)


def sequence_loss(logits: Tensor, targets: Tensor, pad_id: int = 0,
                  label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy over the non-padding tokens: ``logits`` (B, T, V), ``targets``
    (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=pad_id, label_smoothing=label_smoothing)
