"""What every ``rnnkit`` command shares: the training options, deprecated flag spellings,
one-line errors, and turning parsed arguments into the calls of ``rnnkit.tasks``.

The flag vocabulary (the same concept has the same flag in every ``rnnkit train TASK``):
``--train`` / ``--dev`` (data), ``--hidden-size``, ``--num-layers``, ``--embedding-size``,
``--cell``, ``--window`` (the qrnn's), ``--dropout``, ``--min-freq``, ``--batch-size`` and the
training options below.
Earlier spellings are accepted as deprecated aliases (:func:`renamed`): hidden from
``--help``, they print a one-line warning naming the new flag (CHANGELOG.md lists them).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import torch

from rnnkit.cells import CELL_NAMES, canonical_cell
from rnnkit.cells.scan import QRNN_WINDOW
from rnnkit.errors import RnnkitError, warn
from rnnkit.files import write_text_atomic
from rnnkit.training.checks import check_device, flag
from rnnkit.training.loop import ON_NAN, OPTIMIZERS, TrainConfig
from rnnkit.training.options import RunRequest, release_run, remove_failed_start
from rnnkit.training.schedule import SCHEDULES

T = TypeVar("T")


class _Deprecated(argparse.Action):
    """A deprecated spelling of another option: stores into its ``dest`` and warns once."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"rnnkit: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def renamed(parser: argparse.ArgumentParser, renames: dict[str, str]) -> None:
    """Accept each ``old`` of ``renames`` (old -> new) as a deprecated spelling of the option
    ``new`` already on ``parser`` (same destination, type and choices), not shown by
    ``--help``."""
    for old, new in renames.items():
        target = next((a for a in parser._actions if new in a.option_strings), None)
        if target is None:
            raise ValueError(f"{new}: no such option to rename {old} to")
        flag = target.nargs == 0
        parser.add_argument(old, dest=target.dest, action=_Deprecated, new=new,
                            nargs=0 if flag else target.nargs,
                            const=target.const if flag else None,
                            type=None if flag else target.type, choices=target.choices,
                            default=argparse.SUPPRESS, help=argparse.SUPPRESS)


#: the help of the shared model flags for a bidirectional word-level encoder (tagger,
#: classifier)
WORD_ENCODER_HELP = {"embedding_size": "word embedding size",
                     "hidden_size": "hidden units per direction",
                     "min_freq": "words seen fewer times become <unk>"}
_MODEL_FLAGS = {"cell": ("recurrent cell", {"choices": CELL_NAMES, "type": canonical_cell}),
                "embedding_size": ("embedding size", {"type": int, "metavar": "N"}),
                "hidden_size": ("hidden units per layer", {"type": int, "metavar": "N"}),
                "num_layers": ("recurrent layers", {"type": int, "metavar": "N"}),
                "dropout": ("dropout", {"type": float}),
                "min_freq": ("tokens seen fewer times become <unk>",
                             {"type": int, "metavar": "N"}),
                "window": ("the qrnn cell's convolution window, 1 or 2: one for every layer or "
                           "one per layer, e.g. 2,1 as AWD-LSTM's QRNN", {"metavar": "K[,K...]"})}


def add_model_arguments(group: argparse._ActionsContainer, defaults: Mapping | object,
                        help: dict[str, str] | None = None) -> None:
    """The model flags the tasks share, under their one name each: ``--cell``,
    ``--embedding-size``, ``--hidden-size``, ``--num-layers``, ``--dropout``, ``--min-freq``
    and ``--window``.
    ``defaults`` is the task's options object (every shared flag it has a field for is
    added) or a mapping of the flags to add; their values appear in the help, the defaults
    themselves stay with the task's options. ``help`` overrides a flag's description."""
    if not isinstance(defaults, Mapping):
        defaults = {n: getattr(defaults, n) for n in _MODEL_FLAGS if hasattr(defaults, n)}
    for name, default in defaults.items():
        text, kind = _MODEL_FLAGS[name]
        if name == "window" and default is None:  # an options field left to the cell
            default = QRNN_WINDOW
        group.add_argument("--" + name.replace("_", "-"), **kind,
                           help=f"{(help or {}).get(name, text)} (default {default})")


def one_line(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad option values (ValueError, TypeError) become one-line :class:`RnnkitError`; a
    message that starts with an option's name starts with its flag instead."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (ValueError, TypeError) as err:
            if isinstance(err, RnnkitError):
                raise
            message = str(err)
            name = message.split(" ", 1)[0]
            if name.isidentifier() and hasattr(args, name):  # "top_k must be" -> "--top-k"
                message = flag(name) + message[len(name):]
            raise RnnkitError(message) from None

    wrapper.__doc__, wrapper.__name__ = fn.__doc__, fn.__name__
    return wrapper


def options_from(args: argparse.Namespace, cls: type[T], **extra: Any) -> T:
    """The dataclass ``cls`` from the parsed arguments of the same names; an argument that
    was not given (None) leaves the dataclass's default. A field ``given`` receives the names
    of the options the command line set (for the checks of ``--resume``)."""
    names = {f.name for f in fields(cls)} - {"given"}
    values = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if "given" in {f.name for f in fields(cls)}:  # which options the command line set
        values["given"] = frozenset(n for n, v in values.items() if v is not False)
    return cls(**{**values, **extra})


def train_handler(train: Callable[[Any, RunRequest], int], options: type
                  ) -> Callable[[argparse.Namespace], int]:
    """The ``train(args)`` of a task's command module: its options dataclass and the run
    request from the parsed arguments, passed to the task's ``train``."""

    def handler(args: argparse.Namespace) -> int:
        request = run_request(args)
        try:
            return train(options_from(args, options), request)
        except BaseException:
            remove_failed_start(request)
            raise
        finally:
            release_run(request.out)

    handler.__doc__ = train.__doc__
    return one_line(handler)


def _check_common(args: argparse.Namespace, positive: tuple[str, ...],
                  keep: tuple[str | None, ...] = ()) -> None:
    """The checks every verb makes: the options ``positive`` (where given) are positive
    ints, and ``--device`` (where the verb has one, and it is not one of ``keep``) is a
    device of this machine, written back in torch's spelling."""
    for name in positive:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise RnnkitError(f"{flag(name)} must be a positive int, got {value}")
    if hasattr(args, "device") and args.device not in keep:
        args.device = str(check_device(args.device))


def run_request(args: argparse.Namespace) -> RunRequest:
    """The :class:`RunRequest` of ``rnnkit train TASK``'s common options."""
    _check_common(args, ("threads", "batch_size"), keep=(None, "auto"))
    train = {f.name: getattr(args, f.name, None) for f in fields(TrainConfig)}
    return RunRequest(out=args.out, resume=args.resume, overwrite=args.overwrite,
                      default_out=getattr(args, "_default_out", "runs/{task}-{time}"),
                      train=train, threads=args.threads)


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
    g.add_argument("--ema", type=float, metavar="DECAY",
                   help="evaluate and keep a moving average of the weights, e.g. 0.999 "
                        "(about the last 1,000 steps; default: off)")
    g.add_argument("--average-best", type=int, metavar="N",
                   help="when training ends, average the N best evaluated checkpoints (kept "
                        "in DIR/nbest/) and keep the average if it scores better on dev "
                        "(default: off)")
    g.add_argument("--find-unused-parameters", action="store_const", const=True, default=None,
                   help="distributed training: tell DDP that some parameters may get no "
                   "gradient in a step")
    g.add_argument("--log-every", type=int, metavar="N", help="log every N steps")
    g.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")
    g.add_argument("--device", help="cpu, cuda, cuda:1, ... (default cpu)")
    g.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                   default=None, help="no progress bar")
    parser.set_defaults(_default_out=default_out)


# -- commands on a run directory (evaluate, generate, predict, encode, translate, export) --------
#: the options of a run command that name a file it writes (its folder must exist)
OUTPUT_OPTIONS = ("output", "plot_attention", "onnx", "torchscript")


def add_run_arguments(parser: argparse.ArgumentParser, *, device: bool = True,
                      batch_size: int | None = None, batch_help: str = "sequences per batch",
                      json: bool = False, strict: bool = False) -> None:
    """The options every command on a run directory shares: ``--threads``, ``--device``
    (where the task runs its model on one), and when asked ``--batch-size`` (with its
    default), ``--json`` and ``--strict``."""
    if device:
        parser.add_argument("--device", default="cpu",
                            help="cpu, cuda, cuda:1, ... (default cpu)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch CPU threads (default: torch's)")
    if batch_size is not None:
        parser.add_argument("--batch-size", type=int, default=batch_size, metavar="B",
                            help=f"{batch_help} (default {batch_size})")
    if json:
        parser.add_argument("--json", action="store_true",
                            help="print the results as one JSON line")
    if strict:
        parser.add_argument("--strict", action="store_true",
                            help="stop with an error where the results would mean nothing "
                                 "(most tokens unknown, no label in common) instead of "
                                 "warning")


def add_sampling_arguments(parser: argparse.ArgumentParser, *, temperature: float,
                           seed: int | None, unit: str = "tokens") -> None:
    """``--temperature --top-k --top-p --seed`` of a command that samples (``unit``: what
    it draws, for the help)."""
    parser.add_argument("--temperature", type=float, default=temperature,
                        help=f"divide the logits by this (default {temperature})")
    parser.add_argument("--top-k", type=int, default=None, metavar="K",
                        help=f"draw from the K most probable {unit} only (default: all)")
    parser.add_argument("--top-p", type=float, default=None, metavar="P",
                        help="nucleus sampling: the smallest set of probability >= P "
                             "(default: off)")
    parser.add_argument("--seed", type=int, default=seed,
                        help=f"random seed (default {'none' if seed is None else seed})")


def check_run_arguments(args: argparse.Namespace) -> None:
    """Refuse, before any work, a bad ``--device``, ``--threads``, ``--batch-size``,
    ``--bptt`` or a file to write into a folder that does not exist; set the threads."""
    _check_common(args, ("threads", "batch_size", "bptt"))
    for name in OUTPUT_OPTIONS:
        value = getattr(args, name, None)
        if isinstance(value, str) and value != "-":
            folder = Path(value).parent
            if not folder.is_dir():
                raise RnnkitError(f"{flag(name)} {value}: the folder {folder} does not exist")
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def run_command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A command on a run directory: :func:`check_run_arguments`, then ``fn`` with one-line
    errors (:func:`one_line`)."""

    def wrapper(args: argparse.Namespace) -> int:
        check_run_arguments(args)
        return fn(args)

    wrapper.__doc__, wrapper.__name__ = fn.__doc__, fn.__name__
    return one_line(wrapper)


def _finite(value: Any, path: str, bad: list[str]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        bad.append(f"{path} = {value}")
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v, f"{path}.{k}" if path else str(k), bad) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{path}[{i}]", bad) for i, v in enumerate(value)]
    return value


def json_line(result: Mapping[str, Any]) -> str:
    """``result`` as one line of strict JSON: a non-finite number becomes ``null``, with a
    warning on stderr naming it."""
    bad: list[str] = []
    clean = _finite(result, "", bad)
    if bad:
        warn(f"not finite, written as null: {', '.join(bad)}")
    return json.dumps(clean, allow_nan=False, ensure_ascii=False)


def write_output(path: str | None, text: str) -> None:
    """``text`` into ``path`` (atomically) or, with no path or ``-``, onto stdout."""
    if path in (None, "-"):
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_text_atomic(path, text)
