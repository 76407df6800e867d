"""train a conditional character language model: a whole tune from its type (one-to-many)

    rnnkit train conditional-lm --train ../shared/data/nottingham_abc --condition-from filename
    rnnkit generate DIR --condition jigs [--num 5] [--temperature 0.8] [--check]

``--check`` reports the share of generated tunes that are well-formed ABC
(``rnnkit.data.abc.check_abc``). The options; the task itself is
:mod:`rnnkit.tasks.conditional`.
"""

from __future__ import annotations

import argparse
import sys

from rnnkit.commands import common
from rnnkit.data.abc import check_abc
from rnnkit.engines import ENGINES
from rnnkit.errors import note
from rnnkit.tasks import conditional
from rnnkit.tasks.conditional import ConditionalOptions

_OPTS = ConditionalOptions()


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rnnkit train conditional-lm``."""
    d = parser.add_argument_group("data")
    d.add_argument("--train", metavar="DIR_OR_FILE",
                   help="an .abc file or a directory of them (required)")
    d.add_argument("--condition-from", choices=("filename", "field"),
                   help="label each tune by its file name (default) or a header field")
    d.add_argument("--field",
                   help="the header field for --condition-from field (default R; M: metre)")
    d.add_argument("--dev-fraction", type=float,
                   help="share of the tunes held out for validation (default 0.1)")
    d.add_argument("--max-chars", type=int,
                   help="drop longer tunes (default 1500 characters)")
    m = parser.add_argument_group("model")
    common.add_model_arguments(m, _OPTS, {"embedding_size": "character embedding size"})
    m.add_argument("--label-size", type=int,
                   help=f"condition embedding size (default {_OPTS.label_size})")
    m.add_argument("--engine", choices=ENGINES,
                   help="how the recurrence runs (rnnkit.engines; default auto)")
    common.add_common_train_arguments(parser, default_out="runs/conditional-lm-{time}")
    common.renamed(parser, {"--data": "--train", "--valid-fraction": "--dev-fraction"})


train = common.train_handler(conditional.train, ConditionalOptions)


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--condition", required=True, metavar="LABEL",
                        help="the tune type (or field value) to write")
    parser.add_argument("--num", type=int, default=1, metavar="N",
                        help="how many tunes (default 1)")
    common.add_sampling_arguments(parser, temperature=0.8, seed=0, unit="characters")
    parser.add_argument("--max-len", type=int, default=2000, metavar="N",
                        help="characters per tune at most (default 2000)")
    parser.add_argument("--check", action="store_true",
                        help="report the share of well-formed ABC tunes on stderr")
    common.add_run_arguments(parser)


@common.run_command
def generate(args: argparse.Namespace) -> int:
    """The tunes on stdout as they are drawn, a blank line between two."""
    model, vocab = conditional.load_run(args.run_dir)
    model.to(args.device)
    tunes = conditional.stream_tunes(model, vocab, args.condition, args.num,
                                     args.temperature, args.max_len, args.seed, args.top_k,
                                     args.top_p)
    well_formed = drawn = 0
    for tune in tunes:
        sys.stdout.write(("\n\n" if drawn else "") + tune)
        sys.stdout.flush()
        drawn += 1
        if args.check:
            check = check_abc(tune)
            well_formed += check.ok
            if not check.ok:
                note(f"tune {drawn}: {check.problems[0]}")
    sys.stdout.write("\n")
    if args.check:
        note(f"{well_formed} of {drawn} tunes well-formed ABC "
             f"({100.0 * well_formed / max(drawn, 1):.0f}%)")
    return 0
