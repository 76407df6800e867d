"""Averaged weights, evaluated and kept in place of the last weights.

``rnnkit train TASK --ema DECAY``: an exponential moving average of a model's weights
(Polyak averaging), :class:`WeightAverage`.

After each optimizer step ``n`` (counting from 0)::

    d_n = min(DECAY, (1 + n) / (10 + n))        w_avg <- d_n * w_avg + (1 - d_n) * w

the warm-up of ``d_n`` (as timm's ``ModelEmaV3`` and TensorFlow's
``ExponentialMovingAverage(num_updates=...)``) keeps the random initial weights from
dominating the average of a short run. Buffers are not averaged (the model's own are used).
The trainer evaluates the averaged weights, saves them as the best, and keeps them in
``last/averaged.safetensors`` so that a resumed run continues the same average.

``rnnkit train TASK --average-best N``: the uniform average of the N best evaluated
checkpoints (by the task's dev metric), as ESPnet averages its ``--keep_nbest_models`` and
fairseq's ``average_checkpoints.py`` its last ones, :class:`BestSnapshots`. The trainer keeps
the N best evaluated weights in ``DIR/nbest/step-S.safetensors``, and when training ends it
writes their average to ``DIR/nbest/average.safetensors``, evaluates it, and makes it the
run's best weights (``DIR/model.safetensors``) if its dev metric is better than the best
single checkpoint's (the choice is made on the dev set, as the best checkpoint is).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from rnnkit.errors import CheckpointError
from rnnkit.training.checkpoint import load_weights, save_weights

#: the folder of a run directory that holds the N best checkpoints (``--average-best``)
NBEST = "nbest"
#: their average, in that folder
AVERAGE = "average.safetensors"


class WeightAverage:
    """The moving average of ``model``'s floating-point parameters.

    Args:
        model: the model trained (its parameters' names key the average).
        decay: DECAY in (0, 1): the largest weight of the old average per step; 0.999 averages
            over about the last 1,000 steps.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"ema must be in (0, 1) (0: off), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters()
                       if p.is_floating_point()}

    def rate(self) -> float:
        """d_n of the next update."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current parameters into the average."""
        weight = 1.0 - self.rate()
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach(), weight)
        self.updates += 1

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Within the block ``model`` holds the averaged weights; its own come back after."""
        params = {n: p for n, p in model.named_parameters() if n in self.shadow}
        own = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(own[n])

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, tensors: Mapping[str, Tensor], updates: int, where: str) -> None:
        """Restore an average saved by :meth:`state_dict` after ``updates`` updates; a missing
        or misshapen tensor is an error naming ``where``."""
        for name, t in self.shadow.items():
            saved = tensors.get(name)
            if saved is None or saved.shape != t.shape:
                raise ValueError(f"{where}: the averaged weight {name!r} is "
                                 f"{'missing' if saved is None else tuple(saved.shape)}, "
                                 f"the model's is {tuple(t.shape)}")
            t.copy_(saved)
        self.updates = int(updates)


class BestSnapshots:
    """The ``n`` best evaluated weights of a run, on disk, and their average.

    Args:
        folder: where the snapshots are written (``DIR/nbest``).
        n: how many are kept (>= 2).
        mode: ``"min"`` (a loss, a WER) or ``"max"`` (an accuracy, an F1): which is better.

    ``kept`` lists ``(metric, step)`` best first; among equal metrics the earlier is first.
    It is what the trainer saves in ``last/`` (:meth:`state_dict`), so that a resumed run
    keeps the same list; the files follow it."""

    def __init__(self, folder: str | Path, n: int, mode: str) -> None:
        if n < 2:
            raise ValueError(f"average_best must be >= 2 (0: off), got {n}")
        self.folder, self.n, self.mode = Path(folder), n, mode
        self.kept: list[tuple[float, int]] = []

    def path(self, step: int) -> Path:
        return self.folder / f"step-{step:09d}.safetensors"

    @property
    def average_path(self) -> Path:
        return self.folder / AVERAGE

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def offer(self, model: nn.Module, value: float, step: int, write: bool = True
              ) -> list[Path]:
        """Keep ``model``'s weights, evaluated at ``step`` with ``value``, if they rank among
        the ``n`` best (written to :meth:`path` when ``write``). Returns the files no longer
        kept: delete them (:meth:`discard`) once the new list is saved with the checkpoint,
        so that an interrupted run never lists a file it has deleted."""
        kept = [k for k in self.kept if k[1] != step]
        at = next((i for i, (v, _) in enumerate(kept) if self._better(value, v)), len(kept))
        if at >= self.n:
            return []
        if write:
            self.folder.mkdir(parents=True, exist_ok=True)
            save_weights(model, self.path(step))
        kept.insert(at, (value, step))
        self.kept = kept[:self.n]
        return [self.path(s) for _, s in kept[self.n:]]

    @staticmethod
    def discard(paths: list[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)

    def state_dict(self) -> list[list[float]]:
        return [[v, s] for v, s in self.kept]

    def load_state_dict(self, kept: list, clean: bool = True) -> None:
        """Restore the list :meth:`state_dict` made; with ``clean``, snapshot files that it does
        not name (written after the checkpoint by an interrupted run) are deleted."""
        self.kept = [(float(v), int(s)) for v, s in kept]
        if clean and self.folder.is_dir():
            listed = {self.path(s) for _, s in self.kept}
            self.discard([p for p in self.folder.glob("step-*.safetensors") if p not in listed])

    @torch.no_grad()
    def average_into(self, model: nn.Module) -> None:
        """Load the uniform average of the kept snapshots into ``model`` (floating-point
        tensors averaged in float64; others, such as counters, taken from the best); a listed
        snapshot that is missing or corrupt is a :class:`CheckpointError`."""
        if not self.kept:
            raise CheckpointError(f"{self.folder}: no checkpoint is kept to average")
        total: dict[str, Tensor] = {}
        for _, step in self.kept:
            load_weights(model, self.path(step))
            for name, t in model.state_dict().items():
                if name not in total:
                    total[name] = t.double() if t.is_floating_point() else t.clone()
                elif t.is_floating_point():
                    total[name] += t
        state = model.state_dict()
        model.load_state_dict({name: (t / len(self.kept)).to(state[name].dtype)
                               if state[name].is_floating_point() else t
                               for name, t in total.items()})


__all__ = ["AVERAGE", "NBEST", "BestSnapshots", "WeightAverage"]
