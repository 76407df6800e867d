"""rnnkit's LM defaults against the plain PyTorch loop a user would write (issue 14).

    python benchmarks/lm_defaults.py                         # 150 and 1,000 steps, 5 minutes
    python benchmarks/lm_defaults.py --steps 150 --no-minutes --seeds 1,2,3    # quick

The data: the first 60,000 characters of the bundled tiny Shakespeare to train on, its last
10,000 to validate on. ``rnnkit`` is ``rnnkit train lm --train A --dev B --level char
--num-layers 1 --hidden-size 64 --max-steps N --seed S`` (every other option its default);
``plain`` is ``nn.Embedding(V, 64)`` + ``nn.LSTM(64, 64)`` + dropout 0.1 + ``nn.Linear(64,
V)`` with torch's own initialisations, the same batches (32 streams x 64 characters, state
carried), AdamW (lr 2e-3, torch's weight decay 0.01), 50 linear warm-up steps then a cosine
decay to 5% over the N steps, clipping at 1. Both are scored by the same function
(``rnnkit.tasks.lm.evaluate_lm``, every validation character once). The 5-minute row runs
``rnnkit train lm`` with ``--max-minutes 5`` instead of ``--max-steps`` and gives the plain
loop the number of steps rnnkit reached. Prints a Markdown table (medians over the seeds);
``--results FILE`` appends it.
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
from torch import nn

from rnnkit import gemm
from rnnkit.cli import main
from rnnkit.data.lm import LMStreams
from rnnkit.data.text import build_vocab, bundled_shakespeare, encode
from rnnkit.layers.recurrent import detach_states
from rnnkit.tasks.lm import evaluate_lm

TRAIN_CHARS, VALID_CHARS = 60_000, 10_000


class Plain(nn.Module):
    """The model a user would write, with torch's default initialisations."""

    def __init__(self, vocab: int, size: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, size)
        self.lstm = nn.LSTM(size, size, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(size, vocab)

    def loss(self, inputs, targets, state=None, reduction="mean"):
        y, state = self.lstm(self.embedding(inputs), state)
        logits = self.decoder(self.drop(y))
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           targets.reshape(-1), ignore_index=-100,
                                           reduction=reduction)
        return loss, state


def train_plain(train_ids, valid_ids, vocab_size: int, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = Plain(vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    warmup, floor = 50, 0.05

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    streams = LMStreams.from_ids(train_ids, 32)
    step, state = 0, None
    model.train()
    while step < steps:
        for batch in streams.windows(64):
            if step >= steps:
                break
            loss, state = model.loss(batch.inputs, batch.targets, state)
            state = detach_states(state)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
        state = None
    with torch.no_grad():
        return evaluate_lm(model, valid_ids, batch_size=32, bptt=64)["loss"]


def train_rnnkit(train: Path, valid: Path, budget: list[str], seed: int, out: Path,
                 extra: list[str]) -> tuple[float, int]:
    """``rnnkit train lm`` with defaults; (the validation loss of its final weights, the steps
    it took). Its best checkpoint would be chosen on the set it is scored on; the plain loop
    has none, so both are scored at their last step."""
    argv = ["train", "lm", "--train", str(train), "--dev", str(valid), "--level", "char",
            "--num-layers", "1", "--hidden-size", "64", *budget, "--seed", str(seed),
            "--out", str(out), "--overwrite", "--no-progress", "--sample-length", "0", *extra]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        if main(argv) != 0:
            raise RuntimeError(err.getvalue()[-2000:])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if r["kind"] == "eval"]
    steps = max(r["step"] for r in log if "step" in r)
    return evals[-1]["loss"], steps  # the final weights, as the plain loop's


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    text = bundled_shakespeare()
    train_text, valid_text = text[:TRAIN_CHARS], text[-VALID_CHARS:]
    tmp = Path(tempfile.mkdtemp(prefix="lm-defaults-"))
    train, valid = tmp / "train.txt", tmp / "valid.txt"
    train.write_text(train_text, encoding="utf-8")
    valid.write_text(valid_text, encoding="utf-8")
    vocab = build_vocab(train_text, "char")
    train_ids, valid_ids = encode(train_text, vocab, "char"), encode(valid_text, vocab, "char")
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = args.rnnkit_options.split() if args.rnnkit_options else []
    budgets = [(f"{n} steps", ["--max-steps", str(n)]) for n in args.steps]
    if args.minutes:
        budgets.append((f"{args.minutes:g} minutes", ["--max-minutes", str(args.minutes)]))
    rows = []
    for name, budget in budgets:
        ours, plain, seconds, steps_seen = [], [], [], []
        for seed in seeds:
            start = time.perf_counter()
            loss, steps = train_rnnkit(train, valid, budget, seed, tmp / "run", extra)
            seconds.append(time.perf_counter() - start)
            ours.append(loss)
            steps_seen.append(steps)
            plain.append(train_plain(train_ids, valid_ids, len(vocab), steps, seed))
            print(f"{name} seed {seed}: rnnkit {loss:.4f} plain {plain[-1]:.4f} "
                  f"({steps} steps)", file=sys.stderr, flush=True)
        rows.append((name, statistics.median(steps_seen), statistics.median(ours),
                     statistics.median(plain), min(ours), max(ours), min(plain), max(plain)))
    lines = [f"LM defaults against the plain PyTorch loop, {time.strftime('%Y-%m-%d')}, "
             f"{gemm.machine()}, seeds "
             f"{args.seeds}; validation nats/char (median, [min, max] over the seeds)"
             + (f"; rnnkit options: `{args.rnnkit_options}`" if extra else ""), "",
             "| budget | steps | rnnkit | plain loop | rnnkit - plain |",
             "|---|---:|---:|---:|---:|"]
    for name, steps, a, b, a0, a1, b0, b1 in rows:
        lines.append(f"| {name} | {steps:.0f} | {a:.3f} [{a0:.3f}, {a1:.3f}] | {b:.3f} "
                     f"[{b0:.3f}, {b1:.3f}] | {a - b:+.3f} |")
    return "\n".join(lines) + "\n"


def main_(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")],
                        default=[150, 1000], help="step budgets (default 150,1000)")
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="also a time budget of this many minutes (default 5)")
    parser.add_argument("--no-minutes", dest="minutes", action="store_const", const=0.0)
    parser.add_argument("--seeds", default="1", help="comma-separated (default 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rnnkit-options", default="",
                        help="extra options of rnnkit train lm (to try a default)")
    parser.add_argument("--results", metavar="FILE", help="append the table to FILE")
    args = parser.parse_args(argv)
    table = run(args)
    print(table)
    if args.results:
        with open(args.results, "a", encoding="utf-8") as f:
            f.write("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main_())
