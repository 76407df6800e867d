"""The training machinery every task shares.

- ``rnnkit.training.loop``: :class:`Trainer`, :class:`TrainingTask` (the task interface),
  :class:`TrainConfig`, :class:`StepOutput`, :class:`TrainResult`;
- ``rnnkit.training.checkpoint``: :class:`RunDir` (config.json, vocab.json, model.safetensors,
  last/ for --resume), safetensors + JSON helpers that never unpickle;
- ``rnnkit.training.schedule``: :class:`Schedule` (constant, linear, cosine, plateau);
- ``rnnkit.training.options``: :class:`RunRequest`, ``train_config``, ``open_run``;
- ``rnnkit.training.runconfig``: :class:`RunConfig`, the one ``config.json`` schema;
- ``rnnkit.training.distributed``: data-parallel training under ``torchrun`` (DDP, per-rank
  shards, rank-0 checkpoints), used by the :class:`Trainer` of every task;
- ``rnnkit.training.chunked``: long sequences evaluated in chunks that carry the state.
"""

from rnnkit.training.checkpoint import RunDir, load_weights, save_weights
from rnnkit.training.loop import StepOutput, TrainConfig, Trainer, TrainingTask, TrainResult
from rnnkit.training.options import RunRequest, open_run, train_config
from rnnkit.training.runconfig import RunConfig
from rnnkit.training.schedule import Schedule

__all__ = [
    "RunConfig",
    "RunDir",
    "RunRequest",
    "Schedule",
    "StepOutput",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingTask",
    "load_weights",
    "open_run",
    "save_weights",
    "train_config",
]
