"""Parallel corpora for translation: reading, subword vocabularies, length filtering, batches.

A corpus is either two line-aligned files (``train.de`` / ``train.en``: line i of one is the
translation of line i of the other) or one TSV file (``source<TAB>target`` per line).

How bad input is handled (the same rules everywhere in rnnkit):

- files with different numbers of lines: :class:`~rnnkit.errors.DataError` naming both files
  and both counts, before anything is trained;
- a TSV line without exactly one tab: ``DataError`` naming the file and line;
- a pair whose source or target is empty (after stripping white space): dropped from training
  data and counted in :class:`FilterReport` (``empty``); in a file to translate, an empty line
  gives an empty translation (the output stays line-aligned);
- a pair longer than the maximum (in subword tokens, source or target) in training data:
  dropped and counted (``too_long``); a source line longer than the maximum in a file to
  translate: truncated to the maximum with a warning naming the file and line
  (``on_long="truncate"``, the default), or a ``DataError`` naming them (``on_long="error"``).

Subwords come from sentencepiece (unigram or BPE), trained on the training corpus, joint (one
model for both languages) or separate (one per language), its model files saved in the run
directory. Ids: 0 padding, 1 unknown, 2 begin (BOS), 3 end (EOS).
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from rnnkit.data.text import read_text
from rnnkit.errors import DataError, warn

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def _read_lines(path: str | Path) -> list[str]:
    lines = read_text(path, allow_empty=True).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_parallel(src: str | Path, tgt: str | Path | None = None) -> list[tuple[str, str]]:
    """Pairs ``(source, target)`` from two line-aligned files, or from one TSV when ``tgt`` is
    ``None``. Raises :class:`DataError` on a line-count mismatch (naming both files and counts)
    or a TSV line without exactly one tab. Empty sides are kept here (see :func:`filter_pairs`).
    """
    if tgt is None:
        pairs = []
        for i, line in enumerate(_read_lines(src), start=1):
            parts = line.split("\t")
            if len(parts) != 2:
                raise DataError(f"expected 'source<TAB>target', found {len(parts) - 1} tabs",
                                src, i)
            pairs.append((parts[0].strip(), parts[1].strip()))
        return pairs
    a, b = _read_lines(src), _read_lines(tgt)
    if len(a) != len(b):
        raise DataError(f"source and target are not aligned: {src} has {len(a)} lines, "
                        f"{tgt} has {len(b)} lines")
    return [(x.strip(), y.strip()) for x, y in zip(a, b)]


class SubwordVocab:
    """A sentencepiece model: text <-> ids, with rnnkit's special ids (0 pad, 1 unk, 2 bos,
    3 eos). Load with :meth:`load`, train with :meth:`train`; ``decode`` gives detokenised
    text (sentencepiece is lossless on white space)."""

    def __init__(self, model_file: str | Path) -> None:
        spm = _sentencepiece()
        self.path = Path(model_file)
        if not self.path.is_file():
            raise DataError("sentencepiece model missing", self.path)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))

    @classmethod
    def train(cls, texts: Sequence[str], model_file: str | Path, vocab_size: int = 8000,
              model_type: str = "unigram", character_coverage: float = 1.0) -> SubwordVocab:
        """Train on ``texts`` (one sentence each) and write ``model_file`` (a .model file)."""
        spm = _sentencepiece()
        model_file = Path(model_file)
        model_file.parent.mkdir(parents=True, exist_ok=True)
        texts = [t for t in texts if t]
        if not texts:
            raise DataError("no non-empty sentences to train a subword vocabulary on")
        needed = len(set("".join(texts)) - {" "}) + 5  # the characters, 4 specials, '▁'
        if vocab_size < needed and character_coverage >= 1.0:
            raise DataError(f"--vocab-size {vocab_size} is smaller than the {needed} pieces "
                            f"the text needs (its distinct characters and 4 special "
                            f"symbols); use --vocab-size {needed} or more")
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            hard_vocab_limit=False, minloglevel=2, num_threads=1,
            input_sentence_size=2_000_000, shuffle_input_sentence=True)
        tmp = model_file.with_suffix(model_file.suffix + ".tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(model_file)
        return cls(model_file)

    def __len__(self) -> int:
        return int(self.sp.get_piece_size())

    def encode(self, text: str) -> list[int]:
        """Subword ids of ``text`` (no BOS/EOS)."""
        return list(self.sp.encode(text))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(x) for x in self.sp.encode(list(texts))]

    def decode(self, ids: Sequence[int]) -> str:
        """Detokenised text of ``ids``; special ids are skipped."""
        return self.sp.decode([int(i) for i in ids if int(i) > EOS_ID])

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """The subword strings of ``ids`` (for attention plots)."""
        return [self.sp.id_to_piece(int(i)) for i in ids]


def _sentencepiece():
    try:
        import sentencepiece
    except ImportError:
        raise DataError('translation needs sentencepiece: pip install -e ".[translate]"') from None
    return sentencepiece


def train_vocabs(pairs: Sequence[tuple[str, str]], out_dir: str | Path, vocab_size: int = 8000,
                 joint: bool = True, model_type: str = "unigram"
                 ) -> tuple[SubwordVocab, SubwordVocab]:
    """Source and target vocabularies trained on ``pairs``, saved in ``out_dir`` as
    ``spm.model`` (joint; both returned objects are the same model) or ``spm.src.model`` and
    ``spm.tgt.model`` (separate, ``vocab_size`` each)."""
    out_dir = Path(out_dir)
    if joint:
        texts = [s for s, _ in pairs] + [t for _, t in pairs]
        v = SubwordVocab.train(texts, out_dir / "spm.model", vocab_size, model_type)
        return v, v
    src = SubwordVocab.train([s for s, _ in pairs], out_dir / "spm.src.model", vocab_size,
                             model_type)
    tgt = SubwordVocab.train([t for _, t in pairs], out_dir / "spm.tgt.model", vocab_size,
                             model_type)
    return src, tgt


def load_vocabs(run_dir: str | Path) -> tuple[SubwordVocab, SubwordVocab]:
    """The vocabularies :func:`train_vocabs` saved in ``run_dir``."""
    run_dir = Path(run_dir)
    if (run_dir / "spm.model").is_file():
        v = SubwordVocab(run_dir / "spm.model")
        return v, v
    return SubwordVocab(run_dir / "spm.src.model"), SubwordVocab(run_dir / "spm.tgt.model")


@dataclass
class FilterReport:
    """What :func:`filter_pairs` dropped: pairs with an empty side, pairs over the maximum."""

    kept: int
    empty: int
    too_long: int

    @property
    def dropped(self) -> int:
        return self.empty + self.too_long

    def __str__(self) -> str:
        return (f"kept {self.kept} pairs, dropped {self.dropped} "
                f"({self.empty} with an empty side, {self.too_long} too long)")


def filter_pairs(pairs: Sequence[tuple[list[int], list[int]]], max_src_len: int,
                 max_tgt_len: int) -> tuple[list[tuple[list[int], list[int]]], FilterReport]:
    """Drop pairs with an empty side or with more than ``max_src_len`` source / ``max_tgt_len``
    target subword tokens; returns the kept pairs and the counts."""
    kept, empty, long_ = [], 0, 0
    for s, t in pairs:
        if not s or not t:
            empty += 1
        elif len(s) > max_src_len or len(t) > max_tgt_len:
            long_ += 1
        else:
            kept.append((s, t))
    return kept, FilterReport(len(kept), empty, long_)


def encode_pairs(pairs: Sequence[tuple[str, str]], src_vocab: SubwordVocab,
                 tgt_vocab: SubwordVocab) -> list[tuple[list[int], list[int]]]:
    """Subword ids of each side of each pair (no BOS/EOS)."""
    src = src_vocab.encode_batch([s for s, _ in pairs])
    tgt = tgt_vocab.encode_batch([t for _, t in pairs])
    return list(zip(src, tgt))


def prepare_sources(lines: Sequence[str], vocab: SubwordVocab, max_len: int,
                    path: str | Path = "<input>", on_long: str = "truncate"
                    ) -> list[list[int]]:
    """Ids of each line to translate; empty lines give ``[]``; lines longer than ``max_len``
    subwords are truncated with a warning on stderr (``on_long="truncate"``) or raise a
    :class:`DataError` naming ``path`` and the line (``on_long="error"``)."""
    if on_long not in ("truncate", "error"):
        raise ValueError(f"on_long must be 'truncate' or 'error', got {on_long!r}")
    out = []
    for i, ids in enumerate(vocab.encode_batch([line.strip() for line in lines]), start=1):
        if len(ids) > max_len:
            msg = f"source has {len(ids)} subword tokens, more than the maximum {max_len}"
            if on_long == "error":
                raise DataError(msg, path, i)
            warn(f"{path}:{i}: {msg}; truncated")
            ids = ids[:max_len]
        out.append(ids)
    return out


@dataclass
class Batch:
    """A padded batch. ``src`` (B, S) and ``src_lengths`` (B,); ``tgt_in`` (B, T) starting with
    BOS and ``tgt_out`` (B, T) ending with EOS (padding 0); ``index`` (B,) positions in the
    corpus."""

    src: Tensor
    src_lengths: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    index: Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in (self.src, self.src_lengths, self.tgt_in,
                                              self.tgt_out, self.index)))


def pad(seqs: Sequence[Sequence[int]], value: int = PAD_ID) -> Tensor:
    """(B, max length) int64 tensor of ``seqs`` padded with ``value``."""
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), max(width, 1)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            out[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out


def make_batch(pairs: Sequence[tuple[list[int], list[int]]], index: Sequence[int]) -> Batch:
    """One :class:`Batch` of ``pairs`` (id lists without BOS/EOS)."""
    src = [s for s, _ in pairs]
    return Batch(pad(src), torch.tensor([len(s) for s in src]),
                 pad([[BOS_ID, *t] for _, t in pairs]), pad([[*t, EOS_ID] for _, t in pairs]),
                 torch.tensor(list(index)))


def batches(pairs: Sequence[tuple[list[int], list[int]]], max_tokens: int = 4000,
            shuffle: bool = True, seed: int = 0, max_sentences: int | None = None
            ) -> Iterator[Batch]:
    """Batches of pairs of similar lengths, each at most ``max_tokens`` padded tokens (batch
    size x the longer side's width) and ``max_sentences`` pairs; the bucketing keeps padding
    low. Order shuffled with ``seed`` when ``shuffle``; every pair appears once."""
    rng = random.Random(seed)
    order = list(range(len(pairs)))
    if shuffle:
        rng.shuffle(order)
    # sort within chunks of 100 batches' worth, so batches hold similar lengths but vary
    chunk = max(1, 100 * max_tokens // 20)
    groups: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: (len(pairs[i][0]),
                                                                  len(pairs[i][1])))
        cur: list[int] = []
        width = 0
        for i in part:
            w = max(width, len(pairs[i][1]) + 1, len(pairs[i][0]))
            full = max_sentences is not None and len(cur) >= max_sentences
            if cur and (w * (len(cur) + 1) > max_tokens or full):
                groups.append(cur)
                cur, w = [], max(len(pairs[i][1]) + 1, len(pairs[i][0]))
            cur.append(i)
            width = w
        if cur:
            groups.append(cur)
    if shuffle:
        rng.shuffle(groups)
    for g in groups:
        yield make_batch([pairs[i] for i in g], g)
