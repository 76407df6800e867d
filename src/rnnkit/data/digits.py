"""The connected-digit recipe: utterances of 1 to 7 spoken digits made from the Free Spoken
Digit Dataset, as TIDIGITS records them.

Each utterance joins recordings of one speaker (``{digit}_{speaker}_{index}.wav``) with
short gaps (50-250 ms between digits, 100-300 ms at either end) of silence or of low white
noise, and is written as a WAV file with its transcript (``"three one four"``) in a manifest.
The split is by recording index: indices 5-9 make the dev set, 10-49 the training set (the
official test indices 0-4 are not in ``../shared/data/fsdd``), so no recording is in both.
The isolated recordings are the 1-digit case: ``dev-isolated.tsv`` lists every dev recording
alone, with the same end gaps, for isolated-digit accuracy (``dev-isolated/``). With
``isolated_train`` (``--isolated-train``) the training set also holds every training
recording alone (``train-isolated/``), as TIDIGITS's training set holds isolated digits
beside strings. Measured (benchmarks/RESULTS.md, ninth session), one 30-minute run each:
strings only, 1.47% dev WER on strings and 91.0% isolated accuracy; with the isolated
recordings, 2.69% and 94.7%. Everything is deterministic given the seed.

    rnnkit prepare-digits ../shared/data/fsdd --out data/digits
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from rnnkit.data.audio import read_audio, write_manifest, write_wav
from rnnkit.errors import DataError, note
from rnnkit.files import write_text_atomic

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DEV_INDICES = range(5, 10)
_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")


def recordings(folder: str | Path) -> dict[str, dict[int, list[tuple[int, Path]]]]:
    """``{speaker: {digit: [(index, path), ...]}}`` of the FSDD recordings in ``folder`` (the
    data set's folder or its ``recordings/``)."""
    folder = Path(folder)
    if (folder / "recordings").is_dir():
        folder = folder / "recordings"
    if not folder.is_dir():
        raise DataError("no such folder (expected the Free Spoken Digit Dataset's "
                        "recordings/)", folder)
    out: dict[str, dict[int, list[tuple[int, Path]]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(folder.iterdir()):
        m = _NAME.match(path.name)
        if m:
            out[m.group(2)][int(m.group(1))].append((int(m.group(3)), path))
    if not out:
        raise DataError("no recordings named {digit}_{speaker}_{index}.wav", folder)
    return out


def _gap(rng: np.random.Generator, rate: int, lo_ms: float, hi_ms: float) -> np.ndarray:
    n = int(rate * rng.uniform(lo_ms, hi_ms) / 1000)
    if rng.random() < 0.5:
        return np.zeros(n, dtype=np.float32)
    return (rng.standard_normal(n) * rng.uniform(0.001, 0.005)).astype(np.float32)


def _read(path: Path, rate: int, cache: dict) -> np.ndarray:
    """The samples of ``path`` at ``rate``, each file read once (``cache``: path -> samples)."""
    if path not in cache:
        cache[path] = read_audio(path, rate)[0]
    return cache[path]


def _alone(pool: dict[str, dict[int, list[tuple[int, Path]]]], out: Path,
           rng: np.random.Generator, rate: int, cache: dict) -> list[tuple[str, str, float]]:
    """Every recording of ``pool`` alone, between end gaps of 100-300 ms, written under
    ``out``; their manifest rows (as :func:`make_set`'s)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for speaker in sorted(pool):
        for d in range(10):
            for _, path in pool[speaker][d]:
                audio = np.concatenate([_gap(rng, rate, 100, 300), _read(path, rate, cache),
                                        _gap(rng, rate, 100, 300)])
                write_wav(out / path.name, audio, rate)
                rows.append((f"{out.name}/{path.name}", DIGITS[d], len(audio) / rate))
    return rows


def make_set(pool: dict[str, dict[int, list[tuple[int, Path]]]], out: Path, count: int,
             rng: np.random.Generator, rate: int, max_digits: int, cache: dict
             ) -> list[tuple[str, str, float]]:
    """``count`` connected-digit utterances from ``pool`` written under ``out``; their
    manifest rows (path relative to ``out``'s parent, text, seconds)."""
    out.mkdir(parents=True, exist_ok=True)
    speakers = sorted(pool)
    rows = []
    for n in range(count):
        speaker = speakers[rng.integers(len(speakers))]
        digits = rng.integers(0, 10, size=int(rng.integers(1, max_digits + 1))).tolist()
        parts = [_gap(rng, rate, 100, 300)]
        for i, d in enumerate(digits):
            choices = pool[speaker][d]
            _, path = choices[rng.integers(len(choices))]
            if i:
                parts.append(_gap(rng, rate, 50, 250))
            parts.append(_read(path, rate, cache))
        parts.append(_gap(rng, rate, 100, 300))
        audio = np.concatenate(parts)
        name = f"{n:05d}_{speaker}_{''.join(map(str, digits))}.wav"
        write_wav(out / name, audio, rate)
        rows.append((f"{out.name}/{name}", " ".join(DIGITS[d] for d in digits),
                     len(audio) / rate))
    return rows


def prepare_digits(fsdd: str | Path, out: str | Path, *, seed: int = 0,
                   train_utterances: int = 3000, dev_utterances: int = 300,
                   max_digits: int = 7, rate: int = 8000, isolated_train: bool = False
                   ) -> dict[str, Path]:
    """Build the connected-digit train and dev sets (see the module docstring) under ``out``:
    ``train/``, ``train-isolated/`` (with ``isolated_train``), ``dev/``,
    ``dev-isolated/`` (WAV), ``train.tsv``, ``dev.tsv`` and ``dev-isolated.tsv``, and the
    transcripts alone, a line each, in ``train.txt`` and ``dev.txt`` (the text of a character
    LM for the beam search: ``rnnkit train lm --train train.txt --dev dev.txt --level
    char``). The isolated training recordings draw their gaps from a generator of their own,
    so the other sets are the same with or without them. Returns the manifests' paths by
    name."""
    if max_digits < 1 or train_utterances < 1 or dev_utterances < 1:
        raise ValueError("max_digits, train_utterances and dev_utterances must be positive")
    every = recordings(fsdd)
    out = Path(out)
    split: dict[str, dict[str, dict[int, list]]] = {"train": {}, "dev": {}}
    for speaker, by_digit in every.items():
        for digit, items in by_digit.items():
            for name, keep in (("dev", lambda i: i in DEV_INDICES),
                               ("train", lambda i: i not in DEV_INDICES)):
                chosen = [(i, p) for i, p in items if keep(i)]
                if chosen:
                    split[name].setdefault(speaker, {})[digit] = chosen
    for name in split:  # a speaker lacking a digit in a split cannot say every number
        split[name] = {s: d for s, d in split[name].items() if len(d) == 10}
        if not split[name]:
            raise DataError(f"no speaker has all ten digits in the {name} indices", fsdd)
    rng = np.random.default_rng(seed)
    cache: dict = {}
    manifests = {}
    for name, count in (("train", train_utterances), ("dev", dev_utterances)):
        rows = make_set(split[name], out / name, count, rng, rate, max_digits, cache)
        alone = ""
        if name == "train" and isolated_train:
            extra = _alone(split["train"], out / "train-isolated",
                           np.random.default_rng([seed, 1]), rate, cache)
            rows += extra
            alone = f" ({len(extra)} of them isolated recordings)"
        manifests[name] = out / f"{name}.tsv"
        write_manifest(manifests[name], rows)
        write_text_atomic(out / f"{name}.txt", "".join(f"{r[1]}\n" for r in rows))
        seconds = sum(r[2] for r in rows)
        note(f"{manifests[name]}: {len(rows)} utterances{alone}, {seconds / 60:.1f} minutes")
    isolated = _alone(split["dev"], out / "dev-isolated", rng, rate, cache)  # the 1-digit case
    manifests["dev-isolated"] = out / "dev-isolated.tsv"
    write_manifest(manifests["dev-isolated"], isolated)
    note(f"{manifests['dev-isolated']}: {len(isolated)} isolated dev recordings")
    return manifests


__all__ = ["DEV_INDICES", "DIGITS", "make_set", "prepare_digits", "recordings"]
