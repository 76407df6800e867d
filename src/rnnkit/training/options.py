"""The options every ``rnnkit train <task>`` shares, and the run directory they point to.

::

    def add_train_arguments(parser):
        parser.add_argument("--train", ...)             # the task's own options
        add_common_train_arguments(parser, default_out="runs/tagger")

    def train(args):
        run, saved = open_run(args, task="tagger")      # refuses to overwrite without --resume
        config = train_config(args, saved, TrainConfig(lr=1e-3, epochs=20))
        ...
        Trainer(model, task, run, config, resume=args.resume).fit()

Every common option defaults to ``None`` on the command line, so :func:`train_config` can tell
an option given now from one left out: left out, it takes the value saved in the run's
``config.json`` (when resuming), else the task's default.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, fields

import torch

from rnnkit.errors import CheckpointError, RnnkitError
from rnnkit.training import distributed
from rnnkit.training.checkpoint import CONFIG, RunDir
from rnnkit.training.loop import ON_NAN, OPTIMIZERS, TrainConfig
from rnnkit.training.schedule import SCHEDULES

# options that may change when a run is resumed (bounds and reporting)
RESUME_OVERRIDES = ("epochs", "max_steps", "max_minutes", "eval_every", "patience",
                    "log_every", "progress", "device", "on_nan", "find_unused_parameters")


def add_common_train_arguments(parser: argparse.ArgumentParser, *,
                               default_out: str = "runs/{task}-{time}") -> None:
    """Add ``--epochs --max-steps --max-minutes --seed --out --resume --lr --optimizer
    --weight-decay --momentum --clip --schedule --warmup --eval-every --patience --batch-size
    --threads --device --no-progress ...`` to ``parser``.

    ``--batch-size`` is common but its meaning and default belong to the task (read
    ``args.batch_size``, ``None`` when not given). ``default_out`` may use ``{task}`` and
    ``{time}``.
    """
    g = parser.add_argument_group("training (common to every task)")
    g.add_argument("--out", metavar="DIR", default=None,
                   help=f"run directory to write (default: {default_out})")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing run in --out")
    g.add_argument("--epochs", type=int, metavar="N", help="passes over the training data")
    g.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimizer steps")
    g.add_argument("--max-minutes", type=float, metavar="M",
                   help="stop after M minutes of training (a resumed run counts its earlier "
                        "minutes)")
    g.add_argument("--seed", type=int, metavar="S", help="random seed (default 0)")
    g.add_argument("--batch-size", type=int, metavar="B", help="sequences per batch")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="adamw (default) or sgd")
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--weight-decay", type=float, help="decoupled (AdamW) or L2 (SGD)")
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument("--clip", type=float,
                   help="clip gradients to this global norm (0: no clipping)")
    g.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule")
    g.add_argument("--warmup", type=int, metavar="N", help="linear warm-up steps")
    g.add_argument("--min-lr-ratio", type=float,
                   help="final lr / peak lr for linear and cosine schedules")
    g.add_argument("--lr-factor", type=float,
                   help="plateau schedule: multiply lr by this when validation stalls")
    g.add_argument("--eval-every", type=int, metavar="N",
                   help="also evaluate every N steps (0: once per epoch)")
    g.add_argument("--patience", type=int, metavar="N",
                   help="early stopping after N evaluations without improvement (0: off)")
    g.add_argument("--explode", type=float, metavar="X",
                   help="stop when the loss exceeds X times the first loss (default 4)")
    g.add_argument("--on-nan", choices=ON_NAN,
                   help="on a NaN / infinite / exploding loss: stop (default), skip the step, "
                   "or rollback to the last checkpoint with half the learning rate")
    g.add_argument("--find-unused-parameters", action="store_const", const=True, default=None,
                   help="distributed training: tell DDP that some parameters may get no "
                   "gradient in a step")
    g.add_argument("--log-every", type=int, metavar="N", help="log every N steps")
    g.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")
    g.add_argument("--device", help="cpu, cuda, cuda:1, ... (default cpu)")
    g.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                   default=None, help="no progress bar")
    parser.set_defaults(_default_out=default_out)


def train_config(args: argparse.Namespace, saved: Mapping[str, object] | None = None,
                 defaults: TrainConfig | None = None) -> TrainConfig:
    """The :class:`TrainConfig` of this run: options given now, else (when resuming) the
    saved ones, else ``defaults``. On resume only bounds and reporting may change; other
    options given now must agree with the saved ones."""
    base = asdict(defaults or TrainConfig())
    saved = dict(saved or {})
    values = {}
    for f in fields(TrainConfig):
        given = getattr(args, f.name, None)
        if f.name in saved and given is not None and f.name not in RESUME_OVERRIDES \
                and given != saved[f.name]:
            raise CheckpointError(f"--{f.name.replace('_', '-')} {given} differs from the "
                                  f"resumed run's {saved[f.name]}; a resumed run keeps its "
                                  f"options (only {', '.join(RESUME_OVERRIDES)} may change)")
        if given is not None:
            values[f.name] = given
        elif f.name in saved:
            values[f.name] = saved[f.name]
        else:
            values[f.name] = base[f.name]
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if values["device"] == "auto":
        values["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return TrainConfig(**values)


def open_run(args: argparse.Namespace, task: str) -> tuple[RunDir, dict | None]:
    """The run directory of ``args.out`` (or the default), and its saved config when
    ``args.resume``. Refuses to overwrite an existing run unless ``--overwrite``, and a
    resume of a missing run or of a run of another task.

    Under torchrun it joins the process group (:func:`rnnkit.training.distributed.setup`);
    rank 0 checks and prepares the directory and the other ranks follow its verdict."""
    dist = distributed.setup(getattr(args, "device", None))
    if not dist.distributed:
        return _open_run(args, task)
    verdict: dict | None = None
    if dist.is_main:
        try:
            run, _ = _open_run(args, task)
            verdict = {"out": str(run.path)}
        except RnnkitError as err:
            verdict = {"error": str(err)}
    verdict = distributed.broadcast_json(verdict)
    if "error" in verdict:
        raise CheckpointError(verdict["error"])
    args.out = verdict["out"]
    run = RunDir(args.out)
    return run, (run.read_config(task=task) if args.resume else None)


def _open_run(args: argparse.Namespace, task: str) -> tuple[RunDir, dict | None]:
    out = args.out
    if out is None:
        pattern = getattr(args, "_default_out", "runs/{task}-{time}")
        out = pattern.format(task=task, time=time.strftime("%Y%m%d-%H%M%S"))
        args.out = out
    run = RunDir(out)
    if args.resume:
        config = run.read_config(task=task)
        if not run.has_last():
            raise CheckpointError(f"{run.path}: has no last checkpoint to resume from")
        return run, config
    if (run.path / CONFIG).exists():
        if not getattr(args, "overwrite", False):
            raise CheckpointError(f"{run.path}: already holds a run; pass --resume to "
                                  f"continue it, --overwrite to replace it, or another --out")
        shutil.rmtree(run.path)
    elif run.path.exists() and not run.path.is_dir():
        raise CheckpointError(f"{run.path}: exists and is not a directory")
    run.path.mkdir(parents=True, exist_ok=True)
    return run, None


def saved_train_options(config: Mapping[str, object] | None) -> dict | None:
    """The ``"train"`` section of a saved run config (``None`` when not resuming)."""
    if config is None:
        return None
    section = config.get("train")
    return dict(section) if isinstance(section, dict) else {}

