"""Batching sentences of different lengths: padding, length buckets, characters of words.

Used by the tagger and classifier tasks (language models batch a token stream instead,
:mod:`rnnkit.data.lm`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: the target id every loss skips (torch's ``ignore_index``): padding, unasked steps
IGNORE_INDEX = -100


def pad_ids(seqs: Sequence[Sequence[int] | Tensor], pad: int = 0) -> tuple[Tensor, Tensor]:
    """Right-pad id sequences into ``(ids (B, T) long, lengths (B,) long)``,
    T = the longest length (at least 1)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    steps = max(1, int(lengths.max())) if len(seqs) else 1
    out = torch.full((len(seqs), steps), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out, lengths


def length_batches(lengths: Sequence[int], batch_size: int,
                   generator: torch.Generator | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar lengths (little padding).

    With ``generator`` (training): examples are shuffled, sorted by length within windows of
    50 batches, cut into batches, and the batches shuffled. Without it (evaluation): sorted by
    length, longest first; the caller restores the original order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(lengths)
    if generator is None:
        order = sorted(range(n), key=lambda i: -lengths[i])
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    perm = torch.randperm(n, generator=generator).tolist()
    window = batch_size * 50
    batches = []
    for w in range(0, n, window):
        chunk = sorted(perm[w:w + window], key=lambda i: lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def word_characters(words: Sequence[Sequence[str]], char_ids: dict[str, int], unk: int,
                    pad: int = 0, max_chars: int = 30) -> tuple[Tensor, Tensor, Tensor]:
    """The characters of the distinct words of a batch.

    Args:
        words: B sentences of word strings.
        char_ids: character -> id; unknown characters get ``unk``.
        max_chars: longer words keep their first and last ``max_chars // 2`` characters.
    Returns:
        ``(chars (U, L) long, char_lengths (U,) long, index (B, T) long)``: U distinct words,
        ``index[b, t]`` the row of word t of sentence b (0 past each sentence's length).
    """
    rows: dict[str, int] = {}
    index = torch.zeros(len(words), max((len(s) for s in words), default=1) or 1,
                        dtype=torch.long)
    for b, sent in enumerate(words):
        for t, w in enumerate(sent):
            index[b, t] = rows.setdefault(w, len(rows))
    seqs = []
    half = max_chars // 2
    for w in rows:
        if len(w) > max_chars:
            w = w[:half] + w[-half:]
        seqs.append([char_ids.get(c, unk) for c in w] or [unk])
    chars, char_lengths = pad_ids(seqs, pad)
    return chars, char_lengths, index
