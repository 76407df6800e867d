"""Translation quality: Multi30k German -> English, trained from scratch (no pretrained vectors).

    python benchmarks/translation_quality.py               # the benchmark: 85 min, 2 threads
    python benchmarks/translation_quality.py --minutes 2   # a quick check that it runs

Trains ``rnnkit train seq2seq`` on ``../shared/data/multi30k/train.{de,en}`` for ``--minutes``
(validation BLEU with greedy decoding after every epoch selects the best weights), then
scores the best weights on ``val.{de,en}`` with ``rnnkit evaluate --json``, greedy and with
beam search, and times the decoding (sentences per second, batches of 64, ``--threads``).

Target (issue 5): validation BLEU >= 25 with beam search within 90 minutes on 2 CPU cores
(a GRU encoder-decoder with attention in a popular tutorial: 28.3 on the 2016 test set). The
remaining ~5 minutes of the budget go to the subword model and the final decoding.

Prints a Markdown table; ``--results`` appends it to a file (e.g. benchmarks/RESULTS.md) and
``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "multi30k"

# the model and schedule are ``rnnkit train seq2seq``'s defaults (rnnkit.tasks.seq2seq), so this
# measures what a user who gives only the data and a time budget gets: a bidirectional 2-layer
# LSTM encoder (256 per direction), a 1-layer LSTM decoder (512) with Luong "general"
# attention, input feeding, tied decoder embeddings, a joint 8k sentencepiece vocabulary,
# dropout 0.3, label smoothing 0.1, 3,000 tokens a batch, Adam 2e-3 halved on plateaus, early
# stopping after 4 evaluations without gain
MODEL: list[str] = []


def _call(argv: list[str]) -> str:
    from rnnkit.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    if rc:
        raise SystemExit(f"rnnkit {' '.join(argv)} failed with status {rc}")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=85.0, help="training time (default 85)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-multi30k"))
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--results", help="append the Markdown table to this file")
    p.add_argument("--json", help="write the numbers to this JSON file")
    p.add_argument("--skip-train", action="store_true",
                   help="score an existing run in --out without training")
    p.add_argument("extra", nargs="*", help="more 'rnnkit train seq2seq' options, after --")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from rnnkit import gemm

    print(f"# {gemm.describe()}", flush=True)  # the machine the numbers are true of
    data = Path(args.data)
    if not (data / "train.de").is_file():
        print(f"Multi30k not found in {data}", file=sys.stderr)
        return 1
    start = time.monotonic()
    if not args.skip_train:
        _call(["train", "seq2seq", "--src", str(data / "train.de"), "--tgt",
               str(data / "train.en"), "--dev-src", str(data / "val.de"), "--dev-tgt",
               str(data / "val.en"), *MODEL, "--max-minutes", str(args.minutes),
               "--threads", str(args.threads), "--out", args.out, "--overwrite",
               "--no-progress", "--log-every", "100", *args.extra])
    train_minutes = (time.monotonic() - start) / 60
    log = [json.loads(x) for x in (Path(args.out) / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if r.get("kind") == "eval"]
    rows = []
    for beam in (1, args.beam):
        res = json.loads(_call(["evaluate", args.out, "--src", str(data / "val.de"), "--ref",
                                str(data / "val.en"), "--beam", str(beam), "--json"]))
        rows.append(res)
    total_minutes = (time.monotonic() - start) / 60
    table = ["| decoding | val BLEU | val chrF | sentences/s |", "|---|---|---|---|"]
    for r in rows:
        name = "greedy" if r["beam"] == 1 else f"beam {r['beam']}"
        table.append(f"| {name} | {r['bleu']:.2f} | {r['chrf']:.2f} | "
                     f"{r['sentences_per_second']:.1f} |")
    met = rows[-1]["bleu"] >= 25 and total_minutes <= 90
    summary = (f"Multi30k de-en, {len(evals)} evaluations, {train_minutes:.1f} min training, "
               f"{total_minutes:.1f} min in all, {args.threads} threads; target: beam BLEU "
               f">= 25 within 90 min: {'met' if met else 'not met'}")
    text = "\n".join([f"### Translation quality ({time.strftime('%Y-%m-%d')})", "", summary, "",
                      *table, ""])
    print(text)
    if args.results:
        with open(args.results, "a", encoding="utf-8") as f:
            f.write(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "train_minutes": train_minutes,
                                               "total_minutes": total_minutes,
                                               "evaluations": evals}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
