"""The tasks, one module each: its data section, training task, evaluation, prediction and
loading (``lm``, ``tagging``, ``classification``, ``seq2seq``, ``conditional``, ``asr``).

A task module takes dataclasses (its options, a :class:`~rnnkit.training.RunRequest`), never
command-line arguments: ``rnnkit.commands`` turns those into calls of these modules.
"""

from __future__ import annotations

from pathlib import Path

from rnnkit.errors import CheckpointError

#: task name (``config.json``'s ``"task"``, ``rnnkit train TASK``) -> (task module, command
#: module)
TASKS: dict[str, tuple[str, str]] = {
    "lm": ("rnnkit.tasks.lm", "rnnkit.commands.lm"),
    "tagger": ("rnnkit.tasks.tagging", "rnnkit.commands.tagging"),
    "classifier": ("rnnkit.tasks.classification", "rnnkit.commands.classification"),
    "seq2seq": ("rnnkit.tasks.seq2seq", "rnnkit.commands.seq2seq"),
    "conditional-lm": ("rnnkit.tasks.conditional", "rnnkit.commands.conditional"),
    "asr": ("rnnkit.tasks.asr", "rnnkit.commands.asr"),
}


def run_task(run_dir: str | Path) -> str:
    """The task named in ``run_dir/config.json`` (read by
    :meth:`~rnnkit.training.checkpoint.RunDir.read_config`, which refuses pickles)."""
    from rnnkit.training.checkpoint import RunDir

    path = Path(run_dir)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a run directory (no such directory)")
    task = RunDir(path).read_run_config().task
    if task not in TASKS:
        raise CheckpointError(f"{path / 'config.json'}: unknown task {task!r}")
    return task


__all__ = ["TASKS", "run_task"]
