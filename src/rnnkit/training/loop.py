"""The training loop, shared by every task: a short, linear :class:`Trainer`.

A task plugs in through a small interface (:class:`TrainingTask`): it yields the batches of an
epoch, computes the loss of one batch, and evaluates the model. The trainer does the rest:

- AdamW or SGD; gradient clipping by global norm (direction kept); a learning-rate
  :class:`~rnnkit.training.schedule.Schedule` (constant, linear, cosine, plateau; warm-up);
- evaluation every epoch and every ``eval_every`` steps; the best weights to
  ``DIR/model.safetensors``; the last checkpoint to ``DIR/last/`` (see
  :mod:`rnnkit.training.checkpoint`); early stopping after ``patience`` evaluations without
  improvement;
- bounded by ``epochs``, ``max_steps`` and ``max_minutes``, whichever comes first;
- ``resume=True`` continues from ``DIR/last/`` with the same per-step losses as an
  uninterrupted run (on CPU): weights, optimizer, schedule, random-number state, the position
  in the epoch and the state carried between batches (an LM's hidden state) are restored, and
  each epoch's batches come from a generator seeded by ``(seed, epoch)``;
- a tqdm progress bar (loss, perplexity, tokens per second) and a JSON-lines log
  (``DIR/log.jsonl``) of losses, gradient norms, learning rates and evaluations;
- a guard that stops with a :class:`TrainingError` on a NaN / infinite loss or gradient, or on a
  loss more than ``explode`` times the first one, before the bad step is applied; the last good
  checkpoint on disk is kept.

Example (what every ``rnnkit train <task>`` does)::

    run = RunDir(args.out); run.write_config({...,"task": "tagger"}); run.save_vocab(vocab)
    result = Trainer(model, task, run, config).fit()
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from tqdm import tqdm

from rnnkit.errors import TrainingError
from rnnkit.training.checkpoint import RunDir
from rnnkit.training.schedule import Schedule

OPTIMIZERS = ("adamw", "sgd")


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

    epochs: int = 10
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

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                             f"{self.optimizer!r}")
        for name in ("epochs", "max_steps", "eval_every", "patience", "warmup", "log_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")


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


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


class Trainer:
    """Train ``model`` on ``task``, checkpointing into ``run`` (see the module docstring)."""

    def __init__(self, model: nn.Module, task: TrainingTask, run: RunDir, config: TrainConfig,
                 *, resume: bool = False) -> None:
        self.model, self.task, self.run, self.config = model, task, run, config
        self.resume = resume
        self.device = torch.device(config.device)
        self.model.to(self.device)
        self.optimizer = build_optimizer(model, config)
        per_epoch = task.steps_per_epoch()
        total = config.max_steps  # linear / cosine schedules span max_steps, else the epochs
        if total is None and per_epoch and config.epochs:
            total = per_epoch * config.epochs
        self.schedule = Schedule(config.schedule, config.lr, total, config.warmup,
                                 config.min_lr_ratio, config.lr_factor)
        self.total_steps = total
        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "batch": 0, "best": None,
                                      "bad_evals": 0, "first_loss": None, "last_eval": -1,
                                      "tokens": 0}
        self.carry: object = None
        self.losses: list[float] = []
        self.metrics: dict[str, float] | None = None

    # -- checkpoints ---------------------------------------------------------------------------
    def _save_last(self) -> None:
        state = {**self.state, "schedule": self.schedule.state_dict(),
                 "config": asdict(self.config)}
        self.run.save_last(self.model, self.optimizer, state, self.carry)

    def _load_last(self) -> None:
        state, carry = self.run.load_last(self.model, self.optimizer)
        self.schedule.load_state_dict(state.get("schedule", {}))
        self.schedule.base_lr = self.config.lr  # a resumed run keeps its schedule's span
        for key in self.state:
            if key in state:
                self.state[key] = state[key]
        self.carry = carry if carry is None else _to_device(carry, self.device)

    def _log(self, record: dict) -> None:
        self.run.path.mkdir(parents=True, exist_ok=True)
        with self.run.log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # -- evaluation ----------------------------------------------------------------------------
    def _improved(self, value: float) -> bool:
        best = self.state["best"]
        if best is None:
            return True
        return value < best if self.task.mode == "min" else value > best

    def evaluate(self, scheduled: bool = True) -> dict[str, float] | None:
        """Evaluate, save the best weights and the last checkpoint.

        ``scheduled=False`` (the evaluation when a bound stops the run) updates neither the
        schedule nor early stopping, so that a resumed run behaves as an uninterrupted one."""
        self.model.eval()
        with torch.no_grad():
            metrics = self.task.evaluate(self.model)
        self.model.train()
        self.state["last_eval"] = self.state["step"]
        if metrics is None:
            self.run.save_weights(self.model)
        else:
            value = float(metrics[self.task.monitor])
            improved = self._improved(value) and math.isfinite(value)
            if improved:
                self.state["best"] = value
                self.run.save_weights(self.model)
            if scheduled:
                self.state["bad_evals"] = 0 if improved else self.state["bad_evals"] + 1
                self.schedule.on_evaluation(improved)
            self._log({"kind": "eval", "step": self.state["step"], "epoch": self.state["epoch"],
                       **metrics, "best": improved, "lr": self.schedule.lr(self.state["step"])})
            self.metrics = metrics
        self._save_last()
        return metrics

    # -- the loop ------------------------------------------------------------------------------
    def _guard(self, what: str, value: float) -> None:
        first = self.state["first_loss"]
        bad = not math.isfinite(value)
        if what == "loss" and not bad and first is not None and self.state["step"] > 0:
            bad = value > self.config.explode * max(first, 1e-8)
        if not bad:
            return
        kept = (f"the last good checkpoint (step {self.state['last_eval']}) is kept in "
                f"{self.run.path}" if self.state["last_eval"] >= 0 else
                "no checkpoint had been written yet")
        reason = (f"{what} is {value}" if not math.isfinite(value) else
                  f"loss {value:.4g} exploded (more than {self.config.explode}x the first "
                  f"loss {first:.4g})")
        raise TrainingError(f"step {self.state['step'] + 1}: {reason}; training stopped and "
                            f"{kept}. Try a lower --lr or a smaller --clip.")

    def _bound(self, start: float) -> str | None:
        cfg, st = self.config, self.state
        if cfg.max_steps is not None and st["step"] >= cfg.max_steps:
            return "max_steps"
        if cfg.max_minutes is not None and time.monotonic() - start >= 60 * cfg.max_minutes:
            return "max_minutes"
        if cfg.patience and st["bad_evals"] >= cfg.patience:
            return "early_stopping"
        return None

    def fit(self) -> TrainResult:
        """Train until a bound is reached; returns a :class:`TrainResult`."""
        cfg, st = self.config, self.state
        torch.manual_seed(cfg.seed)
        if self.resume:
            self._load_last()
        self.model.train()
        start = time.monotonic()
        stopped = "epochs"
        bar = tqdm(total=self.total_steps, initial=st["step"], disable=not cfg.progress,
                   unit="step", dynamic_ncols=True, leave=True)
        window_loss, window_tokens, window_start = 0.0, 0, time.monotonic()
        try:
            while st["epoch"] < cfg.epochs and stopped == "epochs":
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + st["epoch"])
                for i, batch in enumerate(self.task.train_batches(st["epoch"], gen)):
                    if i < st["batch"]:
                        continue  # resuming: replay the epoch up to where it stopped
                    reason = self._bound(start)
                    if reason:
                        stopped = reason
                        break
                    lr = self.schedule.lr(st["step"])
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    out = self.task.loss(self.model, batch, self.carry)
                    value = float(out.loss.detach())
                    self._guard("loss", value)
                    self.optimizer.zero_grad(set_to_none=True)
                    out.loss.backward()
                    norm = float(nn.utils.clip_grad_norm_(
                        self.model.parameters(), cfg.clip if cfg.clip > 0 else math.inf))
                    self._guard("gradient norm", norm)
                    self.optimizer.step()
                    self.carry = out.carry
                    if st["first_loss"] is None:
                        st["first_loss"] = value
                    st["step"] += 1
                    st["batch"] = i + 1
                    st["tokens"] += int(out.tokens)
                    self.losses.append(value)
                    window_loss += value * out.tokens
                    window_tokens += int(out.tokens)
                    if st["step"] % max(1, cfg.log_every) == 0 or st["step"] == 1:
                        now = time.monotonic()
                        mean = window_loss / max(1, window_tokens)
                        speed = window_tokens / max(1e-9, now - window_start)
                        self._log({"kind": "train", "step": st["step"], "epoch": st["epoch"],
                                   "loss": value, "mean_loss": mean, "grad_norm": norm,
                                   "lr": lr, "tokens_per_s": speed})
                        post = {"loss": f"{mean:.3f}", "tok/s": f"{speed:,.0f}"}
                        if self.task.perplexity:
                            post["ppl"] = f"{math.exp(min(mean, 50)):.1f}"
                        if self.metrics and self.task.monitor in self.metrics:
                            post["val"] = f"{self.metrics[self.task.monitor]:.3f}"
                        bar.set_postfix(post, refresh=False)
                        window_loss, window_tokens, window_start = 0.0, 0, now
                    bar.update(1)
                    if cfg.eval_every and st["step"] % cfg.eval_every == 0:
                        self.evaluate(scheduled=True)
                else:
                    st["epoch"] += 1
                    st["batch"] = 0
                    self.carry = None
                    self.evaluate(scheduled=True)
                    reason = self._bound(start)
                    if reason and st["epoch"] < cfg.epochs:
                        stopped = reason
        except KeyboardInterrupt:
            bar.close()
            self._save_last()
            raise
        bar.close()
        if st["last_eval"] != st["step"]:
            self.evaluate(scheduled=False)
        return TrainResult(st["step"], st["epoch"], stopped, st["best"], self.metrics,
                           time.monotonic() - start, self.losses)


def _to_device(state: object, device: torch.device) -> object:
    if isinstance(state, Tensor):
        return state.to(device)
    if isinstance(state, (tuple, list)):
        return type(state)(_to_device(s, device) for s in state)
    return state
