"""Plain UTF-8 text files as integer tensors, at the character or the word level.

- :func:`read_text` reads a file with clear :class:`DataError`\\ s: a missing file, a directory,
  an empty file, bytes that are not UTF-8 (with the byte offset and the line).
- Character level: every Unicode character is a token (newlines included); no ``<eos>`` is
  added. Counting and encoding go through numpy arrays of code points, never lists of strings.
- Word level: tokens are the whitespace-separated words of each line and ``<eos>`` ends every
  line (the WikiText / Penn Treebank convention). Lines are processed one at a time and the ids
  gathered in a compact integer array.

::

    text = read_text("input.txt")
    vocab = build_vocab(text, "char")
    ids = encode(text, vocab, "char")          # LongTensor (N,)
    decode(ids[:100], vocab, "char")           # back to a string
"""

from __future__ import annotations

from array import array
from collections import Counter
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rnnkit.data.vocab import DEFAULT_SPECIALS, EOS, UNK, Vocabulary
from rnnkit.errors import DataError

LEVELS = ("char", "word")


def read_text(path: str | Path, *, allow_empty: bool = False) -> str:
    """The contents of a UTF-8 text file (a leading byte-order mark is dropped).

    Raises :class:`DataError` naming the file when it does not exist, is a directory, is empty
    (or only whitespace) unless ``allow_empty``, or is not valid UTF-8 (naming the line and
    the byte offset of the first bad byte).
    """
    path = Path(path)
    if path.is_dir():
        raise DataError("is a directory, expected a text file", path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError("no such file", path) from None
    except OSError as err:
        raise DataError(f"cannot read ({err.strerror or err})", path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        bad = raw[err.start:err.start + 1].hex()
        raise DataError(f"not valid UTF-8: byte 0x{bad} at byte offset {err.start} "
                        f"({err.reason}); convert the file to UTF-8", path, line) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not allow_empty and not text.strip():
        raise DataError("is empty" if not text else "holds only whitespace", path)
    return text


def check_level(level: str) -> str:
    """``level`` if it is ``"char"`` or ``"word"``, else a ValueError naming it."""
    if level not in LEVELS:
        raise ValueError(f"level must be 'char' or 'word', got {level!r}")
    return level


def _codepoints(text: str) -> np.ndarray:
    """The code points of ``text`` as a uint32 array (N,)."""
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


def char_counts(text: str) -> Counter:
    """How often each character occurs, in order of first appearance."""
    cps = _codepoints(text)
    uniq, first, counts = np.unique(cps, return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    return Counter({chr(int(uniq[i])): int(counts[i]) for i in order})


def word_counts(text: str, *, eos: bool = True) -> Counter:
    """How often each word occurs, counting one ``<eos>`` per line when ``eos``."""
    counts: Counter = Counter()
    lines = 0
    for line in text.splitlines():
        counts.update(line.split())
        lines += 1
    if eos and lines:
        counts[EOS] += lines
    return counts


def build_vocab(text: str, level: str, *, max_size: int | None = None, min_freq: int = 1,
                specials: tuple[str, ...] = DEFAULT_SPECIALS) -> Vocabulary:
    """A vocabulary of ``text`` at ``level``, with ``meta={"level": level}``."""
    check_level(level)
    counts = char_counts(text) if level == "char" else word_counts(text)
    return Vocabulary.build(counts, max_size=max_size, min_freq=min_freq, specials=specials,
                            meta={"level": level})


def encode_chars(text: str, vocab: Vocabulary, *, strict: bool = False,
                 source: str | Path | None = None) -> Tensor:
    """Character ids of ``text``: LongTensor (len(text),). Unknown characters map to
    ``<unk>``, or raise a :class:`DataError` naming the first one when ``strict``."""
    cps = _codepoints(text)
    if cps.size == 0:
        return torch.zeros(0, dtype=torch.long)
    uniq, inverse = np.unique(cps, return_inverse=True)
    table = np.array([vocab.stoi.get(chr(cp), -1) for cp in uniq.tolist()], dtype=np.int64)
    ids = table[inverse.reshape(-1)]
    if (table < 0).any():
        if strict or vocab.unk_id is None:
            pos = int(np.argmax(ids < 0))
            ch = text[pos]
            raise DataError(f"character {ch!r} (U+{ord(ch):04X}) at position {pos} is not in "
                            f"the character vocabulary", source)
        ids[ids < 0] = vocab.unk_id
    return torch.from_numpy(ids)


def encode_words(text: str, vocab: Vocabulary, *, eos: bool = True, strict: bool = False,
                 source: str | Path | None = None) -> Tensor:
    """Word ids of ``text``, ``<eos>`` after every line when ``eos``: LongTensor (N,).
    Unknown words map to ``<unk>`` (or raise naming the line when ``strict``)."""
    stoi, unk = vocab.stoi, vocab.unk_id
    eos_id = vocab.stoi.get(EOS) if eos else None
    if eos and eos_id is None:
        raise ValueError("eos=True needs a vocabulary with <eos>")
    ids = array("q")
    for n, line in enumerate(text.splitlines(), 1):
        for word in line.split():
            i = stoi.get(word)
            if i is None:
                if strict or unk is None:
                    raise DataError(f"word {word!r} is not in the vocabulary", source, n)
                i = unk
            ids.append(i)
        if eos_id is not None:
            ids.append(eos_id)
    return torch.from_numpy(np.frombuffer(ids, dtype=np.int64).copy())


def encode(text: str, vocab: Vocabulary, level: str, *, strict: bool = False,
           source: str | Path | None = None) -> Tensor:
    """Ids of ``text`` at ``level`` (``"char"`` or ``"word"``): LongTensor (N,)."""
    if check_level(level) == "char":
        return encode_chars(text, vocab, strict=strict, source=source)
    return encode_words(text, vocab, strict=strict, source=source)


def unknown_share(text: str, ids: Tensor, vocab: Vocabulary, level: str) -> float:
    """The share of the tokens of ``text`` (encoded as ``ids``) that the vocabulary does not
    hold, so became ``<unk>`` (a literal ``<unk>`` in a word-level text, as in the Penn
    Treebank's, is a token of the vocabulary and not counted)."""
    if vocab.unk_id is None or len(ids) == 0:
        return 0.0
    unknown = int((ids == vocab.unk_id).sum())
    if check_level(level) == "word" and unknown:
        unknown -= sum(line.split().count(UNK) for line in text.splitlines())
    return unknown / len(ids)


class Detokenizer:
    """Text of token ids one at a time, as :func:`decode` joins them: characters as they are;
    words with a space between them and a newline for ``<eos>`` (for streaming output)."""

    def __init__(self, vocab: Vocabulary, level: str, after_text: bool = False) -> None:
        self.vocab, self.words = vocab, check_level(level) == "word"
        # nothing yet (or a newline last); ``after_text``: the words continue a text, so the
        # first one is preceded by a space
        self.line_start = not after_text

    def piece(self, token_id: int) -> str:
        """The text that token ``token_id`` adds. Characters: a special symbol is never
        written as its name: ``<unk>`` is U+FFFD (the replacement character), the others
        (``<eos>``, the start symbol) add nothing."""
        tok = self.vocab.itos[int(token_id)]
        if not self.words:
            if tok in self.vocab.specials:
                return "\ufffd" if tok == UNK else ""
            return tok
        if tok == EOS:
            self.line_start = True
            return "\n"
        text = tok if self.line_start else " " + tok
        self.line_start = False
        return text


def decode(ids: Tensor | list[int], vocab: Vocabulary, level: str) -> str:
    """Text of ``ids``: characters joined as they are; words joined by spaces, with a newline
    for ``<eos>``."""
    d = Detokenizer(vocab, level)
    return "".join(d.piece(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids))


#: the name the bundled tiny Shakespeare has in a run's config
BUNDLED = "tinyshakespeare (bundled)"


def bundled_shakespeare() -> str:
    """The bundled tiny Shakespeare (1,115,394 characters, public domain)."""
    return (resources.files("rnnkit") / "resources" / "tinyshakespeare.txt").read_text(
        encoding="utf-8")


def check_dev_fraction(fraction: float) -> None:
    """ValueError naming ``--dev-fraction`` unless ``fraction`` lies in (0, 1)."""
    if not 0 < fraction < 1:
        raise ValueError(f"--dev-fraction must lie in (0, 1), got {fraction}")


def hold_out(text: str, fraction: float, source: str) -> tuple[str, str]:
    """``text`` split into its first ``1 - fraction`` (training) and the rest (validation);
    a :class:`DataError` naming ``source`` when either part would be blank."""
    check_dev_fraction(fraction)
    cut = int(len(text) * (1 - fraction))
    train, valid = text[:cut], text[cut:]
    if not train.strip() or not valid.strip():
        raise DataError(f"too short to hold out {fraction:.0%} for validation; give --dev",
                        source)
    return train, valid


def start_id(vocab: Vocabulary, level: str) -> int:
    """The token before a text: a newline for characters (when the vocabulary has one), else
    ``<eos>`` (the end of a previous line)."""
    if level == "char" and "\n" in vocab:
        return vocab.stoi["\n"]
    return vocab.eos_id if vocab.eos_id is not None else 0


def prompt_ids(prompt: str, vocab: Vocabulary, level: str) -> list[int]:
    """The prompt's ids after the start token (:func:`start_id`); a :class:`DataError` names
    a character outside a character vocabulary."""
    ids = [start_id(vocab, level)]
    if prompt:
        try:
            ids += encode(prompt, vocab, level, strict=level == "char").tolist()
        except DataError as err:
            raise DataError(f"--prompt: {err}") from None
    return ids
