"""What a task gives the :class:`~rnnkit.training.loop.Trainer` and what it gets back: the
:class:`TrainingTask` interface, one step's :class:`StepOutput`, the training options
(:class:`TrainConfig`, saved as ``config.json``'s ``"train"``) and the :class:`TrainResult`."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

OPTIMIZERS = ("adamw", "sgd")
ON_NAN = ("stop", "skip", "rollback")


class StepOutput(NamedTuple):
    """What :meth:`TrainingTask.loss` returns.

    Attributes:
        loss: scalar tensor to minimise (mean over the batch's tokens / examples).
        tokens: how many tokens (or examples) the loss averages over, for throughput.
        carry: state to hand to the next batch (detached), or ``None``.
    """

    loss: Tensor
    tokens: int
    carry: object = None


class TrainingTask:
    """The interface between a task and the :class:`Trainer`; subclass it.

    Attributes:
        monitor: the key of :meth:`evaluate`'s result that selects the best checkpoint.
        mode: ``"min"`` (a loss) or ``"max"`` (an accuracy, an F1).
        perplexity: show exp(loss) in the progress bar (language models).
    """

    monitor: str = "loss"
    mode: str = "min"
    perplexity: bool = False

    def train_batches(self, epoch: int, generator: torch.Generator) -> Iterable[Any]:
        """The batches of epoch ``epoch`` (0-based). Shuffle only with ``generator`` (seeded
        by the trainer from the seed and the epoch) so that resuming can replay an epoch."""
        raise NotImplementedError

    def steps_per_epoch(self) -> int | None:
        """The number of batches in an epoch, if known (for cosine / linear schedules)."""
        return None

    def shard(self, rank: int, world_size: int) -> bool:
        """Distributed training: keep only rank ``rank``'s part of the training data (of
        ``world_size`` parts, the same number of batches on every rank) and return True; after
        it, :meth:`train_batches` and :meth:`steps_per_epoch` describe this rank's part.

        The default returns False: the trainer then gives rank r the batches r, r + W, ...
        of each epoch (:func:`rnnkit.training.distributed.shard_batches`)."""
        return False

    def loss(self, model: nn.Module, batch: Any, carry: object) -> StepOutput:
        """The loss of one batch in training mode. ``carry`` is what the previous batch of the
        same epoch returned (``None`` at the start of an epoch)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> dict[str, float] | None:
        """Validation metrics (the model is in eval mode, under ``torch.no_grad``), including
        ``monitor``; ``None`` when there is no validation data."""
        return None


@dataclass
class TrainConfig:
    """Options of one training run (``rnnkit train <task>``'s common options)."""

    #: the bounds of the run, whichever comes first (None: not bounded by it; at least one
    #: must be given)
    epochs: int | None = 10
    max_steps: int | None = None
    max_minutes: float | None = None
    seed: int = 0
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0
    clip: float = 1.0
    schedule: str = "constant"
    warmup: int = 0
    min_lr_ratio: float = 0.0
    lr_factor: float = 0.25
    eval_every: int = 0
    patience: int = 0
    explode: float = 4.0
    log_every: int = 10
    progress: bool = True
    device: str = "cpu"
    on_nan: str = "stop"
    find_unused_parameters: bool = False
    #: the decay of a moving average of the weights, evaluated and kept as the best
    #: (:mod:`rnnkit.training.averaging`); 0: off
    ema: float = 0.0
    #: average the N best evaluated checkpoints when training ends, and keep the average if
    #: it scores better (:class:`~rnnkit.training.averaging.BestSnapshots`); 0: off
    average_best: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                             f"{self.optimizer!r}")
        if self.on_nan not in ON_NAN:
            raise ValueError(f"on_nan must be one of {', '.join(ON_NAN)}, got {self.on_nan!r}")
        for name in ("epochs", "max_steps", "eval_every", "patience", "warmup", "log_every",
                     "average_best"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if self.epochs is None and self.max_steps is None and self.max_minutes is None:
            raise ValueError("epochs: a run needs a bound: --epochs, --max-steps or "
                             "--max-minutes")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")
        bounds = {"clip": (self.clip >= 0, ">= 0 (0: no clipping)"),
                  "explode": (self.explode > 1, "> 1 (a multiple of the first loss)"),
                  "weight_decay": (self.weight_decay >= 0, ">= 0"),
                  "momentum": (0 <= self.momentum < 1, "in [0, 1)"),
                  "min_lr_ratio": (0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
                  "lr_factor": (0 < self.lr_factor <= 1, "in (0, 1]"),
                  "ema": (0 <= self.ema < 1, "in [0, 1) (0: no averaging)"),
                  "average_best": (self.average_best != 1, "0 (off) or at least 2")}
        for name, (ok, want) in bounds.items():
            if not ok:  # NaN fails every comparison
                raise ValueError(f"{name} must be {want}, got {getattr(self, name)}")


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    steps: int
    epochs: int
    stopped_by: str
    best: float | None
    metrics: dict[str, float] | None
    seconds: float
    losses: list[float] = field(default_factory=list)
    #: the run was bounded by ``--max-minutes`` alone: its step count depends on the machine
    time_bounded: bool = False

    def summary(self, monitor: str | None, run_path: object) -> str:
        """The one line a task prints when training ends (on stderr)."""
        best = (f"best dev {monitor} {self.best:.4f}, "
                if monitor and self.best is not None else "")
        machine = (" (bounded by time alone: the step count depends on this machine's speed)"
                   if self.time_bounded else "")
        return (f"{self.steps} steps, {self.epochs} epochs, stopped by {self.stopped_by}"
                f"{machine}, {best}{self.seconds:.0f} s; run in {run_path}")


#: devices whose parameters torch's fused optimizers update in one kernel per step
FUSED_DEVICES = ("cpu", "cuda")


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over the model's trainable parameters; torch's fused implementation
    (one kernel over every parameter) where all of them are floating point on a device of
    :data:`FUSED_DEVICES`: the same update to rounding, at a 2-cores CPU AdamW's 5-8 ms a
    step against 18-43 ms for a 17M-parameter word LM (benchmarks/RESULTS.md, thirteenth
    session)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = (bool(params) and all(p.is_floating_point() and p.device.type in FUSED_DEVICES
                                  for p in params)) or None  # None: torch's default
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, fused=fused)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                             fused=fused)
