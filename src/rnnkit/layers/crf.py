"""A linear-chain conditional random field over per-token tag scores.

For emissions ``e`` (B, T, K) and a tag sequence ``y_1..y_n`` (n = the sequence's length) the
score is

    s(y) = start[y_1] + sum_t e[t, y_t] + sum_{t>1} trans[y_{t-1}, y_t] + end[y_n]

and ``p(y | x) = exp(s(y)) / Z`` with ``log Z = logsumexp over all K^n sequences of s(y)``,
computed by the forward algorithm in O(n K^2):

    alpha_1 = start + e_1,   alpha_t[j] = logsumexp_i(alpha_{t-1}[i] + trans[i, j]) + e_t[j],
    log Z = logsumexp_j(alpha_n[j] + end[j]).

Viterbi decoding replaces logsumexp by max and keeps back-pointers (Lafferty et al. 2001;
Lample et al. 2016 for the BiLSTM-CRF tagger).

Padding: ``lengths`` (B,) in any order; steps at or past a sequence's length change nothing
(alpha is carried through, back-pointers are the identity), so padded emissions and tags never
reach the result or the gradients. Every length must be at least 1.

Constraints: ``allowed`` (K, K) booleans, plus ``allowed_start`` / ``allowed_end`` (K,), mark the
transitions a well-formed sequence may take (e.g. no ``O -> I-PER`` in BIO;
:func:`scheme_constraints` builds them from tag names). Forbidden ones get a fixed score of
``-10000`` added: never chosen by Viterbi, and a gold path that breaks them (ill-formed data)
costs a large but finite loss.

Parameters: ``transitions`` (K, K), indexed [from, to]; ``start`` (K,); ``end`` (K,); all
initialised uniform in (-0.1, 0.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from rnnkit.data.schemes import allowed_transition, check_scheme

FORBIDDEN = -10000.0


class ViterbiOutput(NamedTuple):
    """``tags`` (B, T) long, the best tag sequence, ``-1`` past each length;
    ``scores`` (B,) its score s(y) (constraint penalties included)."""

    tags: Tensor
    scores: Tensor


def scheme_constraints(tags: Sequence[str], scheme: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(allowed (K, K), allowed_start (K,), allowed_end (K,))`` for tag names in ``scheme``
    (``"iob1"``, ``"bio"``, ``"bioes"``; ``"none"`` allows everything)."""
    scheme = check_scheme(scheme)
    k = len(tags)
    allowed = torch.ones(k, k, dtype=torch.bool)
    for i, a in enumerate(tags):
        for j, b in enumerate(tags):
            allowed[i, j] = allowed_transition(a, b, scheme)
    start = torch.tensor([allowed_transition("<s>", b, scheme) for b in tags], dtype=torch.bool)
    end = torch.tensor([allowed_transition(a, "</s>", scheme) for a in tags], dtype=torch.bool)
    return allowed, start, end


def _mask(lengths: Tensor | None, batch: int, steps: int, device: torch.device) -> Tensor:
    if lengths is None:
        return torch.ones(batch, steps, dtype=torch.bool, device=device)
    lengths = torch.as_tensor(lengths, device=device).long()
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
    if bool((lengths < 1).any()) or bool((lengths > steps).any()):
        raise ValueError(f"lengths must lie in 1..{steps}, got {lengths.tolist()}")
    return torch.arange(steps, device=device)[None, :] < lengths[:, None]


class CRF(nn.Module):
    """Linear-chain CRF over ``num_tags`` tags; see the module docstring for the equations.

    Args:
        num_tags: K.
        allowed, allowed_start, allowed_end: optional constraints (see the module docstring).

    Shapes: emissions (B, T, K); tags (B, T) long (padding ignored); lengths (B,) or ``None``
    for full length.
    """

    def __init__(self, num_tags: int, allowed: Tensor | None = None,
                 allowed_start: Tensor | None = None, allowed_end: Tensor | None = None) -> None:
        super().__init__()
        if isinstance(num_tags, bool) or not isinstance(num_tags, int) or num_tags < 1:
            raise ValueError(f"num_tags must be a positive int, got {num_tags!r}")
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-0.1, 0.1))
        self.start = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.end = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        for name, mask, shape in (("allowed", allowed, (num_tags, num_tags)),
                                  ("allowed_start", allowed_start, (num_tags,)),
                                  ("allowed_end", allowed_end, (num_tags,))):
            if mask is None:
                mask = torch.ones(shape, dtype=torch.bool)
            mask = torch.as_tensor(mask, dtype=torch.bool)
            if tuple(mask.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(mask.shape)}")
            penalty = torch.zeros(shape).masked_fill(~mask, FORBIDDEN)
            self.register_buffer(f"{name}_penalty", penalty)

    def _scores(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        trans = self.transitions + self.allowed_penalty.to(dtype)
        start = self.start + self.allowed_start_penalty.to(dtype)
        end = self.end + self.allowed_end_penalty.to(dtype)
        return trans.to(dtype), start.to(dtype), end.to(dtype)

    def _check(self, emissions: Tensor) -> None:
        if emissions.dim() != 3 or emissions.shape[-1] != self.num_tags:
            raise ValueError(f"emissions must be (B, T, {self.num_tags}), got "
                             f"{tuple(emissions.shape)}")
        if emissions.shape[1] < 1:
            raise ValueError("emissions must have at least one time step")

    def log_partition(self, emissions: Tensor, lengths: Tensor | None = None) -> Tensor:
        """log Z (B,) by the forward algorithm."""
        self._check(emissions)
        trans, start, end = self._scores(emissions.dtype)
        mask = _mask(lengths, emissions.shape[0], emissions.shape[1], emissions.device)
        steps = emissions.unbind(1)
        alpha = start + steps[0]  # (B, K)
        for t in range(1, len(steps)):
            nxt = torch.logsumexp(alpha.unsqueeze(2) + trans, dim=1) + steps[t]  # (B, K)
            alpha = torch.where(mask[:, t, None], nxt, alpha)
        return torch.logsumexp(alpha + end, dim=1)

    def score(self, emissions: Tensor, tags: Tensor, lengths: Tensor | None = None) -> Tensor:
        """s(y) (B,) of the given tag sequences."""
        self._check(emissions)
        trans, start, end = self._scores(emissions.dtype)
        b, t = tags.shape
        mask = _mask(lengths, b, t, emissions.device)
        tags = tags.masked_fill(~mask, 0).long()
        emit = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)  # (B, T)
        total = start[tags[:, 0]] + (emit * mask).sum(1)
        if t > 1:
            pair = trans[tags[:, :-1], tags[:, 1:]]  # (B, T-1)
            total = total + (pair * mask[:, 1:]).sum(1)
        last = tags.gather(1, (mask.sum(1, keepdim=True) - 1)).squeeze(1)
        return total + end[last]

    def nll(self, emissions: Tensor, tags: Tensor, lengths: Tensor | None = None,
            reduction: str = "mean") -> Tensor:
        """Negative log-likelihood ``log Z - s(y)``: per sequence (``"none"``), summed
        (``"sum"``), averaged over sequences (``"mean"``) or over tokens (``"token_mean"``)."""
        loss = self.log_partition(emissions, lengths) - self.score(emissions, tags, lengths)
        if reduction == "none":
            return loss
        if reduction == "sum":
            return loss.sum()
        if reduction == "mean":
            return loss.mean()
        if reduction == "token_mean":
            n = loss.new_tensor(float(tags.numel())) if lengths is None else lengths.sum()
            return loss.sum() / n.to(loss.dtype)
        raise ValueError(f"reduction must be none, sum, mean or token_mean, got {reduction!r}")

    forward = nll

    @torch.no_grad()
    def viterbi(self, emissions: Tensor, lengths: Tensor | None = None) -> ViterbiOutput:
        """The highest-scoring tag sequence of each batch element."""
        self._check(emissions)
        trans, start, end = self._scores(emissions.dtype)
        b, t, k = emissions.shape
        mask = _mask(lengths, b, t, emissions.device)
        steps = emissions.unbind(1)
        delta = start + steps[0]
        identity = torch.arange(k, device=emissions.device).expand(b, k)
        pointers = []
        for s in range(1, t):
            best, arg = (delta.unsqueeze(2) + trans).max(dim=1)  # (B, K) over previous tag
            keep = mask[:, s, None]
            delta = torch.where(keep, best + steps[s], delta)
            pointers.append(torch.where(keep, arg, identity))
        scores, last = (delta + end).max(dim=1)
        path = [last]
        for ptr in reversed(pointers):
            last = ptr.gather(1, last.unsqueeze(1)).squeeze(1)
            path.append(last)
        tags = torch.stack(path[::-1], dim=1).masked_fill(~mask, -1)
        return ViterbiOutput(tags, scores)

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}"
