"""The options every training run shares, and the run directory they point to.

A task's ``train`` function receives a :class:`RunRequest` (built by ``rnnkit.commands`` from
the command line, or by a program)::

    run, saved = open_run(request, task="tagger")    # refuses to overwrite without resume
    config = train_config(request.train, saved_train_options(saved), DEFAULT_TRAIN)
    ...
    Trainer(model, task, run, config, resume=request.resume).fit()

Every training option is ``None`` when not given, so :func:`train_config` can tell an option
given now from one left out: left out, it takes the value saved in the run's ``config.json``
(when resuming), else the task's default.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from rnnkit.errors import CheckpointError, RnnkitError
from rnnkit.training import distributed
from rnnkit.training.checkpoint import CONFIG, RunDir
from rnnkit.training.loop import TrainConfig

# options that may change when a run is resumed (bounds and reporting)
RESUME_OVERRIDES = ("epochs", "max_steps", "max_minutes", "eval_every", "patience",
                    "log_every", "progress", "device", "on_nan", "find_unused_parameters")


@dataclass
class RunRequest:
    """Where and how a training run starts.

    Attributes:
        out: the run directory (None: ``default_out`` with ``{task}`` and ``{time}`` filled).
        resume: continue the run in ``out`` from its last checkpoint.
        overwrite: replace an existing run in ``out``.
        default_out: the pattern for ``out``.
        train: the :class:`~rnnkit.training.loop.TrainConfig` options given (None or absent:
            not given).
        threads: torch CPU threads (None: torch's default).
    """

    out: str | None = None
    resume: bool = False
    overwrite: bool = False
    default_out: str = "runs/{task}-{time}"
    train: dict = field(default_factory=dict)
    threads: int | None = None
    #: set by :func:`open_run` when it created the run directory (a new run, not a resume)
    created: bool = False

    @property
    def device(self) -> str | None:
        return self.train.get("device")


def train_config(given: Mapping[str, object] | object, saved: Mapping[str, object] | None = None,
                 defaults: TrainConfig | None = None) -> TrainConfig:
    """The :class:`TrainConfig` of this run: options given now (a mapping, or an object with
    them as attributes; None: not given), else (when resuming) the saved ones, else
    ``defaults``. On resume only bounds and reporting may change; other options given now must
    agree with the saved ones. For a new run, a bound given (``epochs``, ``max_steps``,
    ``max_minutes``) replaces the default bounds: ``--max-steps 1000`` runs 1,000 steps
    however many epochs that is. A ``threads`` option sets torch's CPU threads."""
    if not isinstance(given, Mapping):
        given = vars(given)
    base = asdict(defaults or TrainConfig())
    new_run = saved is None
    saved = dict(saved or {})
    values = {}
    for f in fields(TrainConfig):
        value = given.get(f.name)
        if f.name in saved and value is not None and f.name not in RESUME_OVERRIDES \
                and value != saved[f.name]:
            raise CheckpointError(f"--{f.name.replace('_', '-')} {value} differs from the "
                                  f"resumed run's {saved[f.name]}; a resumed run keeps its "
                                  f"options (only {', '.join(RESUME_OVERRIDES)} may change)")
        if value is not None:
            values[f.name] = value
        elif f.name in saved:
            values[f.name] = saved[f.name]
        else:
            values[f.name] = base[f.name]
    bounds = ("epochs", "max_steps", "max_minutes")
    if new_run and any(given.get(b) is not None for b in bounds):
        for b in bounds:  # a bound given replaces the default bounds: only it applies
            if given.get(b) is None:
                values[b] = None
    if given.get("threads"):
        torch.set_num_threads(given["threads"])
    if values["device"] == "auto":
        values["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return TrainConfig(**values)


def open_run(request: RunRequest, task: str) -> tuple[RunDir, dict | None]:
    """The run directory of ``request.out`` (or the default, written back into
    ``request.out``), and its saved config when ``request.resume``. Refuses to overwrite an
    existing run unless ``overwrite``, and a resume of a missing run or of a run of another
    task.

    Under torchrun it joins the process group (:func:`rnnkit.training.distributed.setup`);
    rank 0 checks and prepares the directory and the other ranks follow its verdict."""
    if request.threads:
        torch.set_num_threads(request.threads)
    dist = distributed.setup(request.device)
    if not dist.distributed:
        return _open_run(request, task)
    verdict: dict | None = None
    if dist.is_main:
        try:
            run, _ = _open_run(request, task)
            verdict = {"out": str(run.path)}
        except RnnkitError as err:
            verdict = {"error": str(err)}
    verdict = distributed.broadcast_json(verdict)
    if "error" in verdict:
        raise CheckpointError(verdict["error"])
    request.out = verdict["out"]
    run = RunDir(request.out)
    return run, (run.read_config(task=task) if request.resume else None)


def _open_run(request: RunRequest, task: str) -> tuple[RunDir, dict | None]:
    out = request.out
    if out is None:
        out = request.default_out.format(task=task, time=time.strftime("%Y%m%d-%H%M%S"))
        request.out = out
    run = RunDir(out)
    if run.path.exists() and not run.path.is_dir():
        raise CheckpointError(f"{run.path}: exists and is not a directory")
    if request.resume:
        config = run.read_config(task=task)
        if not run.has_last():
            raise CheckpointError(f"{run.path}: has no last checkpoint to resume from")
        lock_run(run)
        return run, config
    if (run.path / CONFIG).exists() and not request.overwrite:
        raise CheckpointError(f"{run.path}: already holds a run; pass --resume to "
                              f"continue it, --overwrite to replace it, or another --out")
    run.path.mkdir(parents=True, exist_ok=True)
    lock_run(run)  # before anything of another trainer is removed
    for entry in run.path.iterdir():  # --overwrite: all but the lock
        if entry.name != LOCK:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    request.created = True
    return run, None


LOCK = ".lock"
_LOCKS: dict[str, object] = {}  # run directory -> its open lock file, held until exit


def lock_run(run: RunDir) -> None:
    """Lock ``run`` for this process until :func:`release_run` or its end (``DIR/.lock``, an
    advisory ``flock`` that the system releases when the process ends, so a killed trainer's
    lock is taken over); a second trainer gets a :class:`CheckpointError` naming the holder's
    pid."""
    release_run(run.path)  # this process's own earlier lock on it
    path = run.path / LOCK
    f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held open on purpose)
    try:
        import fcntl
    except ImportError:  # no flock on this system: no locking
        _LOCKS[str(run.path)] = f
        return
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise CheckpointError(f"{run.path}: another process (pid {holder}) is training in "
                              f"this run directory; wait for it or use another --out"
                              ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _LOCKS[str(run.path)] = f


def same_path(a: object, b: object) -> bool:
    """Whether two paths (or None) name the same file."""
    if a is None or b is None:
        return a is b
    return Path(str(a)).resolve() == Path(str(b)).resolve()


def option_changes(opts: object, saved: dict[str, object], paths: tuple[str, ...] = (),
                   required: tuple[str, ...] = ()) -> dict[str, tuple[object, object, bool]]:
    """For :func:`refuse_changed_options`: each option the command line set (``opts.given``,
    and the ``required`` ones, always set) that the run also has (``saved``: option name ->
    the run's value), as flag -> (value now, the run's value, whether they agree); the
    options in ``paths`` are compared as files."""
    changes = {}
    for name in sorted((getattr(opts, "given", frozenset()) | set(required)) & set(saved)):
        now, was = getattr(opts, name), saved[name]
        same = same_path(now, was) if name in paths else now == was
        changes["--" + name.replace("_", "-")] = (now, was, same)
    return changes


def refuse_changed_options(run: RunDir, changes: dict[str, tuple[object, object, bool]]
                           ) -> None:
    """On ``--resume``: a :class:`CheckpointError` listing every model or data option given
    now that differs from the run's own; ``changes`` maps a flag to (value now, the run's
    value, whether they agree). Only the options in ``RESUME_OVERRIDES`` (bounds, evaluation
    cadence, progress, device) and ``--threads`` may change on resume."""
    differ = [f"{flag} {now} (the run has {was})" for flag, (now, was, same) in changes.items()
              if not same]
    if differ:
        allowed = ", ".join("--" + o.replace("_", "-") for o in RESUME_OVERRIDES)
        raise CheckpointError(f"{run.path}: --resume continues the run with its own options, "
                              f"and these differ from them: {'; '.join(differ)}; leave them "
                              f"out or start a new run with another --out (may change: "
                              f"{allowed}, --threads)")


def release_run(path: str | Path | None) -> None:
    """Release this process's lock on the run directory ``path`` (a no-op without one)."""
    f = _LOCKS.pop(str(RunDir(path).path), None) if path is not None else None
    if f is not None:
        f.close()


def remove_failed_start(request: RunRequest) -> None:
    """Remove the run directory a start created when it failed before its first checkpoint
    (no ``last/``), so that the same command can simply be run again; a resumed run, or one
    that reached a checkpoint, is left as it is."""
    if request.created and request.out is not None:
        run = RunDir(request.out)
        if run.path.is_dir() and not run.has_last():
            release_run(run.path)
            shutil.rmtree(run.path, ignore_errors=True)


def saved_train_options(config: Mapping[str, object] | None) -> dict | None:
    """The ``"train"`` section of a saved run config (``None`` when not resuming)."""
    if config is None:
        return None
    section = config.get("train")
    return dict(section) if isinstance(section, dict) else {}

