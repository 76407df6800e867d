"""Audio for speech recognition: reading sound files and the manifests that list them.

Sound files are read with ``soundfile`` (libsndfile: WAV, FLAC, OGG, ...), mixed down to mono
and, at another sample rate than the model's, resampled with ``scipy.signal.resample_poly``
(a polyphase filter), as the speed perturbation of training audio is (:func:`change_speed`);
both are the optional extra ``rnnkit[asr]``.

A manifest lists utterances, one a line, in either of two forms:

- TSV with a header naming the columns ``audio`` and ``text`` (others are ignored)::

      audio<TAB>text
      clips/0001.wav<TAB>three one four

- JSON lines, as NeMo and others write them (``duration`` optional)::

      {"audio_filepath": "clips/0001.wav", "text": "three one four", "duration": 1.62}

Relative paths are relative to the manifest's folder. A line whose transcript is empty is
skipped and counted (corpora commonly have a few: untranscribable or silent clips); every
other problem is a :class:`~rnnkit.errors.DataError` naming the manifest and line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from rnnkit.errors import DataError, warn


@dataclass(frozen=True)
class Utterance:
    """One line of a manifest.

    Attributes:
        audio: the sound file's absolute path.
        text: the transcript, white space made single.
        source: where it was listed, ``"manifest:line"`` (for messages).
        duration: seconds, when the manifest says.
    """

    audio: str
    text: str
    source: str
    duration: float | None = None


def _soundfile():
    try:
        import soundfile
    except ImportError:
        raise DataError("reading audio needs the soundfile package: pip install "
                        "'rnnkit[asr]'") from None
    return soundfile


def read_audio(path: str | Path, rate: int | None = None, source: str | None = None
               ) -> tuple[np.ndarray, int]:
    """The samples of a sound file as float32 mono in [-1, 1], (N,), and their rate: the
    file's, or ``rate`` (resampled when the file's differs). ``source`` names where the file
    was listed, for errors."""
    sf = _soundfile()
    where = source or str(path)
    if not Path(path).is_file():  # libsndfile would say only "System error"
        raise DataError(f"audio file not found: {path}", source)
    try:
        samples, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError) as err:  # libsndfile's "format not recognised"
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"cannot read {path} as audio ({message})", source) from None
    if where != str(path):
        where = f"{where} ({path})"
    if samples.shape[0] == 0:
        raise DataError(f"{where}: the audio file holds no samples")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if rate is not None and file_rate != rate:
        mono = resample(mono, file_rate, rate, where)
        file_rate = rate
    return np.ascontiguousarray(mono, dtype=np.float32), int(file_rate)


def resample(samples: np.ndarray, from_rate: int, to_rate: int, where: str = "audio"
             ) -> np.ndarray:
    """``samples`` at ``from_rate`` resampled to ``to_rate`` (polyphase, scipy)."""
    return _polyphase(samples, int(to_rate), int(from_rate),
                      f"{where}: recorded at {from_rate} Hz, the model's rate is {to_rate} Hz;"
                      f" resampling")


def change_speed(samples: np.ndarray, factor: float) -> np.ndarray:
    """``samples`` played ``factor`` times as fast, tempo and pitch together (``sox speed``,
    the speed perturbation of Kaldi and ESPnet, Ko et al. 2015): resampled to about
    ``len / factor`` samples at the same rate (``factor`` as a fraction of denominator at
    most 100)."""
    ratio = Fraction(factor).limit_denominator(100)
    if ratio <= 0:
        raise ValueError(f"a speed factor must be positive, got {factor}")
    return _polyphase(samples, ratio.denominator, ratio.numerator, "speed perturbation")


def _polyphase(samples: np.ndarray, up: int, down: int, why: str) -> np.ndarray:
    try:
        from scipy.signal import resample_poly
    except ImportError:
        raise DataError(f"{why} needs scipy: pip install 'rnnkit[asr]'") from None
    g = math.gcd(up, down)
    return resample_poly(samples, up // g, down // g).astype(np.float32)


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> None:
    """Write float32 mono samples as 16-bit PCM WAV."""
    _soundfile().write(str(path), np.clip(samples, -1.0, 1.0), rate, subtype="PCM_16")


def _text(value: object, where: str, path: Path, line: int) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where} must be a string, got {type(value).__name__}", path, line)
    return " ".join(value.split())


def read_manifest(path: str | Path, *, check_files: bool = True) -> list[Utterance]:
    """The utterances of a TSV or JSON-lines manifest (see the module docstring); lines with
    an empty transcript are skipped with a warning that counts them. ``check_files``: a
    listed file that does not exist is an error naming the line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read the manifest ({err.strerror or err})", path) from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text (byte {err.start})", path) from None
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise DataError("the manifest is empty", path)
    base = path.resolve().parent
    jsonl = lines[first].lstrip().startswith("{")
    out: list[Utterance] = []
    empty: list[int] = []
    if jsonl:
        rows = _json_rows(lines, path)
    else:
        rows = _tsv_rows(lines, first, path)
    for number, audio, text, duration in rows:
        if not text:
            empty.append(number)
            continue
        audio_path = Path(audio)
        if not audio_path.is_absolute():
            audio_path = base / audio_path
        if check_files and not audio_path.is_file():
            raise DataError(f"audio file not found: {audio_path}", path, number)
        out.append(Utterance(str(audio_path), text, f"{path}:{number}", duration))
    if empty:
        warn(f"{path}: skipped {len(empty)} line(s) with an empty transcript (first: line "
             f"{empty[0]})")
    if not out:
        raise DataError("no utterance with a transcript", path)
    return out


def _json_rows(lines: list[str], path: Path):
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"not a JSON object ({err.msg})", path, number) from None
        if not isinstance(row, dict) or "audio_filepath" not in row or "text" not in row:
            raise DataError('expected an object with "audio_filepath" and "text"', path, number)
        duration = row.get("duration")
        if duration is not None and not isinstance(duration, (int, float)):
            raise DataError(f'"duration" must be a number, got {duration!r}', path, number)
        audio = row["audio_filepath"]
        if not isinstance(audio, str) or not audio:
            raise DataError('"audio_filepath" must be a non-empty string', path, number)
        yield number, audio, _text(row["text"], '"text"', path, number), duration


def _tsv_rows(lines: list[str], first: int, path: Path):
    header = [c.strip() for c in lines[first].split("\t")]
    if "audio" not in header or "text" not in header:
        raise DataError(f"a TSV manifest starts with a header naming the columns 'audio' and "
                        f"'text', got {header}", path, first + 1)
    a, t = header.index("audio"), header.index("text")
    for number, line in enumerate(lines[first + 1:], first + 2):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) <= a:
            raise DataError(f"expected {len(header)} tab-separated columns, got {len(cols)}",
                            path, number)
        audio = cols[a].strip()
        if not audio:
            raise DataError("the audio column is empty", path, number)
        yield number, audio, " ".join(cols[t].split()) if len(cols) > t else "", None


def write_manifest(path: str | Path, utterances: list[tuple[str, str, float]]) -> None:
    """Write ``(audio, text, duration)`` rows as a manifest: JSON lines when ``path`` ends in
    ``.json`` or ``.jsonl``, else TSV; audio paths as given."""
    from rnnkit.files import write_text_atomic

    path = Path(path)
    if path.suffix in (".json", ".jsonl"):
        text = "".join(json.dumps({"audio_filepath": a, "text": t, "duration": round(d, 4)})
                       + "\n" for a, t, d in utterances)
    else:
        text = "audio\ttext\n" + "".join(f"{a}\t{t}\n" for a, t, _ in utterances)
    write_text_atomic(path, text)


__all__ = ["Utterance", "change_speed", "read_audio", "read_manifest", "resample",
           "write_manifest", "write_wav"]
