"""Learning-rate schedules whose whole state is JSON (no torch scheduler pickles).

``lr(step) = base_lr * scale * shape(step)``, where

- ``shape``: ``"constant"`` 1; ``"linear"`` from 1 down to ``min_ratio`` at ``total_steps``;
  ``"cosine"`` half a cosine from 1 down to ``min_ratio`` at ``total_steps``; all of them after
  a linear warm-up over the first ``warmup`` steps; ``total_steps`` is ``--max-steps`` when
  given, else the epochs times the batches per epoch, and a resumed run keeps its own; when
  the run is also bounded in time (``--max-minutes``), the schedule's progress is the larger
  of the share of steps done and the share of time used, so that the rate has decayed when
  the time runs out (such a run is not bit-for-bit reproducible: its rates depend on speed);
- ``scale``: starts at 1; with ``"plateau"`` (the classic LM recipe: constant, and divide the
  learning rate by 4 when the validation loss stops improving) it is multiplied by ``factor``
  after every evaluation that does not improve on the best one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

SCHEDULES = ("constant", "linear", "cosine", "plateau")


@dataclass
class Schedule:
    """A learning-rate schedule; ``state_dict()`` / ``load_state_dict()`` are plain JSON."""

    kind: str = "constant"
    base_lr: float = 1e-3
    total_steps: int | None = None
    warmup: int = 0
    min_ratio: float = 0.0
    factor: float = 0.25
    scale: float = 1.0
    #: the run is bounded in time: with no ``total_steps`` the decay follows the time used
    by_time: bool = False

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.kind!r}")
        if self.kind in ("linear", "cosine") and not self.total_steps and not self.by_time:
            raise ValueError(f"schedule {self.kind!r} needs a known number of steps: give "
                             f"--max-steps or --epochs")

    def lr(self, step: int, time_fraction: float = 0.0) -> float:
        """The learning rate for step ``step`` (0-based); ``time_fraction``: the share of the
        time budget used (0 when there is none)."""
        shape = 1.0
        if self.warmup and step < self.warmup:
            shape = (step + 1) / self.warmup
        elif self.kind in ("linear", "cosine"):
            if self.total_steps:
                span = max(1, self.total_steps - self.warmup)
                t = min(1.0, max((step - self.warmup) / span, time_fraction))
            else:  # bounded by time alone
                t = min(1.0, time_fraction)
            if self.kind == "linear":
                frac = 1.0 - t
            else:
                frac = 0.5 * (1.0 + math.cos(math.pi * t))
            shape = self.min_ratio + (1.0 - self.min_ratio) * frac
        return self.base_lr * self.scale * shape

    def on_evaluation(self, improved: bool) -> bool:
        """Tell the schedule whether the last evaluation improved; True if it lowered the lr."""
        if self.kind == "plateau" and not improved:
            self.scale *= self.factor
            return True
        return False

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            if hasattr(self, key):
                setattr(self, key, value)
