"""train a word- or character-level language model (default: tiny Shakespeare)

    rnnkit train lm [--train F --dev F --level word ...]
    rnnkit evaluate DIR --data F [--json]
    rnnkit generate DIR [--prompt TEXT --max-new-tokens N ...]

The options; the task itself is :mod:`rnnkit.tasks.lm`.
"""

from __future__ import annotations

import argparse
import sys

from rnnkit.cells.scan import QRNN_WINDOW
from rnnkit.commands import common
from rnnkit.data.text import LEVELS
from rnnkit.engines import ENGINES
from rnnkit.layers.stacking import CONNECTIONS
from rnnkit.metrics.labels import MAX_UNKNOWN
from rnnkit.tasks import lm
from rnnkit.tasks.lm import (
    ADAPTIVE_CUTOFFS,
    ADAPTIVE_FROM,
    MODEL_DEFAULTS,
    WORD_BPTT,
    WORD_DEFAULTS,
    LMData,
    LMOptions,
)

_DATA = LMData()


def _by_level(name: str) -> str:
    return f"{MODEL_DEFAULTS[name]} for characters, {WORD_DEFAULTS[name]} for words"


# -- rnnkit train lm ------------------------------------------------------------------------
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rnnkit train lm``."""
    d = parser.add_argument_group("data")
    d.add_argument("--train", metavar="FILE",
                   help="UTF-8 training text (default: the bundled tiny Shakespeare)")
    d.add_argument("--dev", metavar="FILE",
                   help="validation text (default: the last --dev-fraction of --train)")
    d.add_argument("--dev-fraction", type=float, metavar="X",
                   help=f"share of --train held out when there is no --dev "
                        f"(default {_DATA.valid_fraction})")
    d.add_argument("--level", choices=LEVELS,
                   help=f"tokens: characters or whitespace-separated words with <eos> at each "
                        f"line end (default {_DATA.level})")
    d.add_argument("--max-vocab", type=int, metavar="N", help="keep the N most frequent")
    common.add_model_arguments(d, {"min_freq": 1})
    d.add_argument("--bptt", type=int, metavar="N",
                   help=f"truncated-BPTT window (default {_DATA.bptt} for characters, "
                        f"{WORD_BPTT} for words)")
    d.add_argument("--variable-bptt", action="store_true",
                   help="randomised window lengths (AWD-LSTM)")
    m = parser.add_argument_group("model")
    common.add_model_arguments(m, {"cell": MODEL_DEFAULTS["cell"],
                            "num_layers": MODEL_DEFAULTS["num_layers"],
                            "hidden_size": _by_level("hidden_size"),
                            "embedding_size": _by_level("embedding_size")})
    m.add_argument("--engine", choices=ENGINES,
                   help="how the recurrence runs (rnnkit.engines; default auto)")
    m.add_argument("--connection", choices=CONNECTIONS,
                   help="skip connections between layers (default none)")
    common.add_model_arguments(m, {"dropout": _by_level("dropout")},
                        {"dropout": "between layers"})
    m.add_argument("--embedding-dropout", type=float,
                   help=f"on the embeddings (default {_by_level('embedding_dropout')})")
    m.add_argument("--output-dropout", type=float,
                   help=f"before the decoder (default {_by_level('output_dropout')})")
    m.add_argument("--variational", action="store_true",
                   help="one dropout mask per sequence between layers")
    m.add_argument("--dropconnect", type=float, help="DropConnect on recurrent weights")
    m.add_argument("--layer-norm", action="store_true", help="layer-normalised cells")
    common.add_model_arguments(m, {"window": QRNN_WINDOW})
    m.add_argument("--tie-weights", action="store_true",
                   help="share embedding and decoder weights")
    m.add_argument("--adaptive", metavar="CUTOFFS",
                   help=f"adaptive softmax with these cutoffs, e.g. 2000,10000; none: a full "
                        f"softmax (default: {','.join(map(str, ADAPTIVE_CUTOFFS))} for "
                        f"{ADAPTIVE_FROM:,} words or more, else none)")
    s = parser.add_argument_group("sample after training")
    s.add_argument("--sample-length", type=int,
                   help="tokens to print at the end (default 500 chars / 100 words; 0: none)")
    s.add_argument("--temperature", type=float, help="of the sample (default 0.8)")
    common.add_common_train_arguments(parser, default_out="runs/lm-{time}")
    common.renamed(parser, {"--valid": "--dev", "--valid-fraction": "--dev-fraction",
                            "--layers": "--num-layers", "--hidden": "--hidden-size",
                            "--embedding": "--embedding-size"})


train = common.train_handler(lm.train, LMOptions)


# -- rnnkit evaluate DIR --------------------------------------------------------------------
def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rnnkit evaluate DIR`` for a language model."""
    parser.add_argument("--data", metavar="FILE", required=True, help="UTF-8 text to score")
    parser.add_argument("--bptt", type=int, default=200, help="window length (default 200)")
    common.add_run_arguments(parser, batch_size=10, batch_help="parallel streams", json=True,
                             strict=True)


@common.run_command
def evaluate(args: argparse.Namespace) -> int:
    """Print loss (nats/token), perplexity, tokens and, for characters, bits per character;
    warn (or with ``--strict`` stop) when more than 5% of the tokens are unknown to the
    model."""
    metrics = lm.evaluate_file(args.run_dir, args.data, batch_size=args.batch_size,
                               bptt=args.bptt, device=args.device,
                               max_unknown=MAX_UNKNOWN, strict=args.strict)
    if args.json:
        print(common.json_line(metrics))
    else:
        line = (f"{args.data}: loss {metrics['loss']:.4f} nats/token, perplexity "
                f"{metrics['perplexity']:.3f}, {metrics['tokens']:,} tokens")
        if "bits_per_char" in metrics:
            line += f", {metrics['bits_per_char']:.4f} bits/char"
        print(line + f", {100 * metrics['unknown_share']:.2f}% unknown")
    return 0


# -- rnnkit generate DIR --------------------------------------------------------------------
def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rnnkit generate DIR``."""
    parser.add_argument("--prompt", default="", help="text to continue (default: none)")
    parser.add_argument("--max-new-tokens", type=int, default=200, metavar="N",
                        help="tokens to draw (default 200)")
    common.add_sampling_arguments(parser, temperature=1.0, seed=None)
    parser.add_argument("--greedy", action="store_true", help="most probable token each step")
    common.add_run_arguments(parser)


@common.run_command
def generate(args: argparse.Namespace) -> int:
    """Print the prompt and its continuation, as the tokens are drawn."""
    pieces = lm.stream_text(args.run_dir, args.prompt, args.max_new_tokens,
                            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            seed=args.seed, greedy=args.greedy, device=args.device)
    last = ""
    for i, piece in enumerate(pieces):
        sys.stdout.write(piece)
        if i % 64 == 0:
            sys.stdout.flush()
        last = piece or last
    sys.stdout.write("" if last.endswith("\n") else "\n")
    return 0


# -- export (ONNX / TorchScript; see rnnkit.export) --------------------------------------------
def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from rnnkit.commands.export import add_export_arguments as add
    add(parser)


def export(args: argparse.Namespace) -> int:
    """``rnnkit export DIR --onnx F.onnx`` / ``--torchscript F.pt``."""
    from rnnkit.commands.export import export_command
    return export_command(args, lm.load_lm(args.run_dir)[0], "lm")
