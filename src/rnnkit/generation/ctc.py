"""Decoding CTC posteriors: greedy, and the prefix beam search with shallow fusion of a
character language model.

A CTC output is a label sequence: a path of per-step symbols (the alphabet and a blank)
collapsed by merging repeats and dropping blanks. Greedy decoding collapses the best symbol of
each step. The prefix beam search (Hannun et al. 2014, "First-pass large vocabulary continuous
speech recognition using bi-directional recurrent DNNs") keeps the K best *prefixes*, each with
the probability of all paths ending in a blank (``p_b``) and in its last symbol (``p_nb``), so
that a prefix's score sums over its alignments; with an LM, extending a prefix by character c
adds ``lm_weight * log P_LM(c | prefix)``, and ``word_bonus`` for each space (each new word),
which balances the LM's preference for fewer words; a finished transcript adds ``lm_weight *
log P_LM(end | prefix)``, so that a prefix the LM would not end with (a word cut short, as
"thre" for "three") loses to one it would. Without an LM and with a beam wide enough
to keep every prefix, the best prefix is the most probable label sequence (tests compare it
with the sum over all alignments).

With a :class:`Lexicon` (flashlight's lexicon decoder, Kaldi's L), a prefix grows only into
the words of a closed vocabulary: a character only where it continues some word, a space only
after a whole word, and a finished transcript must end in one; a misspelling ("thre") is
never written, the nearest word the posteriors allow is.

Both decoders are incremental (:meth:`PrefixBeamSearch.advance` takes the next steps), so a
streaming decode that feeds chunks ends in exactly the state of a whole-utterance decode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from rnnkit.layers.recurrent import map_states

NEG_INF = -math.inf


def _logaddexp(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


def greedy_ids(log_probs: Tensor, length: int | None = None, blank: int = 0) -> list[int]:
    """The collapsed best path of (T, V) log-probabilities (its first ``length`` steps)."""
    best = log_probs[:length].argmax(-1).tolist()
    out, prev = [], blank
    for s in best:
        if s != prev and s != blank:
            out.append(s)
        prev = s
    return out


class GreedyStream:
    """Greedy decoding a chunk at a time: the collapsed best path so far."""

    def __init__(self, blank: int = 0) -> None:
        self.blank, self.prev, self.ids = blank, blank, []

    def advance(self, log_probs: Tensor) -> None:
        """Take the next steps' (S, V) log-probabilities."""
        for s in log_probs.argmax(-1).tolist():
            if s != self.prev and s != self.blank:
                self.ids.append(s)
            self.prev = s

    def best(self) -> list[int]:
        return list(self.ids)


class CharLMScorer:
    """Next-character log-probabilities of prefixes from an rnnkit character language model,
    one batched LM step per decoding step for the prefixes new to it (cached by prefix).

    Args:
        model: a :class:`~rnnkit.models.lm.LanguageModel` (eval mode).
        lm_ids: for each ASR symbol id (the blank's entry unused), the LM's token id; the
            LM's ``<unk>`` for characters it does not know.
        start_id: the LM's input before the first character (its ``<eos>``), also what it
            predicts after the last one (the end of the transcript).
    """

    def __init__(self, model, lm_ids: Sequence[int], start_id: int) -> None:
        self.model = model
        self.lm_ids = torch.tensor([*lm_ids, start_id])  # the symbols', then the end's
        self.start_id = start_id
        self.cache: dict[tuple[int, ...], tuple[Tensor, object]] = {}

    def _run(self, tokens: list[int], states: list) -> list[tuple[Tensor, object]]:
        """One LM step for a batch of (last token, state)."""
        model = self.model
        if any(s is None for s in states):  # only the empty prefix has no state
            batch_state = None
        else:
            batch_state = _cat_states(states)
        with torch.no_grad():
            logits, new_state = model.step(torch.tensor(tokens), batch_state)
            logp = torch.log_softmax(logits.float(), dim=-1)[:, self.lm_ids]
        return [(logp[i], _index_state(new_state, i)) for i in range(len(tokens))]

    def prepare(self, prefixes: Sequence[tuple[int, ...]]) -> None:
        """Compute (batched) the distributions of the prefixes not yet cached; each prefix's
        parent (the prefix without its last symbol) must be cached, or it is the empty one."""
        todo = [p for p in dict.fromkeys(prefixes) if p not in self.cache]
        if not todo:
            return
        if () in todo:
            self.cache[()] = self._run([self.start_id], [None])[0]
            todo.remove(())
        for p in todo:  # parents first (a prefix grows by one symbol per step)
            if p[:-1] not in self.cache:
                self.prepare([p[:-1]])
        if todo:
            tokens = [int(self.lm_ids[p[-1]]) for p in todo]
            states = [self.cache[p[:-1]][1] for p in todo]
            for p, entry in zip(todo, self._run(tokens, states)):
                self.cache[p] = entry

    def logp(self, prefix: tuple[int, ...]) -> Tensor:
        """log P_LM(next symbol | prefix) over the ASR symbols (V,)."""
        return self.cache[prefix][0][:-1]

    def end_logp(self, prefix: tuple[int, ...]) -> float:
        """log P_LM(the transcript ends | prefix)."""
        return float(self.cache[prefix][0][-1])

    def forget(self, keep: set[tuple[int, ...]]) -> None:
        """Drop the cached prefixes not in ``keep`` (bounded memory on long audio)."""
        self.cache = {p: v for p, v in self.cache.items() if p in keep}


def _cat_states(states: list) -> object:
    """One batch state from single-row states (tensors, or tuples / lists of them)."""
    first = states[0]
    if isinstance(first, Tensor):
        return torch.cat(states, dim=0)
    return type(first)(_cat_states([s[i] for s in states]) for i in range(len(first)))


def _index_state(state: object, i: int) -> object:
    """Row ``i`` of a batch state, as a batch of one."""
    return map_states(lambda s: s[i:i + 1], state)


class Lexicon:
    """A closed vocabulary for :class:`PrefixBeamSearch`: the words as symbol-id sequences.

    Args:
        words: each word's symbol ids (no space inside a word); at least one, none empty.
        space: the space's symbol id, which separates words; None when the alphabet has no
            space (a transcript is then one word).
    """

    def __init__(self, words: Sequence[Sequence[int]], space: int | None = None) -> None:
        self.words = {tuple(w) for w in words}
        if not self.words or () in self.words:
            raise ValueError("a lexicon needs at least one word, and no empty one")
        if space is not None and any(space in w for w in self.words):
            raise ValueError("a lexicon's words hold no space")
        self.space = space
        # each beginning of a word -> the symbols that may follow it (a space after a word)
        nexts: dict[tuple[int, ...], set[int]] = {}
        for w in self.words:
            for i in range(len(w)):
                nexts.setdefault(w[:i], set()).add(w[i])
            if space is not None:
                nexts.setdefault(w, set()).add(space)
        self._next = {p: frozenset(c) for p, c in nexts.items()}

    def _last_word(self, prefix: tuple[int, ...]) -> tuple[int, ...]:
        """The symbols of ``prefix`` after its last space (the word being written)."""
        for i in range(len(prefix) - 1, -1, -1):
            if prefix[i] == self.space:
                return prefix[i + 1:]
        return prefix

    def next_symbols(self, prefix: tuple[int, ...]) -> frozenset[int]:
        """The symbols that ``prefix`` (itself allowed) may grow by."""
        return self._next.get(self._last_word(prefix), frozenset())

    def complete(self, prefix: tuple[int, ...]) -> bool:
        """Whether ``prefix`` ends in a whole word (or is empty: nothing said)."""
        return not prefix or self._last_word(prefix) in self.words


class PrefixBeamSearch:
    """The CTC prefix beam search over steps given a chunk at a time.

    Args:
        beam: prefixes kept after each step (K).
        blank: the blank's symbol id.
        lm: a :class:`CharLMScorer`, or None.
        lm_weight: the LM's log-probabilities times this.
        word_bonus: added for every space emitted.
        space: the space's symbol id (None: no word bonus).
        prune: symbols less likely than this log-probability at a step are not tried
            (the blank and the prefix's last symbol always are).
        lexicon: a :class:`Lexicon`, or None (any label sequence).
    """

    def __init__(self, beam: int = 8, blank: int = 0, lm: CharLMScorer | None = None,
                 lm_weight: float = 0.5, word_bonus: float = 0.0, space: int | None = None,
                 prune: float = -12.0, lexicon: Lexicon | None = None) -> None:
        if beam < 1:
            raise ValueError(f"beam must be a positive int, got {beam}")
        self.beam, self.blank, self.lm, self.lexicon = beam, blank, lm, lexicon
        self.lm_weight, self.word_bonus, self.space, self.prune = (lm_weight, word_bonus,
                                                                   space, prune)
        # prefix -> (log p_b, log p_nb, log of the LM and word-bonus terms)
        self.beams: dict[tuple[int, ...], tuple[float, float, float]] = {(): (0.0, NEG_INF, 0.0)}

    def _extension(self, prefix: tuple[int, ...], c: int) -> float:
        extra = 0.0
        if self.lm is not None:
            extra += self.lm_weight * float(self.lm.logp(prefix)[c])
        if c == self.space:
            extra += self.word_bonus
        return extra

    def advance(self, log_probs: Tensor) -> None:
        """Take the next steps' (S, V) log-probabilities."""
        for row in log_probs.tolist():
            self._step(row)

    def _step(self, row: list[float]) -> None:
        if self.lm is not None:
            self.lm.prepare(list(self.beams))
        blank = self.blank
        p_blank = row[blank]
        candidates = [c for c, p in enumerate(row) if p >= self.prune and c != blank]
        new: dict[tuple[int, ...], list[float]] = {}

        def entry(prefix: tuple[int, ...], extra: float) -> list[float]:
            e = new.get(prefix)
            if e is None:
                e = new[prefix] = [NEG_INF, NEG_INF, extra]
            return e

        for prefix, (pb, pnb, extra) in self.beams.items():
            allowed = None if self.lexicon is None else self.lexicon.next_symbols(prefix)
            total = _logaddexp(pb, pnb)
            e = entry(prefix, extra)
            e[0] = _logaddexp(e[0], total + p_blank)  # a blank: the prefix stays
            last = prefix[-1] if prefix else None
            if last is not None:  # the last symbol repeated, merged: the prefix stays
                e[1] = _logaddexp(e[1], pnb + row[last])
            for c in candidates if last is None or last in candidates else [*candidates, last]:
                if allowed is not None and c not in allowed:
                    continue
                p = row[c]
                grown = (*prefix, c)
                g = entry(grown, extra + self._extension(prefix, c))
                # after the same symbol, only a path through a blank starts a new one
                g[1] = _logaddexp(g[1], (pb if c == last else total) + p)
        # a prefix no path reaches (after a repeat with no blank between) is not kept
        live = [(p, v) for p, v in new.items() if _logaddexp(v[0], v[1]) > NEG_INF]
        ranked = sorted(live, key=lambda kv: _logaddexp(kv[1][0], kv[1][1]) + kv[1][2],
                        reverse=True)[:self.beam]
        self.beams = {p: (v[0], v[1], v[2]) for p, v in ranked}
        if self.lm is not None:  # the next step extends these; their parents made them
            self.lm.forget(set(self.beams) | {p[:-1] for p in self.beams if p})

    def scored(self) -> list[tuple[tuple[int, ...], float]]:
        """The prefixes kept, best first, with their scores as finished transcripts (log p of
        the alignments + the LM and word-bonus terms + the LM's end term). With a lexicon,
        those ending in a whole word come first (the others only where none does: audio
        cut off mid-word, or a partial hypothesis of a stream)."""
        if self.lm is not None:  # what the next step would compute first: the same batch
            self.lm.prepare(list(self.beams))
        out = [(p, _logaddexp(pb, pnb) + extra + self._end(p))
               for p, (pb, pnb, extra) in self.beams.items()]
        lex = self.lexicon
        return sorted(out, key=lambda x: (lex is None or lex.complete(x[0]), x[1]), reverse=True)

    def _end(self, prefix: tuple[int, ...]) -> float:
        return 0.0 if self.lm is None else self.lm_weight * self.lm.end_logp(prefix)

    def best(self) -> list[int]:
        return list(self.scored()[0][0])


def beam_ids(log_probs: Tensor, length: int | None = None, **options) -> list[int]:
    """The best prefix of a whole utterance's (T, V) log-probabilities (its first ``length``
    steps); ``options`` as :class:`PrefixBeamSearch`."""
    search = PrefixBeamSearch(**options)
    search.advance(log_probs[:length])
    return search.best()


__all__ = ["CharLMScorer", "GreedyStream", "PrefixBeamSearch", "beam_ids", "greedy_ids"]
