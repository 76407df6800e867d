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
- with ``ema`` > 0, a moving average of the weights (:mod:`rnnkit.training.averaging`) is
  what is evaluated and kept as the best; with ``average_best`` N, the N best evaluated
  checkpoints are kept in ``DIR/nbest/`` and their average, evaluated when training ends,
  becomes the best weights if it scores better;
- ``resume=True`` continues from ``DIR/last/`` with the same per-step losses as an
  uninterrupted run (on CPU): weights, optimizer, schedule, random-number state, the position
  in the epoch and the state carried between batches (an LM's hidden state) are restored, and
  each epoch's batches come from a generator seeded by ``(seed, epoch)``;
- a tqdm progress bar (loss, perplexity, tokens per second) and a JSON-lines log
  (``DIR/log.jsonl``) of losses, gradient norms, learning rates and evaluations;
- a guard against a NaN / infinite loss or gradient, or a loss more than ``explode`` times the
  first one, acting before the bad step is applied, as ``on_nan`` says: ``"stop"`` (a
  :class:`TrainingError`; the last good checkpoint on disk is kept), ``"skip"`` (drop the
  step and go on; stop after ``MAX_BAD_STEPS`` bad steps in a row) or ``"rollback"`` (reload
  the last good checkpoint, halve the learning rate, again on each further rollback to it,
  and go on; stop after ``MAX_ROLLBACKS`` rollbacks without an evaluation between); each is logged
  (``{"kind": "bad_step", "action": ...}`` in the log and a line on stderr);
- data-parallel training over the ranks that ``torchrun`` starts (see
  :mod:`rnnkit.training.distributed`): every rank trains on its shard of the data through
  ``DistributedDataParallel``; rank 0 alone logs and writes checkpoints.

Example (what every ``rnnkit train <task>`` does)::

    run, saved = open_run(request, "tagger"); run.write_config(RunConfig(...))
    result = Trainer(model, task, run, config).fit()
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.errors import CheckpointError, TrainingError
from rnnkit.training import distributed
from rnnkit.training.averaging import NBEST, BestSnapshots, WeightAverage
from rnnkit.training.checkpoint import RunDir, flatten_state, save_weights, unflatten_state
from rnnkit.training.progress import Progress
from rnnkit.training.schedule import Schedule
from rnnkit.training.signals import Interrupted, set_handlers
from rnnkit.training.task import (
    ON_NAN,
    OPTIMIZERS,
    StepOutput,
    TrainConfig,
    TrainingTask,
    TrainResult,
    build_optimizer,
)

MAX_BAD_STEPS = 20  # on_nan="skip": stop after this many bad steps in a row
MAX_ROLLBACKS = 5  # on_nan="rollback": stop after this many rollbacks with no evaluation between


class _Rollback(Exception):
    """Internal: restart the epoch loop from the reloaded checkpoint."""


class Trainer:
    """Train ``model`` on ``task``, checkpointing into ``run`` (see the module docstring).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the trainer joins the process group, shards the
    task's data, wraps the model in ``DistributedDataParallel`` and lets rank 0 alone write
    ``run``; in one process it does none of this."""

    def __init__(self, model: nn.Module, task: TrainingTask, run: RunDir, config: TrainConfig,
                 *, resume: bool = False) -> None:
        self.model, self.task, self.run, self.config = model, task, run, config
        self.resume = resume
        self.dist = distributed.setup(config.device)
        self.device = distributed.local_device(config.device)
        self.model.to(self.device)
        self.optimizer = build_optimizer(model, config)
        self.self_sharded = False
        if self.dist.distributed:
            self.self_sharded = bool(task.shard(self.dist.rank, self.dist.world_size))
        per_epoch = task.steps_per_epoch()
        if not self.self_sharded:
            per_epoch = distributed.sharded_steps(per_epoch, self.dist.world_size)
        self.ddp: nn.Module | None = None
        if self.dist.distributed:
            self.ddp = distributed.wrap(model, task, self.device,
                                        find_unused_parameters=config.find_unused_parameters)
        total = config.max_steps  # linear / cosine schedules span max_steps, else the epochs
        if total is None and per_epoch and config.epochs:
            total = per_epoch * config.epochs
        self.schedule = Schedule(config.schedule, config.lr, total, config.warmup,
                                 config.min_lr_ratio, config.lr_factor,
                                 by_time=config.max_minutes is not None)
        self.total_steps = total
        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "batch": 0, "best": None,
                                      "bad_evals": 0, "first_loss": None, "last_eval": -1,
                                      "tokens": 0, "seconds": 0.0, "nbest": []}
        self.carry: object = None
        self.losses: list[float] = []
        self._start = time.monotonic()
        self._saved_seconds = 0.0  # the clock as last/ records it
        self.metrics: dict[str, float] | None = None
        self.bad_steps = 0
        self.rollbacks = 0
        self.average = WeightAverage(model, config.ema) if config.ema else None
        self.snapshots = (BestSnapshots(run.path / NBEST, config.average_best, task.mode)
                          if config.average_best else None)

    # -- checkpoints ---------------------------------------------------------------------------
    def _rank_states(self) -> object:
        """Every rank's carry and RNG state, gathered (a collective: all ranks call it)."""
        carry_tensors, _ = flatten_state(self.carry)
        names = sorted(carry_tensors)
        rng = [torch.get_rng_state()]
        if self.device.type == "cuda":
            rng.append(torch.cuda.get_rng_state(self.device))
        gathered = distributed.gather_tensors([carry_tensors[n] for n in names] + rng)
        _, structure = flatten_state(self.carry)
        ranks = []
        for parts in gathered:
            carry = unflatten_state(dict(zip(names, parts[:len(names)])), structure)
            ranks.append([carry, list(parts[len(names):])])
        return ranks

    def _save_last(self) -> None:
        self._saved_seconds = self._elapsed(self._start)
        state = {**self.state, "seconds": self._saved_seconds,
                 "schedule": self.schedule.state_dict(), "config": asdict(self.config)}
        carry = self.carry
        if self.dist.distributed:
            carry = self._rank_states()
            state["world_size"] = self.dist.world_size
        if self.average is not None:
            state["averaged_steps"] = self.average.updates
        if self.snapshots is not None:
            state["nbest"] = self.snapshots.state_dict()
        if self.dist.is_main:
            self.run.save_last(self.model, self.optimizer, state, carry,
                               None if self.average is None else self.average.state_dict())
        distributed.barrier()

    def _load_last(self) -> None:
        state, carry = self.run.load_last(self.model, self.optimizer)
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.dist.world_size:
            raise CheckpointError(f"{self.run.last_path}: was written by {saved_world} "
                                  f"process(es); resume it with the same number "
                                  f"(now {self.dist.world_size})")
        if self.dist.distributed:
            carry, rng = carry[self.dist.rank]
            torch.set_rng_state(rng[0])
            if len(rng) > 1 and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng[1], self.device)
        self.schedule.load_state_dict(state.get("schedule", {}))
        self.schedule.base_lr = self.config.lr  # a resumed run keeps its schedule's span
        for key in self.state:
            if key in state:
                self.state[key] = state[key]
        self.carry = carry if carry is None else _to_device(carry, self.device)
        if self.average is not None:
            tensors, path = self.run.load_averaged()
            try:
                self.average.load_state_dict(tensors, state.get("averaged_steps", 0), str(path))
            except ValueError as err:
                raise CheckpointError(str(err)) from None
        if self.snapshots is not None:
            self.snapshots.load_state_dict(self.state["nbest"], clean=self.dist.is_main)

    def _evaluated(self) -> AbstractContextManager:
        """The weights evaluated and kept as the best: the moving average under ``--ema``."""
        return nullcontext() if self.average is None else self.average.applied(self.model)

    def _log(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        self.run.path.mkdir(parents=True, exist_ok=True)
        with self.run.log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _truncate_log(self, step: int) -> None:
        if self.dist.is_main:
            self.run.truncate_log(step)

    # -- evaluation ----------------------------------------------------------------------------
    def _improved(self, value: float) -> bool:
        best = self.state["best"]
        if best is None:
            return True
        return value < best if self.task.mode == "min" else value > best

    def evaluate(self, scheduled: bool = True) -> dict[str, float] | None:
        """Evaluate, save the best weights and the last checkpoint.

        ``scheduled=False`` (the evaluation when a bound stops the run) updates neither the
        schedule nor early stopping, so that a resumed run behaves as an uninterrupted one.
        Distributed: rank 0 evaluates and every rank receives its metrics."""
        metrics = None
        if self.dist.is_main:
            self.model.eval()
            with torch.no_grad(), self._evaluated():
                metrics = self.task.evaluate(self.model)
            self.model.train()
        metrics = distributed.broadcast_json(metrics)
        self.state["last_eval"] = self.state["step"]
        self.rollbacks = 0
        dropped: list = []
        if metrics is None:
            if self.dist.is_main:
                with self._evaluated():
                    self.run.save_weights(self.model)
        else:
            value = float(metrics[self.task.monitor])
            if not math.isfinite(value):  # the weights are NaN / inf: nothing to keep
                self._log({"kind": "bad_eval", "step": self.state["step"],
                           "reason": f"validation {self.task.monitor} is {value}"})
                kept = (f"the best weights so far ({self.run.path / 'model.safetensors'}) "
                        f"are kept" if self.state["best"] is not None else
                        "no weights were good enough to keep")
                raise TrainingError(f"step {self.state['step']}: validation "
                                    f"{self.task.monitor} is {value}; training stopped and "
                                    f"{kept}. Try a lower --lr or a smaller --clip.")
            improved = self._improved(value)
            if improved:
                self.state["best"] = value
                if self.dist.is_main:
                    with self._evaluated():
                        self.run.save_weights(self.model)
            if self.snapshots is not None:
                with self._evaluated():
                    dropped = self.snapshots.offer(self.model, value, self.state["step"],
                                                   write=self.dist.is_main)
            if scheduled:
                self.state["bad_evals"] = 0 if improved else self.state["bad_evals"] + 1
                self.schedule.on_evaluation(improved)
            self._log({"kind": "eval", "step": self.state["step"], "epoch": self.state["epoch"],
                       **metrics, "best": improved,
                       "seconds": round(self._elapsed(self._start), 2)})
            self.metrics = metrics
        self._save_last()
        if self.dist.is_main:
            BestSnapshots.discard(dropped)  # after last/ no longer lists them
        return metrics

    def evaluate_average(self) -> dict[str, float] | None:
        """Evaluate the average of the kept best checkpoints (``average_best``), write it to
        ``DIR/nbest/average.safetensors``, and make it the best weights if it scores better
        than the best single one. The model keeps its own weights. Returns its metrics
        (None when fewer than two checkpoints are kept)."""
        snapshots = self.snapshots
        if snapshots is None or len(snapshots.kept) < 2:
            if snapshots is not None:
                self._say(f"--average-best: {len(snapshots.kept)} evaluated checkpoint(s), "
                          f"nothing to average (is there a dev set?)")
            return None
        metrics = None
        if self.dist.is_main:
            own = {n: t.detach().clone() for n, t in self.model.state_dict().items()}
            snapshots.average_into(self.model)
            save_weights(self.model, snapshots.average_path)
            self.model.eval()
            with torch.no_grad():
                metrics = self.task.evaluate(self.model)
            self.model.train()
        metrics = distributed.broadcast_json(metrics)
        assert metrics is not None  # the snapshots were ranked by the same evaluation
        value = float(metrics[self.task.monitor])
        improved = math.isfinite(value) and self._improved(value)
        if improved:
            self.state["best"] = value
            self.metrics = metrics
            if self.dist.is_main:
                self.run.save_weights(self.model)
        if self.dist.is_main:
            self.model.load_state_dict(own)
        steps = [s for _, s in snapshots.kept]
        self._log({"kind": "averaged_eval", "step": self.state["step"],
                   "epoch": self.state["epoch"], "averaged": steps, **metrics, "best": improved,
                   "seconds": round(self._elapsed(self._start), 2)})
        self._say(f"the average of the {len(steps)} best checkpoints (steps "
                  f"{', '.join(map(str, steps))}): dev {self.task.monitor} {value:.4f}, "
                  + ("kept as the best" if improved else "not better than the best single "
                     "checkpoint; the average is in " + str(snapshots.average_path)))
        self._save_last()
        return metrics

    # -- the loop ------------------------------------------------------------------------------
    def _bad(self, what: str, value: float) -> str | None:
        """Why this step is bad (NaN / inf / exploded), or None."""
        first = self.state["first_loss"]
        if not math.isfinite(value):
            return f"{what} is {value}"
        if what == "loss" and first is not None and self.state["step"] > 0 \
                and value > self.config.explode * max(first, 1e-8):
            return (f"loss {value:.4g} exploded (more than {self.config.explode}x the first "
                    f"loss {first:.4g})")
        return None

    def _act(self, reason: str) -> None:
        """Act on a bad step as ``config.on_nan`` says: raise :class:`TrainingError` (stop),
        raise ``_Rollback`` (after reloading the last checkpoint), or return (skip)."""
        step, policy = self.state["step"] + 1, self.config.on_nan
        kept = (f"the last good checkpoint (step {self.state['last_eval']}) is kept in "
                f"{self.run.path}" if self.state["last_eval"] >= 0 else
                "no checkpoint had been written yet")
        stop = policy == "stop"
        if policy == "skip" and self.bad_steps + 1 >= MAX_BAD_STEPS:
            stop, reason = True, f"{reason}, {MAX_BAD_STEPS} bad steps in a row"
        if policy == "rollback" and (self.rollbacks >= MAX_ROLLBACKS or not self.run.has_last()):
            stop = True
            reason += (f", {MAX_ROLLBACKS} rollbacks without progress" if self.run.has_last()
                       else ", no checkpoint to roll back to")
        if stop:
            self._log({"kind": "bad_step", "step": step, "reason": reason, "action": "stop"})
            raise TrainingError(f"step {step}: {reason}; training stopped and {kept}. Try a "
                                f"lower --lr or a smaller --clip.")
        if policy == "skip":
            self.bad_steps += 1
            self._say(f"step {step}: {reason}; step skipped (--on-nan skip)")
            self._log({"kind": "bad_step", "step": step, "reason": reason, "action": "skip"})
            return
        self.rollbacks += 1
        self._load_last()
        self.schedule.scale *= 0.5 ** self.rollbacks  # halved again on each further rollback
        self._say(f"step {step}: {reason}; rolled back to the checkpoint of step "
                  f"{self.state['step']}, learning rate x{0.5 ** self.rollbacks:g} "
                  f"(--on-nan rollback)")
        self._log({"kind": "bad_step", "step": step, "reason": reason, "action": "rollback",
                   "to_step": self.state["step"], "lr_scale": self.schedule.scale})
        raise _Rollback

    def _say(self, message: str) -> None:
        if self.dist.is_main:
            print(f"rnnkit: {message}", file=sys.stderr)

    def _elapsed(self, start: float) -> float:
        """Seconds of training in this run, earlier sessions of a resumed run included."""
        return self.state["seconds"] + time.monotonic() - start

    def _time_fraction(self, start: float) -> float:
        if self.config.max_minutes is None:
            return 0.0
        return self._elapsed(start) / (60 * self.config.max_minutes)

    def _schedule_time_fraction(self, start: float) -> float:
        """What the schedule reads of the clock: nothing when a step budget is given (the
        schedule spans ``max_steps``, so a run is the same on every machine), else the share
        of the time budget used (earlier sessions of a resumed run included)."""
        return 0.0 if self.config.max_steps is not None else self._time_fraction(start)

    def _bound(self, start: float) -> str | None:
        cfg, st = self.config, self.state
        if cfg.max_steps is not None and st["step"] >= cfg.max_steps:
            return "max_steps"
        if cfg.max_minutes is not None and self._time_fraction(start) >= 1.0:
            return "max_minutes"
        if cfg.patience and st["bad_evals"] >= cfg.patience:
            return "early_stopping"
        return None

    def _batches(self, epoch: int, generator: torch.Generator) -> Iterable[Any]:
        batches = self.task.train_batches(epoch, generator)
        if self.dist.distributed and not self.self_sharded:
            return distributed.shard_batches(batches, self.dist.rank, self.dist.world_size)
        return batches

    def _step(self, batch: Any) -> tuple[StepOutput, float, float, bool]:
        """Forward and backward of one batch: ``(output, loss, gradient norm, skipped)``, the
        loss averaged over the ranks. A bad step (NaN, inf, explosion) leaves no gradient and
        is acted on by :meth:`_act` (every rank sees the same loss and gradient norm, so all
        ranks act alike; the backward runs even then, to keep DDP's ranks in step)."""
        if self.ddp is not None:
            out = self.ddp(batch, self.carry)
        else:
            out = self.task.loss(self.model, batch, self.carry)
        value = float(out.loss.detach())
        if self.dist.distributed:
            value = distributed.all_reduce_mean([value])[0]
        self.optimizer.zero_grad(set_to_none=True)
        reason = self._bad("loss", value)
        norm = math.nan
        if reason is None or self.dist.distributed:
            out.loss.backward()
            norm = float(nn.utils.clip_grad_norm_(
                self.model.parameters(), self.config.clip if self.config.clip > 0 else math.inf))
            reason = reason or self._bad("gradient norm", norm)
        if reason is None:
            return out, value, norm, False
        self.optimizer.zero_grad(set_to_none=True)
        self._act(reason)
        return out, value, norm, True

    def fit(self) -> TrainResult:
        """Train until a bound is reached; returns a :class:`TrainResult`."""
        cfg, st = self.config, self.state
        torch.manual_seed(cfg.seed + self.dist.rank)  # dropout differs between ranks
        if self.resume:
            self._load_last()
            self._truncate_log(st["step"])
        elif cfg.on_nan == "rollback":
            self._save_last()  # something to roll back to before the first evaluation
        self.model.train()
        start = self._start = time.monotonic()
        stopped = "epochs"
        timed = cfg.max_minutes is not None and cfg.max_steps is None
        bar = Progress(self.total_steps, 60 * cfg.max_minutes if timed else None, st["step"],
                       st["seconds"], enabled=cfg.progress and self.dist.is_main)
        window_loss, window_tokens, window_start = 0.0, 0, time.monotonic()
        window_clipped = 0  # steps whose gradient clipping scaled down since the last record
        self._signalled: int | None = None

        def on_signal(signum: int, frame: object) -> None:
            if self._signalled is not None:  # a second signal: stop now, saving nothing
                raise Interrupted("interrupted again before the step ended; last/ holds the "
                                  "previous checkpoint", signum, save=False)
            self._signalled = signum  # the loop stops at the next step boundary

        previous = set_handlers(on_signal)
        try:
            epochs = math.inf if cfg.epochs is None else cfg.epochs
            while st["epoch"] < epochs and stopped == "epochs":
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + st["epoch"])
                try:
                    for i, batch in enumerate(self._batches(st["epoch"], gen)):
                        if i < st["batch"]:
                            continue  # resuming: replay the epoch up to where it stopped
                        if self._signalled is not None:  # between two steps: a clean stop
                            raise Interrupted("", self._signalled)
                        reason = self._bound(start)
                        if reason:
                            stopped = reason
                            break
                        lr = self.schedule.lr(st["step"], self._schedule_time_fraction(start))
                        for group in self.optimizer.param_groups:
                            group["lr"] = lr
                        out, value, norm, skipped = self._step(batch)
                        if skipped:
                            st["batch"] = i + 1
                            continue
                        self.bad_steps = 0
                        self.optimizer.step()
                        if self.average is not None:
                            self.average.update(self.model)
                        self.carry = out.carry
                        if st["first_loss"] is None:
                            st["first_loss"] = value
                        st["step"] += 1
                        st["batch"] = i + 1
                        tokens = int(out.tokens)
                        if self.dist.distributed:
                            tokens = int(distributed.all_reduce_sum([tokens])[0])
                        st["tokens"] += tokens
                        self.losses.append(value)
                        window_loss += value * tokens
                        window_tokens += tokens
                        clipped = cfg.clip > 0 and norm > cfg.clip
                        window_clipped += clipped
                        if st["step"] % max(1, cfg.log_every) == 0 or st["step"] == 1:
                            now = time.monotonic()
                            mean = window_loss / max(1, window_tokens)
                            speed = window_tokens / max(1e-9, now - window_start)
                            self._log({"kind": "train", "step": st["step"],
                                       "epoch": st["epoch"], "loss": value, "mean_loss": mean,
                                       "grad_norm": norm, "clipped": clipped,
                                       "clipped_steps": window_clipped, "lr": lr,
                                       "tokens_per_s": speed})
                            post = {"loss": f"{mean:.3f}", "tok/s": f"{speed:,.0f}"}
                            if self.task.perplexity:
                                post["ppl"] = f"{math.exp(min(mean, 50)):.1f}"
                            if self.metrics and self.task.monitor in self.metrics:
                                post["val"] = f"{self.metrics[self.task.monitor]:.3f}"
                            bar.set_postfix(post)
                            window_loss, window_tokens, window_start = 0.0, 0, now
                            window_clipped = 0
                        bar.update(st["step"], self._elapsed(start))
                        if cfg.eval_every and st["step"] % cfg.eval_every == 0:
                            self.evaluate(scheduled=True)
                    else:
                        if st["batch"] == 0 and st["step"] == 0:
                            raise TrainingError("the training data gives no batch (is it "
                                                "empty, or shorter than one batch?)")
                        st["epoch"] += 1
                        st["batch"] = 0
                        self.carry = None
                        self.evaluate(scheduled=True)
                        reason = self._bound(start)
                        if reason and st["epoch"] < epochs:
                            stopped = reason
                except _Rollback:
                    bar.update(st["step"], self._elapsed(start))
                    continue
        except KeyboardInterrupt as err:
            bar.close()
            if not getattr(err, "save", True):
                raise
            if not self.dist.distributed:  # a collective cannot be trusted mid-interrupt
                self._save_last()
                how = (f"stopped at step {st['step']}; {self.run.last_path} is saved: continue "
                       f"with the same command and --resume")
            else:
                how = "stopped; continue from the last checkpoint with --resume"
            signum = getattr(err, "signum", signal.SIGINT)
            raise Interrupted(how, signum) from None
        finally:
            set_handlers(previous)
        bar.close()
        if st["last_eval"] != st["step"]:
            self.evaluate(scheduled=False)
        elif stopped == "max_minutes" and self._saved_seconds < 60 * cfg.max_minutes:
            # the budget ran out between an epoch's evaluation (which saved last/) and the
            # check after it: last/ records the whole budget, so a resume does not train on
            self._save_last()
        self.evaluate_average()
        return TrainResult(st["step"], st["epoch"], stopped, st["best"], self.metrics,
                           time.monotonic() - start, self.losses, time_bounded=timed)


def _to_device(state: object, device: torch.device) -> object:
    if isinstance(state, Tensor):
        return state.to(device)
    if isinstance(state, (tuple, list)):
        return type(state)(_to_device(s, device) for s in state)
    return state


__all__ = ["ON_NAN", "OPTIMIZERS", "Interrupted", "StepOutput", "TrainConfig", "TrainResult",
           "Trainer", "TrainingTask", "build_optimizer"]
