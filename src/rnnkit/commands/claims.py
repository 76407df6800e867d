"""``rnnkit claims``: reproduce the classic claims about recurrent networks.

    rnnkit claims                       # every experiment, about 35 minutes in all
    rnnkit claims --quick --out claims/ # a small version of each: about 70 s in all
    rnnkit claims --only 2,3            # the memory horizon and exploding gradients only

Writes ``OUT/REPORT.md`` (a table of each claim, what was measured, whether it held) and the
PNG plots and logs it shows.
"""

from __future__ import annotations

import argparse
import sys

import torch

from rnnkit.errors import RnnkitError


def _numbers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--only takes experiment numbers like 2,3; got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="small budgets (about 70 s in all on one core)")
    parser.add_argument("--out", default="claims", help="output directory (default: claims/)")
    parser.add_argument("--only", type=_numbers, default=None, metavar="N,N",
                        help="run only these experiments (1-8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's; the budgets assume 2)")
    parser.add_argument("--scale", choices=("full", "quick", "tiny"), default=None,
                        help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> int:
    from rnnkit.diagnostics.claims import run_claims

    if args.threads:
        torch.set_num_threads(args.threads)
    scale = args.scale or ("quick" if args.quick else "full")
    try:
        path, results = run_claims(args.out, scale, args.only, args.seed,
                                   progress=lambda line: print(line, file=sys.stderr,
                                                               flush=True))
    except ValueError as err:
        raise RnnkitError(str(err)) from None
    held = sum(r.verdict == "held" for r in results)
    print(f"{path}: {held} of {len(results)} claims held")
    return 0
