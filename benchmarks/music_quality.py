"""One-to-many quality: the share of well-formed ABC tunes a ConditionalLM writes, per tune type.

    python benchmarks/music_quality.py                  # 30 minutes of training, 2 threads
    python benchmarks/music_quality.py --minutes 2      # a quick check that it runs

Trains ``rnnkit train conditional-lm`` on ``../shared/data/nottingham_abc`` (the tune type from
the file name: jigs, reels, hpps, waltzes, ...) for ``--minutes``, then writes ``--per-type``
tunes of every type (temperature ``--temperature``, fixed seeds) and checks each with
``rnnkit.data.abc.check_abc`` (header X, M, K present; every bar agrees with the metre, pick-up
bars allowed at section boundaries). The same checker on the real tunes is the ceiling (it
accepts 99.5% of them). Also reports how often the generated metre is the type's usual one
(the most common metre of that type in the data), a sign that the condition is used.

Prints a Markdown table; ``--results`` appends it to a file, ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "nottingham_abc"

# the model and schedule are ``rnnkit train conditional-lm``'s defaults (rnnkit.tasks.conditional):
# 2 x 384 LSTM, 64-dim characters, a 32-dim label embedding, dropout 0.2, 16 tunes a batch,
# lr 2e-3 halved on plateaus; this measures what a user who gives only the data and a time
# budget gets
MODEL: list[str] = []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="training time (default 30)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--per-type", type=int, default=20, help="tunes generated per type")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-nottingham"))
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--skip-train", action="store_true", help="use an existing run in --out")
    p.add_argument("--results", help="append the Markdown table to this file")
    p.add_argument("--json", help="write the numbers to this JSON file")
    args = p.parse_args(argv)
    import torch

    from rnnkit.cli import main as rnnkit_main
    from rnnkit.data.abc import check_abc, parse_metre, read_abc_tunes
    from rnnkit.tasks.conditional import generate_tunes, load_run

    torch.set_num_threads(args.threads)
    from rnnkit import gemm

    print(f"# {gemm.describe()}", flush=True)  # the machine the numbers are true of
    if not Path(args.data).is_dir():
        print(f"Nottingham tunes not found in {args.data}", file=sys.stderr)
        return 1
    start = time.monotonic()
    if not args.skip_train:
        with contextlib.redirect_stdout(io.StringIO()):
            rc = rnnkit_main(["train", "conditional-lm", "--train", args.data, *MODEL,
                              "--max-minutes", str(args.minutes), "--threads",
                              str(args.threads), "--out", args.out, "--overwrite",
                              "--no-progress", "--log-every", "50"])
        if rc:
            return rc
    train_minutes = (time.monotonic() - start) / 60
    log = [json.loads(x) for x in (Path(args.out) / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if r.get("kind") == "eval"]
    best_bpc = min((r["bpc"] for r in evals), default=float("nan"))

    real = read_abc_tunes(args.data)
    usual: dict[str, str] = {}
    real_ok: dict[str, float] = {}
    for label in sorted({t.label for t in real}):
        tunes = [t for t in real if t.label == label]
        usual[label] = Counter(t.fields.get("M", "").strip() for t in tunes).most_common(1)[0][0]
        real_ok[label] = sum(check_abc(t.text).ok for t in tunes) / len(tunes)

    model, vocab = load_run(args.out)
    rows = []
    for i, label in enumerate(model.config.labels):
        tunes = generate_tunes(model, vocab, label, args.per_type, args.temperature,
                               seed=1000 + i)
        checks = [check_abc(t) for t in tunes]
        metres = [c for c in (parse_metre(_field(t, "M")) for t in tunes)]
        same = sum(m is not None and m == parse_metre(usual.get(label, "")) for m in metres)
        rows.append({"type": label, "tunes": len(tunes),
                     "well_formed": sum(c.ok for c in checks) / len(tunes),
                     "usual_metre": usual.get(label, "?"), "usual_metre_share": same / len(tunes),
                     "real_well_formed": real_ok.get(label, float("nan"))})
    total = sum(r["well_formed"] * r["tunes"] for r in rows) / sum(r["tunes"] for r in rows)
    table = ["| type | generated | well-formed | usual metre | with that metre | real tunes "
             "well-formed |", "|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['type']} | {r['tunes']} | {100 * r['well_formed']:.0f}% | "
                     f"{r['usual_metre']} | {100 * r['usual_metre_share']:.0f}% | "
                     f"{100 * r['real_well_formed']:.0f}% |")
    table.append(f"| all | {sum(r['tunes'] for r in rows)} | {100 * total:.0f}% | | | |")
    summary = (f"Nottingham ABC, ConditionalLM (2x384 LSTM), {train_minutes:.1f} min training on "
               f"{args.threads} threads, best validation {best_bpc:.3f} bits/char, temperature "
               f"{args.temperature}")
    text = "\n".join([f"### Conditional generation: well-formed ABC ({time.strftime('%Y-%m-%d')})",
                      "", summary, "", *table, ""])
    print(text)
    if args.results:
        with open(args.results, "a", encoding="utf-8") as f:
            f.write(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "well_formed": total,
                                               "train_minutes": train_minutes,
                                               "best_bpc": best_bpc}, indent=2))
    return 0


def _field(text: str, name: str) -> str:
    for line in text.split("\n"):
        if line.startswith(name + ":"):
            return line[2:]
    return ""


if __name__ == "__main__":
    sys.exit(main())
