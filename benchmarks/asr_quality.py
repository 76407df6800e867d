"""Speech recognition on connected digits (FSDD): dev WER of a bidirectional and a streaming
model, isolated-digit accuracy, real-time factor, streaming latency.

    python benchmarks/asr_quality.py                          # 30 + 30 minutes of training
    python benchmarks/asr_quality.py --minutes 15 --results benchmarks/RESULTS.md
    python benchmarks/asr_quality.py --train-args "--average-best 5"   # more training options
    python benchmarks/asr_quality.py --isolated-train --select-on-isolated \
        --train-args "--cell qrnn --average-best 5"     # the isolated-digit target's recipe

1. ``rnnkit prepare-digits ../shared/data/fsdd`` (3,000 training and 300 dev utterances of 1-7
   digits; dev from recording indices 5-9, training from 10-49);
2. ``rnnkit train asr`` with the defaults (3 x 256 bidirectional LSTM, CTC) and speed
   perturbation (``--speed-perturb 0.9 1.0 1.1``) for ``--minutes``, best checkpoint by dev
   WER (with ``--select-on-isolated``, by the WER of the dev strings and the isolated dev
   recordings together: ``digits/dev-both.tsv``, both dev splits); then the same with
   ``--unidirectional`` (streaming);
3. the transcripts' character LM (``rnnkit train lm --train digits/train.txt --dev
   digits/dev.txt --level char --num-layers 1 --hidden-size 128 --max-minutes 2``);
4. ``rnnkit evaluate`` of both models on dev, greedy, ``--beam 8`` and ``--beam 8 --lm LM
   --lm-weight 1.0`` (the weight chosen on dev), each beam also with ``--lexicon
   digits/train.txt`` (the training transcripts' words the only ones written), and on the
   isolated dev recordings (greedy, beam 8 + LM, beam 8 + lexicon); the real-time factor on
   one thread (reading, features, model and decoding included; after one untimed pass, so
   that the once-per-machine GEMM measurement of rnnkit.gemm is not in it);
5. the streaming model's latency: each dev file read 100 ms at a time, the seconds each chunk
   takes (features, model, decoder), median and 99th percentile; the model's output delay
   (``--delay``, 300 ms by default) comes on top.

Targets (issue 16): connected-digit dev WER at most 1.5% (greedy and beam), isolated-digit
accuracy at least 98%, real-time factor at most 0.01 on one core, streaming WER within 1.5x of
the bidirectional model's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import sys
from pathlib import Path

import torch

from rnnkit import gemm
from rnnkit.cli import main as rnnkit

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "fsdd"
SPEEDS = ("0.9", "1.0", "1.1")  # Kaldi's speed perturbation of the training audio


def _call(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = rnnkit(argv)
    if rc != 0:
        raise SystemExit(f"rnnkit {' '.join(argv)} failed ({rc})")
    return out.getvalue()


def evaluate(run: Path, manifest: Path, threads: int, *extra: str) -> dict:
    return json.loads(_call(["evaluate", str(run), "--data", str(manifest), "--json",
                             "--threads", str(threads), *extra]))


def stream_latency(run: Path, manifest: Path, files: int) -> tuple[float, float]:
    from rnnkit.data.audio import read_manifest
    from rnnkit.tasks import asr

    model, _ = asr.load(run)
    times = []
    for u in read_manifest(manifest)[:files]:
        times += [seconds for _, seconds in asr.stream(model, u.audio, 100.0)]
    times.sort()
    return 1e3 * times[len(times) // 2], 1e3 * times[int(0.99 * (len(times) - 1))]


def _both_dev_splits(sets: Path) -> Path:
    """``dev-both.tsv`` beside the sets: the dev strings' rows, then the isolated dev
    recordings' (one header; both manifests' paths are relative to the same folder)."""
    both = sets / "dev-both.tsv"
    strings = (sets / "dev.tsv").read_text(encoding="utf-8").splitlines()
    isolated = (sets / "dev-isolated.tsv").read_text(encoding="utf-8").splitlines()
    both.write_text("\n".join(strings + isolated[1:]) + "\n", encoding="utf-8")
    return both


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DATA), help="the FSDD folder")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-asr"))
    p.add_argument("--minutes", type=float, default=30.0, help="training time per model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-train", action="store_true", help="use the runs in --out")
    p.add_argument("--results", help="append the Markdown table to this file")
    p.add_argument("--train-args", default="", metavar="ARGS",
                   help="more options for both `rnnkit train asr` commands, one string "
                        "(e.g. \"--average-best 5\")")
    p.add_argument("--isolated-train", action="store_true",
                   help="build the training set with `prepare-digits --isolated-train`")
    p.add_argument("--select-on-isolated", action="store_true",
                   help="choose each model's checkpoint on the dev strings and the isolated "
                        "dev recordings together (digits/dev-both.tsv) instead of the strings "
                        "alone")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = gemm.describe()
    out = Path(args.out)
    sets = out / "digits"
    if not (sets / "dev-isolated.tsv").exists():
        _call(["prepare-digits", args.data, "--out", str(sets)]
              + (["--isolated-train"] if args.isolated_train else []))
    select = sets / "dev.tsv"
    if args.select_on_isolated:
        select = _both_dev_splits(sets)
    runs = {"bidirectional": out / "bi", "streaming": out / "uni"}
    fusion = ("--beam", "8", "--lm", str(out / "charlm"), "--lm-weight", "1.0")
    lexicon = ("--lexicon", str(sets / "train.txt"))  # a closed vocabulary: training's words
    decodes = {"greedy": (), "beam": ("--beam", "8"), "beam + LM": fusion,
               "beam + lexicon": ("--beam", "8", *lexicon),
               "beam + lexicon + LM": (*fusion, *lexicon)}
    labels = {"greedy": "greedy", "beam": "beam 8", "beam + LM": "beam 8 + char LM",
              "beam + lexicon": "beam 8 + lexicon",
              "beam + lexicon + LM": "beam 8 + lexicon + char LM"}
    if not args.skip_train:
        for name, run in runs.items():
            extra = ["--unidirectional"] if name == "streaming" else []
            _call(["train", "asr", "--train", str(sets / "train.tsv"), "--dev",
                   str(select), "--max-minutes", str(args.minutes), "--threads",
                   str(args.threads), "--out", str(run), "--overwrite", "--no-progress",
                   "--log-every", "50", "--speed-perturb", *SPEEDS, *extra,
                   *shlex.split(args.train_args)])
        _call(["train", "lm", "--train", str(sets / "train.txt"), "--dev", str(sets / "dev.txt"),
               "--level", "char", "--num-layers", "1", "--hidden-size", "128", "--max-minutes",
               "2", "--threads", str(args.threads), "--out", str(out / "charlm"), "--overwrite",
               "--no-progress"])
    res = {}
    for name, run in runs.items():
        res[name] = {key: evaluate(run, sets / "dev.tsv", args.threads, *extra)
                     for key, extra in decodes.items()}
    bi = runs["bidirectional"]
    isolated = {name: {key: evaluate(run, sets / "dev-isolated.tsv", args.threads,
                                     *decodes[key])
                       for key in ("greedy", "beam + LM", "beam + lexicon")}
                for name, run in runs.items()}
    # on one thread, after one untimed pass: the first use of a thread count on a machine
    # measures and caches its GEMM choices (rnnkit.gemm), once, inside the decode it times
    evaluate(bi, sets / "dev-isolated.tsv", 1)
    rtf = evaluate(bi, sets / "dev.tsv", 1)["real_time_factor"]
    torch.set_num_threads(1)
    median_ms, p99_ms = stream_latency(runs["streaming"], sets / "dev.tsv", 50)
    uni = json.loads((runs["streaming"] / "config.json").read_text())["model"]
    delay_ms = uni["delay"] * uni["subsample"] * uni["features"]["hop_ms"]
    wer_bi, wer_uni = res["bidirectional"]["greedy"]["wer"], res["streaming"]["greedy"]["wer"]
    rows = [
        *((f"connected digits, dev WER, {labels[key]}", f"{100 * r['wer']:.2f}%", "<= 1.5%",
           r["wer"] <= 0.015) for key, r in res["bidirectional"].items()),
        *((f"isolated digits, dev accuracy, {labels[key]}",
           f"{100 * r['sentence_accuracy']:.2f}%", ">= 98%", r["sentence_accuracy"] >= 0.98)
          for key, r in isolated["bidirectional"].items()),
        # the streaming model against the same targets (the rows above are the bidirectional
        # model's): either model may be the one that meets them
        *((f"streaming model, connected digits, dev WER, {labels[key]}",
           f"{100 * res['streaming'][key]['wer']:.2f}%", "<= 1.5%",
           res["streaming"][key]["wer"] <= 0.015) for key in ("greedy", "beam")),
        *((f"streaming model, isolated digits, dev accuracy, {labels[key]}",
           f"{100 * r['sentence_accuracy']:.2f}%", ">= 98%", r["sentence_accuracy"] >= 0.98)
          for key, r in isolated["streaming"].items()),
        ("real-time factor, 1 thread, dev set", f"{rtf:.4f}", "<= 0.01", rtf <= 0.01),
        ("streaming model, dev WER, greedy", f"{100 * wer_uni:.2f}% "
         f"({wer_uni / max(wer_bi, 1e-9):.2f}x the bidirectional)", "<= 1.5x",
         wer_uni <= 1.5 * wer_bi),
        ("streaming latency per 100 ms chunk, 1 thread", f"median {median_ms:.2f} ms, "
         f"p99 {p99_ms:.2f} ms of compute, after an output delay of {delay_ms:g} ms",
         "measured", True),
    ]
    lines = [f"{machine}; {args.minutes:g} minutes of training per model, "
             f"{args.threads} threads (the real-time factor and latency on 1)"
             + (f"; training options: `{args.train_args}`" if args.train_args else "")
             + ("; isolated recordings in training" if args.isolated_train else "")
             + (f"; checkpoints chosen on `{select.name}`" if args.select_on_isolated else ""),
             "",
             "| measure | result | target | met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {'yes' if ok else 'no'} |" for a, b, c, ok in rows]
    detail = {name: {k: {m: v[m] for m in ("wer", "cer", "substitutions", "deletions",
                                           "insertions")} for k, v in r.items()}
              for name, r in res.items()}
    lines += ["", f"Operations: `{json.dumps(detail)}`"]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.results:
        with open(args.results, "a", encoding="utf-8") as f:
            f.write("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
