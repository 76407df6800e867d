"""``Vocabulary``: tokens <-> integer ids, with special tokens, size and frequency limits, JSON.

Every task uses it (words and characters of a language model, words and tags of a tagger,
labels of a classifier, source and target words of a translator)::

    vocab = Vocabulary.build(counts, max_size=10_000, min_freq=2)     # counts: token -> count
    ids = vocab.encode(["the", "cat"])        # LongTensor (2,); unknown tokens -> <unk>
    vocab.decode(ids)                         # ["the", "cat"]
    vocab.save(run_dir / "vocab.json"); Vocabulary.load(run_dir / "vocab.json")

Ids: the special tokens come first, in the order given (default ``<unk>`` = 0, ``<eos>`` = 1;
optionally ``<pad>`` and ``<bos>``), then the other tokens by decreasing count, ties broken by
first appearance in ``counts`` (so a vocabulary built twice from the same data is the same).
A vocabulary without ``<unk>`` (tag sets, labels) raises :class:`DataError` on unknown tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from rnnkit.errors import DataError
from rnnkit.files import write_text_atomic

UNK, EOS, PAD, BOS = "<unk>", "<eos>", "<pad>", "<bos>"
DEFAULT_SPECIALS: tuple[str, ...] = (UNK, EOS)
FORMAT = "rnnkit-vocabulary"
VERSION = 1


class Vocabulary:
    """A bijection between tokens (strings) and ids ``0 .. len(vocab) - 1``.

    Args:
        tokens: every token, in id order (specials included, first).
        specials: which of ``tokens`` are special (``<unk>``, ``<eos>``, ``<pad>``, ``<bos>``,
            or any other reserved string); they are never dropped by limits.
        meta: free JSON-able information saved with the vocabulary (e.g. ``{"level": "char"}``).

    Attributes ``unk_id``, ``eos_id``, ``pad_id``, ``bos_id`` are the ids of those specials, or
    ``None`` when the vocabulary has none.
    """

    def __init__(self, tokens: Sequence[str], specials: Sequence[str] = DEFAULT_SPECIALS,
                 meta: Mapping[str, object] | None = None) -> None:
        self.itos: list[str] = list(tokens)
        self.stoi: dict[str, int] = {}
        for i, tok in enumerate(self.itos):
            if not isinstance(tok, str):
                raise TypeError(f"tokens must be strings, got {type(tok).__name__} at id {i}")
            if tok in self.stoi:
                raise ValueError(f"token {tok!r} appears twice (ids {self.stoi[tok]} and {i})")
            self.stoi[tok] = i
        missing = [s for s in specials if s not in self.stoi]
        if missing:
            raise ValueError(f"special tokens {missing} are not among the tokens")
        self.specials: tuple[str, ...] = tuple(specials)
        self.meta: dict[str, object] = dict(meta or {})
        self.unk_id = self.stoi.get(UNK) if UNK in self.specials else None
        self.eos_id = self.stoi.get(EOS) if EOS in self.specials else None
        self.pad_id = self.stoi.get(PAD) if PAD in self.specials else None
        self.bos_id = self.stoi.get(BOS) if BOS in self.specials else None

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def build(cls, counts: Mapping[str, int] | Iterable[str], *, max_size: int | None = None,
              min_freq: int = 1, specials: Sequence[str] = DEFAULT_SPECIALS,
              meta: Mapping[str, object] | None = None) -> Vocabulary:
        """A vocabulary of the specials plus the most frequent tokens of ``counts``.

        Args:
            counts: token -> count (a ``collections.Counter``), or an iterable of tokens to
                count (fine for small data; count large corpora line by line yourself).
            max_size: at most this many ids in total, specials included (``None``: no limit).
            min_freq: drop tokens seen fewer times than this.
            specials: special tokens, placed first in this order.
        """
        if not isinstance(counts, Mapping):
            tally: dict[str, int] = {}
            for tok in counts:
                tally[tok] = tally.get(tok, 0) + 1
            counts = tally
        if isinstance(min_freq, bool) or not isinstance(min_freq, int) or min_freq < 1:
            raise ValueError(f"min_freq must be a positive int, got {min_freq!r}")
        if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int)
                                     or max_size < len(specials)):
            raise ValueError(f"max_size must be an int >= the number of specials "
                             f"({len(specials)}), got {max_size!r}")
        order = {tok: i for i, tok in enumerate(counts)}
        kept = [t for t, c in counts.items() if c >= min_freq and t not in specials]
        kept.sort(key=lambda t: (-counts[t], order[t]))
        if max_size is not None:
            kept = kept[:max_size - len(specials)]
        return cls(list(specials) + kept, specials, meta)

    # -- mapping -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Vocabulary) and self.itos == other.itos
                and self.specials == other.specials)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens, specials={list(self.specials)})"

    def id(self, token: str) -> int:
        """The id of ``token``; ``<unk>``'s for unknown tokens, or a :class:`DataError`."""
        i = self.stoi.get(token)
        if i is not None:
            return i
        if self.unk_id is None:
            raise DataError(f"unknown token {token!r} (this vocabulary has no {UNK})")
        return self.unk_id

    def encode(self, tokens: Iterable[str], *, strict: bool = False) -> Tensor:
        """Ids of ``tokens`` as a LongTensor (N,).

        Unknown tokens map to ``<unk>``; with ``strict=True`` (or without ``<unk>``) they raise
        a :class:`DataError` naming the first one.
        """
        stoi, unk = self.stoi, self.unk_id
        ids = []
        for pos, tok in enumerate(tokens):
            i = stoi.get(tok)
            if i is None:
                if strict or unk is None:
                    raise DataError(f"token {tok!r} at position {pos} is not in the vocabulary")
                i = unk
            ids.append(i)
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: Iterable[int] | Tensor) -> list[str]:
        """Tokens of ``ids`` (any iterable of ints, or a 1-D tensor)."""
        if isinstance(ids, Tensor):
            ids = ids.reshape(-1).tolist()
        n = len(self.itos)
        out = []
        for i in ids:
            if not 0 <= i < n:
                raise DataError(f"id {i} is outside the vocabulary (0 .. {n - 1})")
            out.append(self.itos[i])
        return out

    # -- files -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, object]:
        """The JSON-able form written by :meth:`save`."""
        return {"format": FORMAT, "version": VERSION, "specials": list(self.specials),
                "meta": self.meta, "tokens": self.itos}

    @classmethod
    def from_dict(cls, data: object, source: str = "vocabulary") -> Vocabulary:
        """Inverse of :meth:`to_dict`; ``source`` names the origin in errors."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataError(f"not an rnnkit vocabulary (expected a JSON object with "
                            f"\"format\": \"{FORMAT}\")", source)
        if data.get("version") != VERSION:
            raise DataError(f"vocabulary format version {data.get('version')!r} is not "
                            f"supported (expected {VERSION})", source)
        tokens, specials = data.get("tokens"), data.get("specials", [])
        if not isinstance(tokens, list) or not isinstance(specials, list):
            raise DataError("\"tokens\" and \"specials\" must be lists", source)
        try:
            return cls(tokens, specials, data.get("meta") or {})
        except (TypeError, ValueError) as err:
            raise DataError(f"invalid vocabulary: {err}", source) from None

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON, atomically (a temporary file, then a rename)."""
        write_text_atomic(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a vocabulary written by :meth:`save`; a :class:`DataError` names what is wrong."""
        path = Path(path)
        if path.is_dir():
            raise DataError("is a directory, expected a vocabulary JSON file", path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError("vocabulary file not found", path) from None
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"not a valid JSON vocabulary ({err})", path) from None
        return cls.from_dict(data, str(path))
