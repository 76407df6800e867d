"""The ``rnnkit`` command.

    rnnkit train TASK ...        train a model (TASK: lm, tagger, classifier, seq2seq,
                                 conditional-lm, asr), writing a run directory
    rnnkit evaluate DIR ...      metrics of a trained run on a data file
    rnnkit generate DIR ...      sample from a language model
    rnnkit predict DIR ...       tags or labels for a file
    rnnkit encode DIR ...        sentence vectors as .npy
    rnnkit translate DIR ...     translate a file
    rnnkit transcribe DIR ...    transcribe sound files (speech recognition)
    rnnkit diagnose ...          gradient diagnostics
    rnnkit claims ...            reproduce the classic claims about RNNs
    rnnkit prepare-digits ...    build the connected-digit speech sets
    rnnkit export DIR ...        ONNX / TorchScript export

Each task is a module ``rnnkit.tasks.<name>`` (data, training, evaluation, prediction,
loading) with its command-line side in ``rnnkit.commands.<name>``, which provides
``add_train_arguments(parser)`` and ``train(args)``, and for the commands on a run directory
``add_<command>_arguments(parser)`` and ``<command>(args)`` for each one it supports.
A run directory's ``config.json`` names its task, which picks the module.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from rnnkit.allocator import keep_freed_memory
from rnnkit.errors import RnnkitError
from rnnkit.tasks import TASKS as TASK_MODULES
from rnnkit.tasks import run_task

# task name -> the module of its command-line options (rnnkit.tasks.TASKS has both modules)
TASKS: dict[str, str] = {name: command for name, (_, command) in TASK_MODULES.items()}

# commands that act on a run directory, with their one-line help
RUN_COMMANDS: dict[str, str] = {
    "evaluate": "print the metrics of a trained run on a data file",
    "generate": "sample text from a trained language model",
    "predict": "tag or classify every line of a file",
    "encode": "write one vector per sentence to a .npy file",
    "translate": "translate a file with a trained seq2seq run",
    "transcribe": "transcribe sound files with a trained speech run",
    "export": "export a trained run to ONNX or TorchScript",
}

# commands that stand alone: name -> (module, help)
TOOLS: dict[str, tuple[str, str]] = {
    "diagnose": ("rnnkit.commands.diagnose", "gradient flow, Jacobians and gate saturation"),
    "claims": ("rnnkit.commands.claims", "reproduce the classic claims about RNNs"),
    "prepare-digits": ("rnnkit.commands.asr", "build connected-digit speech sets from FSDD"),
}


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name == name:
            return None
        raise


def _dispatch(command: str):
    def handler(args: argparse.Namespace) -> int:
        task = run_task(args.run_dir)
        module = _module(TASKS[task])
        fn = getattr(module, command, None) if module else None
        if fn is None:
            raise RnnkitError(f"'rnnkit {command}' does not apply to a {task} run")
        return fn(args) or 0
    return handler


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``rnnkit: error: ... (see PROG --help)``, exit 2
    (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"rnnkit: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from rnnkit import __version__

    parser = Parser(prog="rnnkit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"rnnkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser("train", help="train a model")
    tasks = train.add_subparsers(dest="task", metavar="TASK", required=True)
    for task, module_name in TASKS.items():
        module = _module(module_name)
        if module is None:
            continue
        sub = tasks.add_parser(task, help=(module.__doc__ or "").strip().split("\n")[0])
        module.add_train_arguments(sub)
        sub.set_defaults(func=module.train)

    for command, help_text in RUN_COMMANDS.items():
        tasks_with = [t for t, name in TASKS.items()
                      if hasattr(_module(name), f"add_{command}_arguments")]
        sub = commands.add_parser(
            command, help=help_text,
            description=f"{help_text}. Its options depend on the run's task (one of "
                        f"{', '.join(tasks_with)}): see rnnkit {command} DIR --help.")
        sub.add_argument("run_dir", metavar="DIR", help="a run directory (rnnkit train ...)")
        sub.set_defaults(func=_dispatch(command), sub_command=command)

    for command, (module_name, help_text) in TOOLS.items():
        module = _module(module_name)
        if module is None:
            continue
        sub = commands.add_parser(command, help=help_text)
        module.add_arguments(sub)
        sub.set_defaults(func=module.main)
    return parser


def _task_arguments(argv: list[str]) -> argparse.Namespace | None:
    """Parse a run-directory command with the options its task's module defines."""
    if len(argv) < 2 or argv[0] not in RUN_COMMANDS or argv[1].startswith("-"):
        return None
    command, run_dir = argv[0], argv[1]
    task = run_task(run_dir)
    module = _module(TASKS[task])
    adder = getattr(module, f"add_{command}_arguments", None) if module else None
    if adder is None:
        raise RnnkitError(f"'rnnkit {command}' does not apply to a {task} run")
    parser = Parser(prog=f"rnnkit {command} DIR")
    adder(parser)
    args = parser.parse_args(argv[2:])
    args.run_dir = run_dir
    args.func = getattr(module, command)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rnnkit`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            keep_freed_memory()  # before any tensor: see rnnkit.allocator
        except ValueError as err:  # a bad RNNKIT_MALLOC
            raise RnnkitError(str(err)) from None
        args = _task_arguments(argv)
        if args is None:
            args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except RnnkitError as err:
        print(f"rnnkit: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only folder: the files written are whole
        where = f"{err.filename}: " if err.filename else ""
        print(f"rnnkit: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"rnnkit: interrupted: {err}" if str(err) else "rnnkit: interrupted",
              file=sys.stderr)
        return 128 + int(getattr(err, "signum", 2))


if __name__ == "__main__":
    sys.exit(main())
