"""Quality at equal wall time: the LSTM against the scan cells (minGRU, minLSTM, QRNN) as
language models, same data, same budget, same machine (issue 17).

    python benchmarks/scan_quality.py                      # tiny Shakespeare, 5 minutes
    python benchmarks/scan_quality.py --budgets char:5,char:30,word:60 --results FILE

Each run is ``rnnkit train lm --cell CELL --max-minutes M`` with every other option its
default: on the bundled tiny Shakespeare (``char``; the default run's model, 2 x 384, and its
validation split) or on WikiText-2 (``word``: ``--train wikitext-2/train.txt --dev
wikitext-2/valid.txt --level word``, the word-level defaults, 2 x 512 with an adaptive
softmax). The defaults were tuned for the LSTM; the scan cells run them unchanged (say so
beside the table). Reported: the best validation loss (the checkpoint rnnkit keeps, chosen
on the validation set), nats/char or perplexity, the steps and the median training tokens
per second the run logged, its parameters, and its loss at each quarter of the budget.
Runs one after the other, nothing beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from rnnkit import gemm
from rnnkit.cli import main as rnnkit
from rnnkit.tasks.lm import load_lm

ROOT = Path(__file__).resolve().parents[1]
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2"
CELLS = ("lstm", "scan-gru", "scan-lstm", "qrnn")


def _budgets(text: str) -> list[tuple[str, float]]:
    out = []
    for part in text.split(","):
        level, _, minutes = part.partition(":")
        if level not in ("char", "word") or not minutes:
            raise argparse.ArgumentTypeError(f"a budget is char:MINUTES or word:MINUTES, got "
                                             f"{part!r}")
        out.append((level, float(minutes)))
    return out


def train(cell: str, level: str, minutes: float, out: Path, threads: int) -> dict:
    """One run; what its log says."""
    argv = ["train", "lm", "--cell", cell, "--max-minutes", str(minutes), "--out", str(out),
            "--overwrite", "--no-progress", "--sample-length", "0", "--threads", str(threads)]
    if level == "word":
        argv += ["--train", str(WIKITEXT / "train.txt"), "--dev", str(WIKITEXT / "valid.txt"),
                 "--level", "word"]
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err):
        if rnnkit(argv) != 0:
            raise RuntimeError(err.getvalue()[-2000:])
    seconds = time.perf_counter() - start
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if r["kind"] == "eval"]
    speeds = [r["tokens_per_s"] for r in log if r["kind"] == "train" and r["step"] > 1]
    params = sum(p.numel() for p in load_lm(out)[0].parameters())
    quarters = []
    for q in (0.25, 0.5, 0.75):  # the loss of the last evaluation before each quarter
        before = [r for r in evals if r.get("seconds", 0) <= q * 60 * minutes]
        quarters.append(before[-1]["loss"] if before else math.nan)
    return {"cell": cell, "best": min(r["loss"] for r in evals), "steps": evals[-1]["step"],
            "tokens_per_s": statistics.median(speeds) if speeds else math.nan,
            "parameters": params, "quarters": quarters, "seconds": seconds}


def table(level: str, minutes: float, rows: list[dict], threads: int) -> str:
    unit = "nats/char" if level == "char" else "perplexity"

    def show(loss: float) -> str:
        if math.isnan(loss):
            return "-"
        return f"{loss:.4f}" if level == "char" else f"{math.exp(loss):.1f}"

    data = "tiny Shakespeare (bundled)" if level == "char" else "WikiText-2"
    lines = [f"{data}, {minutes:g} minutes a model, {threads} threads, "
             f"{time.strftime('%Y-%m-%d')}, {gemm.machine()}; best validation {unit} "
             "(the checkpoint kept); every option the default but `--cell`", "",
             f"| cell | best validation {unit} | at 1/4, 1/2, 3/4 of the budget | steps | "
             "tokens/s | parameters |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['cell']} | {show(r['best'])} | "
                     f"{', '.join(show(q) for q in r['quarters'])} | {r['steps']:,} | "
                     f"{r['tokens_per_s']:,.0f} | {r['parameters']:,} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", type=_budgets, default=[("char", 5.0)],
                   help="comma-separated char:MINUTES / word:MINUTES (default char:5)")
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="keep the runs here (default: a temporary "
                                               "folder)")
    p.add_argument("--results", metavar="FILE", help="append the tables to FILE")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(gemm.describe(), file=sys.stderr)
    out = Path(args.out or tempfile.mkdtemp(prefix="scan-quality-"))
    tables = []
    for level, minutes in args.budgets:
        rows = []
        for cell in args.cells.split(","):
            r = train(cell, level, minutes, out / f"{level}-{minutes:g}-{cell}", args.threads)
            rows.append(r)
            print(f"{level} {minutes:g} min {cell}: best {r['best']:.4f} at {r['steps']} "
                  f"steps, {r['tokens_per_s']:,.0f} tok/s", file=sys.stderr, flush=True)
        tables.append(table(level, minutes, rows, args.threads))
        print(tables[-1], flush=True)
    if args.results:
        with open(args.results, "a", encoding="utf-8") as f:
            f.write("\n" + "\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
