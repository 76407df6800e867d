"""train a sentence classifier (sentiment, topic) on TSV files

    rnnkit train classifier --train train.tsv --dev dev.tsv [--pooling max]
    rnnkit evaluate DIR --data dev.tsv [--json]             accuracy and macro-F1
    rnnkit predict DIR --input texts.txt [--output F]       one label a line
    rnnkit encode DIR --input texts.txt --output vecs.npy   one vector a line, (N, D) float32

The options; the task itself is :mod:`rnnkit.tasks.classification`.
"""

from __future__ import annotations

import argparse
import io

import numpy as np

from rnnkit.commands import common
from rnnkit.data.tsv import parse_column
from rnnkit.errors import note
from rnnkit.files import write_bytes_atomic
from rnnkit.models.classifier import POOLINGS
from rnnkit.tasks import classification
from rnnkit.tasks.classification import TASK, ClassifierOptions

_OPTS = ClassifierOptions(train="")


def add_tsv_arguments(parser: argparse.ArgumentParser, run_defaults: bool = False) -> None:
    """``--text-column --label-column --header/--no-header``."""
    tail = " (default: the run's)" if run_defaults else ""
    parser.add_argument("--text-column", type=parse_column, metavar="NAME|INDEX",
                        help="text column" + (tail or " (default 0, or 'sentence'/'text' when "
                                              "the header has it)"))
    parser.add_argument("--label-column", type=parse_column, metavar="NAME|INDEX",
                        help="label column" + (tail or " (default 1, or 'label')"))
    parser.add_argument("--header", dest="header", action="store_const", const=True,
                        default=None, help="the first line names the columns")
    parser.add_argument("--no-header", dest="header", action="store_const", const=False,
                        help="the first line is an example (default: detect)")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rnnkit train classifier``."""
    parser.add_argument("--train", required=True, metavar="F.tsv")
    parser.add_argument("--dev", metavar="F.tsv", help="validation file (best model, early stop)")
    add_tsv_arguments(parser)
    m = parser.add_argument_group("model")
    common.add_model_arguments(m, _OPTS, common.WORD_ENCODER_HELP)
    m.add_argument("--unidirectional", action="store_true", help="one direction only")
    m.add_argument("--pooling", choices=POOLINGS,
                   help=f"over the steps (default {_OPTS.pooling})")
    m.add_argument("--lower", action="store_true", help="lowercase the texts")
    common.add_common_train_arguments(parser, default_out="runs/classifier-{time}")
    common.renamed(parser, {"--embed-dim": "--embedding-size", "--layers": "--num-layers",
                            "--min-count": "--min-freq"})


train = common.train_handler(classification.train, ClassifierOptions)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="F.tsv", help="labelled file")
    add_tsv_arguments(parser, run_defaults=True)
    common.add_run_arguments(parser, json=True, strict=True)


@common.run_command
def evaluate(args: argparse.Namespace) -> int:
    """Accuracy, macro-averaged F1 and per-class precision, recall and F1."""
    s, n = classification.evaluate_file(args.run_dir, args.data, args.text_column,
                                        args.label_column, args.header, strict=args.strict,
                                        device=args.device)
    if args.json:
        print(common.json_line({"accuracy": s.accuracy, "macro_f1": s.macro_f1,
                                "examples": n, "per_class": s.per_class}))
        return 0
    print(f"{args.data}: {n} examples")
    print(f"accuracy  {100 * s.accuracy:6.2f}\nmacro_f1  {100 * s.macro_f1:6.2f}\n")
    print(f"{'label':<16} {'P':>6} {'R':>6} {'F1':>6} {'gold':>6}")
    for label, c in s.per_class.items():
        print(f"{label:<16} {100 * c['precision']:6.2f} {100 * c['recall']:6.2f} "
              f"{100 * c['f1']:6.2f} {c['support']:6d}")
    return 0


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="F", help="one text a line")
    parser.add_argument("--output", metavar="F", help="one label a line (default: stdout)")
    common.add_run_arguments(parser)


@common.run_command
def predict(args: argparse.Namespace) -> int:
    """One label a line, aligned with the input's lines (blank lines stay blank)."""
    labels = classification.predict_file(args.run_dir, args.input, args.device)
    common.write_output(args.output, labels)
    return 0


def add_encode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="F", help="one text a line")
    parser.add_argument("--output", required=True, metavar="F.npy",
                        help="(N, D) float32 array, row i for line i (zeros for blank lines)")
    common.add_run_arguments(parser)


@common.run_command
def encode(args: argparse.Namespace) -> int:
    out = classification.encode_file(args.run_dir, args.input, args.device)
    buf = io.BytesIO()
    np.save(buf, out, allow_pickle=False)
    write_bytes_atomic(args.output, buf.getvalue())
    note(f"wrote {args.output}: {out.shape[0]} x {out.shape[1]} float32")
    return 0


# -- export (ONNX / TorchScript; see rnnkit.export) --------------------------------------------
def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from rnnkit.commands.export import add_export_arguments as add
    add(parser)


def export(args: argparse.Namespace) -> int:
    """``rnnkit export DIR --onnx F.onnx`` / ``--torchscript F.pt``."""
    from rnnkit.commands.export import export_command
    return export_command(args, classification.load(args.run_dir)[0], TASK)
