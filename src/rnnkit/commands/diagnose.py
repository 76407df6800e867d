"""``rnnkit diagnose``: gradient flow over time, recurrent Jacobians, gate saturation, logs.

    rnnkit diagnose runs/lm                  # a trained run: its model and its log.jsonl
    rnnkit diagnose --cell rnn,lstm,gru --task copy --length 50 --train-steps 200

Writes PNG plots and ``REPORT.md`` into ``--out`` (default ``DIR/diagnose`` for a run,
``diagnose/`` for fresh models).

For a language-model run directory, the model is rebuilt from ``config.json`` and
``model.safetensors`` (``rnnkit.tasks.lm.diagnostic_losses``) and measured on ``--batch-size``
windows of ``--length`` tokens of its validation text (``--text`` to choose another file).
For every run the training log is analysed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from rnnkit.cells import CELL_NAMES
from rnnkit.commands.common import renamed
from rnnkit.errors import RnnkitError

SYNTHETIC = ("copy", "agreement", "adding")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", metavar="DIR",
                        help="a trained run directory (omit with --cell)")
    parser.add_argument("--cell", default=None,
                        help="fresh models of these cells, comma-separated (rnn,lstm,gru)")
    parser.add_argument("--task", choices=SYNTHETIC, default="copy",
                        help="synthetic task for fresh models (default: copy)")
    parser.add_argument("--length", type=int, default=50,
                        help="delay / distance / sequence length of the task (default: 50)")
    parser.add_argument("--hidden-size", type=int, default=32, help="hidden size (default: 32)")
    parser.add_argument("--num-layers", type=int, default=1,
                        help="recurrent layers (default: 1)")
    parser.add_argument("--engine", default="auto",
                        choices=("auto", "reference", "bptt", "native"),
                        help="engine of fresh models (default: auto)")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="train fresh models this many steps first (default: 0)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch measured")
    parser.add_argument("--text", default=None, help="text measured for a language model run")
    parser.add_argument("--mode", choices=("reference", "engine"), default="reference",
                        help="measure dL/dh_t through cell.step (reference) or each layer's "
                             "own engine (bptt records it in its backward pass)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output directory")
    renamed(parser, {"--hidden": "--hidden-size", "--layers": "--num-layers"})


def _fresh(args: argparse.Namespace) -> int:
    from rnnkit.data.synthetic import make_task
    from rnnkit.diagnostics.report import diagnose_model, write_diagnosis
    from rnnkit.diagnostics.task_model import TaskModel, step_losses, train_on
    from rnnkit.diagnostics.training_log import read_training_log

    cells = [c.strip() for c in args.cell.split(",") if c.strip()]
    for c in cells:
        if c not in CELL_NAMES:
            raise RnnkitError(f"--cell: unknown cell {c!r}; choose from {', '.join(CELL_NAMES)}")
    if args.length < 2:
        raise RnnkitError(f"--length must be at least 2, got {args.length}")
    out = Path(args.out or "diagnose")
    options = {"delay": args.length} if args.task == "copy" else {}
    horizon = options.pop("delay", args.length)
    train = make_task(args.task, 2000, horizon, seed=args.seed)
    probe = make_task(args.task, args.batch_size, horizon, seed=args.seed + 1)
    results, logs = {}, {}
    for cell in cells:
        torch.manual_seed(args.seed)
        model = TaskModel(cell, train.input_size, args.hidden_size, train.num_classes or 1,
                          num_layers=args.num_layers, tokens=args.task != "adding",
                          engine=args.engine)
        if args.train_steps > 0:
            log = train_on(model, train, steps=args.train_steps, clip=1.0, seed=args.seed)
            path = out / f"{cell}_log.jsonl"
            out.mkdir(parents=True, exist_ok=True)
            log.write_jsonl(path)
            logs[cell] = read_training_log(path)
        results[cell] = diagnose_model(model, lambda m=model: step_losses(m, probe),
                                       mode=args.mode)
        print(f"{cell}: measured", file=sys.stderr, flush=True)
    trained = f"trained {args.train_steps} steps" if args.train_steps else "untrained"
    notes = (f"Fresh models ({', '.join(cells)}; hidden {args.hidden_size}, {args.num_layers} "
             f"layer(s), engine `{args.engine}`) on the `{args.task}` task with horizon "
             f"{horizon}, {trained}, measured on a batch of {args.batch_size} (probe mode "
             f"`{args.mode}`).")
    path = write_diagnosis(out, results, logs, notes=notes)
    print(path)
    return 0


def _run(args: argparse.Namespace) -> int:
    from rnnkit.diagnostics.report import diagnose_model, write_diagnosis
    from rnnkit.diagnostics.training_log import read_training_log
    from rnnkit.tasks import lm, run_task
    from rnnkit.training.checkpoint import RunDir

    run_dir = Path(args.run_dir)
    task = run_task(run_dir)
    config = RunDir(run_dir).read_config(task)
    out = Path(args.out) if args.out else run_dir / "diagnose"
    results, notes = {}, [f"Run `{run_dir}` (task `{task}`)."]
    if task == "lm":
        model, losses = lm.diagnostic_losses(run_dir, args.batch_size, args.length, args.text)
    else:
        model = losses = None
        notes.append(f"The `{task}` task offers no diagnostic batch yet: only its training "
                     "log is analysed.")
    if model is not None:
        results[task] = diagnose_model(model, losses, mode=args.mode)
        notes.append(f"Measured on a batch of {args.batch_size} windows of {args.length} "
                     f"steps (probe mode `{args.mode}`).")
    logs = {}
    log_path = run_dir / "log.jsonl"
    if log_path.exists():
        clip = (config.get("train") or {}).get("clip")
        logs[task] = read_training_log(log_path, clip=clip)
    else:
        notes.append("No log.jsonl in the run.")
    path = write_diagnosis(out, results, logs, notes=" ".join(notes))
    print(path)
    return 0


def main(args: argparse.Namespace) -> int:
    if (args.run_dir is None) == (args.cell is None):
        raise RnnkitError("give either a run directory DIR or --cell rnn,lstm,gru (not both)")
    return _fresh(args) if args.cell else _run(args)
