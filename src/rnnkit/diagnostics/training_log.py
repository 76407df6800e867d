"""Reading a training run's JSON-lines log: gradient norms, clipping events and loss spikes.

The training loop (``rnnkit.training.Trainer``) writes ``DIR/log.jsonl``, one JSON object per
line; its training records (``"kind": "train"``, every ``log_every`` steps) hold

- ``step`` (int): the optimiser step;
- ``loss`` (float or null/"nan"/"inf"): the training loss of that step;
- ``grad_norm`` (float): the global gradient norm *before* clipping;
- ``clipped_steps`` (int, optional): how many steps since the previous record were clipped;
- ``clipped`` (bool, optional): whether clipping scaled the gradient down. When a record lacks
  it, it is ``grad_norm > clip`` for the ``clip`` threshold given to the reader (the run's
  ``config.json`` ``train.clip``), else False.

Records of another ``kind`` (evaluations) and lines without ``step`` and ``loss`` are
skipped; ``grad_norm`` may be absent (NaN). Blank lines are skipped; anything else that is
not a JSON object raises :class:`rnnkit.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rnnkit.errors import DataError


def _number(value: object, key: str, path: Path, line: int) -> float:
    if value is None:
        return math.nan
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf", "infinity"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{key!r} must be a number, got {value!r}", path, line)
    return float(value)


@dataclass
class TrainingLog:
    """The per-step series of a training log, in file order.

    Attributes:
        steps, loss, grad_norm, clipped: one entry per training record (grad_norm NaN and
            clipped False where the record lacks them; ``grad_norm_given`` says which).
        path: the file read.
    """

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    clipped: list[bool] = field(default_factory=list)
    clipped_between: list[int] = field(default_factory=list)
    grad_norm_given: list[bool] = field(default_factory=list)
    path: str = ""

    def __len__(self) -> int:
        return len(self.steps)

    def clip_steps(self) -> list[int]:
        """The steps at which the gradient was clipped."""
        return [s for s, c in zip(self.steps, self.clipped) if c]

    def clip_count(self) -> int:
        """Every clipped step up to the last record, logged or not: the trainer writes, in
        ``clipped_steps``, how many steps since the previous record were clipped (a record
        without it counts as its own step only)."""
        return sum(self.clipped_between)

    def clip_fraction(self) -> float:
        """Share of steps at which the gradient was clipped (0 for an empty log)."""
        return sum(self.clipped) / len(self.clipped) if self.clipped else 0.0

    def nonfinite_steps(self) -> list[int]:
        """Steps whose loss or gradient norm is NaN or infinite."""
        return [s for s, lo, g, given in zip(self.steps, self.loss, self.grad_norm,
                                             self.grad_norm_given)
                if not math.isfinite(lo) or (given and not math.isfinite(g))]

    def loss_spikes(self, factor: float = 2.0, window: int = 20) -> list[int]:
        """Steps whose loss exceeds ``factor`` times the median of the previous ``window``
        finite losses, or is not finite. The first step is never a spike."""
        if factor <= 1.0:
            raise ValueError(f"factor must be > 1, got {factor!r}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window!r}")
        spikes, history = [], []
        for s, lo in zip(self.steps, self.loss):
            if not math.isfinite(lo):
                spikes.append(s)
                continue
            if history:
                recent = sorted(history[-window:])
                median = recent[len(recent) // 2]
                if lo > factor * median:
                    spikes.append(s)
            history.append(lo)
        return spikes

    def summary(self, factor: float = 2.0, window: int = 20) -> dict[str, object]:
        """A dict for reports: steps, first/last/min loss, max gradient norm, clipping
        events and share, loss spikes, non-finite steps."""
        finite = [x for x in self.loss if math.isfinite(x)]
        norms = [g for g in self.grad_norm if math.isfinite(g)]
        return {
            "steps": len(self),
            "first_loss": self.loss[0] if self.loss else math.nan,
            "last_loss": self.loss[-1] if self.loss else math.nan,
            "min_loss": min(finite) if finite else math.nan,
            "max_grad_norm": max(norms) if norms else math.nan,
            "median_grad_norm": sorted(norms)[len(norms) // 2] if norms else math.nan,
            "clip_events": len(self.clip_steps()),
            "clipped_steps_total": self.clip_count(),
            "clip_fraction": self.clip_fraction(),
            "loss_spikes": self.loss_spikes(factor, window),
            "nonfinite_steps": self.nonfinite_steps(),
        }


def read_training_log(path: str | Path, clip: float | None = None) -> TrainingLog:
    """Read the training records of a JSON-lines log (see the module docstring); ``clip``:
    the run's clipping threshold, to tell clipped steps when the records do not say."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("training log not found", path) from None
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text ({err.reason})", path) from None
    log = TrainingLog(path=str(path))
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"not a JSON object ({err.msg})", path, number) from None
        if not isinstance(record, dict):
            raise DataError(f"expected a JSON object, got {type(record).__name__}", path, number)
        if record.get("kind", "train") != "train" or "step" not in record or "loss" not in record:
            continue
        step = record["step"]
        if isinstance(step, bool) or not isinstance(step, int):
            raise DataError(f"'step' must be an integer, got {step!r}", path, number)
        log.steps.append(step)
        log.loss.append(_number(record["loss"], "loss", path, number))
        log.grad_norm.append(_number(record.get("grad_norm"), "grad_norm", path, number))
        log.grad_norm_given.append(record.get("grad_norm") is not None)
        clipped = record.get("clipped")
        if clipped is None:
            norm = log.grad_norm[-1]
            clipped = bool(clip is not None and clip > 0 and norm > clip)
        if not isinstance(clipped, bool):
            raise DataError(f"'clipped' must be true or false, got {clipped!r}", path, number)
        log.clipped.append(clipped)
        between = record.get("clipped_steps", int(clipped))
        if isinstance(between, bool) or not isinstance(between, int) or between < 0:
            raise DataError(f"'clipped_steps' must be a count, got {between!r}", path, number)
        log.clipped_between.append(between)
    return log
