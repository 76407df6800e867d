"""Greedy decoding and batched beam search over any model with ``step`` and ``reorder_state``.

The model interface (:class:`StepModel`), shared by ``Seq2Seq`` and ``LanguageModel``:

    model.step(tokens, state) -> (logits, state)    tokens (B,), logits (B, V)
    model.reorder_state(state, index) -> state      rows ``index`` (B',) of every tensor

The caller gives the state after everything before the first generated token (a Seq2Seq's
encoded source; a language model's state after the prompt) and the token to feed first (BOS,
or the prompt's last token). A hypothesis's score is the sum of the log-probabilities of its
tokens, the end-of-sentence (EOS) token included when it ends with one; beam search ranks
finished hypotheses by ``score / length ** length_penalty`` (length counts EOS; 0 turns the
normalisation off, 1 is the mean log-probability per token). A hypothesis that reaches its
maximum length without EOS is finished there, truncated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor


class StepModel(Protocol):
    def step(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]: ...

    def reorder_state(self, state: Any, index: Tensor) -> Any: ...


@dataclass
class Hypothesis:
    """``tokens``: generated ids without the final EOS; ``log_prob``: their summed
    log-probability (EOS included when ``finished``); ``score``: the ranking score after
    length normalisation; ``finished``: ended with EOS (False: cut at the maximum length)."""

    tokens: list[int]
    log_prob: float
    score: float
    finished: bool = True
    extra: dict = field(default_factory=dict)


def _max_lengths(max_len: int | Tensor, batch: int) -> list[int]:
    if isinstance(max_len, Tensor):
        if max_len.shape != (batch,):
            raise ValueError(f"max_len must be an int or a ({batch},) tensor, got shape "
                             f"{tuple(max_len.shape)}")
        out = [int(m) for m in max_len.tolist()]
    else:
        out = [int(max_len)] * batch
    if min(out, default=1) < 1:
        raise ValueError(f"max_len must be at least 1, got {min(out)}")
    return out


def normalised(log_prob: float, length: int, length_penalty: float) -> float:
    """``log_prob / length ** length_penalty`` (length at least 1)."""
    return log_prob / max(length, 1) ** length_penalty


@torch.no_grad()
def greedy(model: StepModel, state: Any, start: Tensor, eos: int,
           max_len: int | Tensor) -> list[Hypothesis]:
    """The most likely next token at every step, for each of B rows.

    ``start`` (B,): the first input token; ``max_len``: an int or (B,) tensor, the most tokens
    to generate (EOS included). Returns one :class:`Hypothesis` per row (``score`` equals
    ``log_prob``)."""
    B = start.shape[0]
    limits = _max_lengths(max_len, B)
    tokens = start
    out: list[list[int]] = [[] for _ in range(B)]
    logp = [0.0] * B
    done = [False] * B
    for t in range(max(limits)):
        logits, state = model.step(tokens, state)
        lp = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
        best, tokens = lp.max(dim=-1)
        for b, (tok, p) in enumerate(zip(tokens.tolist(), best.tolist())):
            if done[b]:
                continue
            logp[b] += p
            if tok == eos:
                done[b] = True
            else:
                out[b].append(tok)
                if t + 1 >= limits[b]:
                    done[b] = True
        if all(done):
            break
    ended = [len(o) < lim for o, lim in zip(out, limits)]
    return [Hypothesis(o, p, p, e) for o, p, e in zip(out, logp, ended)]


@torch.no_grad()
def beam_search(model: StepModel, state: Any, start: Tensor, eos: int, max_len: int | Tensor,
                beam_size: int = 5, length_penalty: float = 1.0, n_best: int = 1
                ) -> list[list[Hypothesis]]:
    """Batched beam search: B rows, ``beam_size`` K hypotheses each, all rows in one batch of
    B * K through ``model.step``.

    Each step takes, per row, the 2K best one-token extensions of its K live hypotheses; those
    ending in EOS among the first K become finished, the first K others live on. A row stops
    when it has K finished hypotheses or its live ones reach ``max_len`` tokens (then they are
    finished, truncated). Returns per row its ``n_best`` hypotheses, best first, ranked by
    the length-normalised score (see the module docstring).

    ``start`` (B,); ``max_len`` an int or a (B,) tensor (e.g. a ratio of each source length).
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must lie in [1, beam_size={beam_size}], got {n_best}")
    B, K = start.shape[0], beam_size
    limits = _max_lengths(max_len, B)
    device = start.device
    # every row's state repeated K times: rows b*K .. b*K+K-1 are row b's beams
    state = model.reorder_state(state, torch.arange(B, device=device).repeat_interleave(K))
    tokens = start.repeat_interleave(K)  # (B*K,)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live hypothesis per row at the start
    history = torch.zeros(B, K, 0, dtype=torch.long, device=device)
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    done = [False] * B
    rows = torch.arange(B, device=device)[:, None]
    for t in range(max(limits)):
        logits, state = model.step(tokens, state)
        V = logits.shape[-1]
        lp = torch.log_softmax(logits.float(), dim=-1).view(B, K, V)
        total = (scores.unsqueeze(2) + lp).view(B, K * V)
        n = min(2 * K, K * V)
        cand, idx = total.topk(n, dim=1)  # (B, n), best first
        beam, tok = idx // V, idx % V
        is_eos = tok == eos
        # finished candidates: EOS among the first K of a live row
        hits = (is_eos[:, :K] & torch.isfinite(cand[:, :K])).nonzero().tolist()
        for b, j in hits:
            if done[b] or len(finished[b]) >= K:
                continue
            seq = history[b, beam[b, j]].tolist()
            lp_sum = float(cand[b, j])
            finished[b].append(Hypothesis(seq, lp_sum, normalised(lp_sum, t + 1,
                                                                 length_penalty)))
        # live candidates: the first K that are not EOS (stable sort keeps the score order)
        order = torch.sort(is_eos.to(torch.int8), dim=1, stable=True).indices[:, :K]  # (B, K)
        scores = cand.gather(1, order)
        src_beam = beam.gather(1, order)
        new_tok = tok.gather(1, order)
        history = torch.cat([history[rows, src_beam], new_tok.unsqueeze(2)], dim=2)
        for b in range(B):
            if done[b]:
                continue
            if t + 1 >= limits[b]:
                for j in range(K):
                    s = float(scores[b, j])
                    if s != float("-inf"):
                        finished[b].append(Hypothesis(history[b, j].tolist(), s,
                                                      normalised(s, t + 1, length_penalty),
                                                      finished=False))
                done[b] = True
            elif len(finished[b]) >= K:
                done[b] = True
            if done[b]:
                scores[b] = float("-inf")
        if all(done):
            break
        flat = (rows * K + src_beam).view(-1)
        state = model.reorder_state(state, flat)
        tokens = new_tok.view(-1)
    out = []
    for hyps in finished:
        hyps.sort(key=lambda h: h.score, reverse=True)
        out.append(hyps[:n_best])
    return out
