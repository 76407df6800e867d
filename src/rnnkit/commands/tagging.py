"""train a sequence tagger (POS tags, named entities) on CoNLL-U or CoNLL files

    rnnkit train tagger --train en_ewt-ud-train.conllu --dev en_ewt-ud-dev.conllu --column upos
    rnnkit train tagger --train wnut17train.conll --dev emerging.dev.conll --crf
    rnnkit evaluate DIR --data F [--json]
    rnnkit predict DIR --input F [--output F]

The options; the task itself is :mod:`rnnkit.tasks.tagging`.
"""

from __future__ import annotations

import argparse

from rnnkit.commands import common
from rnnkit.data.schemes import SCHEMES
from rnnkit.data.tsv import parse_column
from rnnkit.models.tagger import CHAR_KINDS
from rnnkit.tasks import tagging
from rnnkit.tasks.tagging import TASK, TaggerOptions


def add_data_arguments(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    """``--format --column --token-column`` (shared by train, evaluate and predict)."""
    parser.add_argument("--format", choices=["conllu", "conll"],
                        help="file format (default: conllu for *.conllu, else conll"
                        + ("" if defaults else "; default: the run's") + ")")
    parser.add_argument("--column", type=parse_column, metavar="upos|xpos|INDEX",
                        help="tag column (default: upos for CoNLL-U, the last column for CoNLL"
                        + ("" if defaults else "; default: the run's") + ")")
    parser.add_argument("--token-column", type=parse_column, metavar="INDEX",
                        help="token column (default: FORM for CoNLL-U, 0 for CoNLL)")


_OPTS = TaggerOptions(train="")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", required=True, metavar="F", help="training file")
    parser.add_argument("--dev", metavar="F", help="validation file (best model, early stop)")
    add_data_arguments(parser)
    parser.add_argument("--scheme", default="auto", choices=["auto", *SCHEMES, "iob2"],
                        help="entity tag scheme of the files (default: detect)")
    parser.add_argument("--tag-scheme", choices=["iob1", "bio", "bioes", "iob2"],
                        help="train on tags converted to this scheme (e.g. bioes); "
                        "predictions are converted back to the files' scheme")
    m = parser.add_argument_group("model")
    m.add_argument("--crf", action="store_true", help="CRF output layer instead of softmax")
    m.add_argument("--no-constraints", action="store_true",
                   help="no tag-scheme transition constraints in the CRF")
    m.add_argument("--char-encoder", choices=CHAR_KINDS,
                   help="character-level word representation (default lstm)")
    common.add_model_arguments(m, _OPTS, common.WORD_ENCODER_HELP)
    m.add_argument("--char-dim", type=int, metavar="N",
                   help=f"character embedding size (default {_OPTS.char_dim})")
    m.add_argument("--char-hidden", type=int, metavar="N",
                   help=f"character encoder size (default {_OPTS.char_hidden})")
    m.add_argument("--word-dropout", type=float,
                   help=f"replace training words by <unk> with this probability "
                        f"(default {_OPTS.word_dropout})")
    common.add_common_train_arguments(parser, default_out="runs/tagger-{time}")
    common.renamed(parser, {"--word-dim": "--embedding-size", "--layers": "--num-layers",
                            "--min-count": "--min-freq"})


train = common.train_handler(tagging.train, TaggerOptions)


# -- commands on a run directory ---------------------------------------------------------------
def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="F", help="tagged file to score")
    add_data_arguments(parser, defaults=False)
    common.add_run_arguments(parser, batch_size=64,
                             batch_help="sentences per batch", json=True, strict=True)


@common.run_command
def evaluate(args: argparse.Namespace) -> int:
    """Accuracy, and for entity tags precision, recall and F1 overall and per type."""
    result, corpus = tagging.evaluate_file(args.run_dir, args.data, fmt=args.format,
                                           column=args.column, token_column=args.token_column,
                                           batch_size=args.batch_size, strict=args.strict,
                                           device=args.device)
    if args.json:
        print(common.json_line(result))
        return 0
    print(f"{args.data}: {corpus.summary()}")
    print(f"accuracy   {100 * result['accuracy']:6.2f}")
    if "f1" in result:
        print(f"precision  {100 * result['precision']:6.2f}\nrecall     "
              f"{100 * result['recall']:6.2f}\nf1         {100 * result['f1']:6.2f}")
        print(f"\n{'type':<20} {'P':>6} {'R':>6} {'F1':>6} {'gold':>6}")
        for kind, s in result["per_type"].items():
            print(f"{kind:<20} {100 * s['precision']:6.2f} {100 * s['recall']:6.2f} "
                  f"{100 * s['f1']:6.2f} {s['gold']:6d}")
    return 0


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="F",
                        help="CoNLL-U, CoNLL (tokens in a column) or text (one sentence a "
                        "line, tokens separated by spaces)")
    parser.add_argument("--output", metavar="F", help="output file (default: stdout)")
    parser.add_argument("--input-format", choices=["conllu", "conll", "text"],
                        help="default: conllu for *.conllu, text for *.txt, else the run's")
    parser.add_argument("--column", type=parse_column, metavar="upos|xpos|INDEX",
                        help="column to write the tags into (default: the run's)")
    parser.add_argument("--token-column", type=parse_column, metavar="INDEX",
                        help="token column (default: the run's)")
    common.add_run_arguments(parser, batch_size=64,
                             batch_help="sentences per batch")


@common.run_command
def predict(args: argparse.Namespace) -> int:
    """Tags written back in the input's format (see :func:`rnnkit.tasks.tagging.predict_file`)."""
    text = tagging.predict_file(args.run_dir, args.input, input_format=args.input_format,
                                column=args.column, token_column=args.token_column,
                                batch_size=args.batch_size, device=args.device)
    common.write_output(args.output, text)
    return 0


# -- export (ONNX / TorchScript; see rnnkit.export) --------------------------------------------
def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from rnnkit.commands.export import add_export_arguments as add
    add(parser)


def export(args: argparse.Namespace) -> int:
    """``rnnkit export DIR --onnx F.onnx`` / ``--torchscript F.pt``."""
    from rnnkit.commands.export import export_command
    return export_command(args, tagging.load(args.run_dir)[0], TASK)
