"""Language-model quality and speed on CPU (issue 3).

    python benchmarks/lm_quality.py                              # every part (about 95 minutes)
    python benchmarks/lm_quality.py --parts throughput,generation --repeats 3   # a quick check
    python benchmarks/lm_quality.py --parts shakespeare --minutes 30 --results benchmarks/RESULTS.md

Parts (``--parts``, comma-separated; default all), each on ``--threads`` threads (default 2):

- ``shakespeare``: ``rnnkit train lm`` on tiny Shakespeare, characters, 90/10 split, for
  ``--minutes`` (30); target: validation loss <= 1.50 nats/char;
- ``wikitext``: ``rnnkit train lm`` on WikiText-2, words, for ``--wikitext-minutes`` (60);
  target: validation perplexity <= 150;
- ``throughput``: training tokens/s of one LM built on rnnkit layers and on torch.nn.LSTM, same
  loop, same process, interleaved repeats, medians; target: rnnkit / torch.nn >= 0.95; and
  the word LMs of issue 15 against the code before it (target >= 1.7x), in one process and
  as the command runs (its malloc settings, ``rnnkit.allocator``), a process each;
- ``generation``: ms per token at batch 1 for a 2 x 650 LSTM with 10,000 words:
  ``LanguageModel.step`` against torch.nn.LSTM called one step at a time (target: <= 0.6x),
  and against the strongest plain loop a user would write: the LSTM's weights pre-transposed
  once, one ``addmm`` per layer and token under ``torch.inference_mode()`` (target <= 1.0x);
  and the scan cells' models of the same sizes (the QRNN with window 2 and with window 1)
  against rnnkit's LSTM step (issue 17: <= 0.7x).

Quality parts train through the command line (``--max-minutes``) and score the validation file
with ``rnnkit evaluate --json``; their run directories go to ``--out`` (default
``runs/bench-lm``). Prints a Markdown table; ``--results FILE`` appends it to FILE.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PARTS = ("shakespeare", "wikitext", "throughput", "generation")

# tiny Shakespeare for 30 minutes on 2 cores: a 3 x 512 LSTM with dropout, about 8 epochs
SHAKESPEARE = ["--level", "char", "--num-layers", "3", "--hidden-size", "512",
               "--embedding-size", "128",
               "--dropout", "0.25", "--output-dropout", "0.25", "--batch-size", "32",
               "--bptt", "128", "--lr", "3e-3", "--schedule", "cosine", "--warmup", "100",
               "--min-lr-ratio", "0.02", "--clip", "1.0", "--eval-every", "1000"]
# WikiText-2 for 60 minutes on 2 cores: the word-level defaults of rnnkit train lm (2 x 512
# LSTM, adaptive softmax over the 33,278 words, dropout, AdamW with cosine decay; see
# rnnkit.tasks.lm.WORD_DEFAULTS), which are this benchmark's configuration: what a user who
# gives only the data and a time budget gets
WIKITEXT = ["--level", "word"]


def _cli(argv: list[str]) -> tuple[int, str]:
    from rnnkit.cli import main

    print("rnnkit " + " ".join(argv), file=sys.stderr, flush=True)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    return rc, buf.getvalue()


def quality(name: str, args: argparse.Namespace) -> list[dict]:
    """Train through ``rnnkit train lm`` for the part's minutes, evaluate the validation file."""
    out = Path(args.out) / name
    if name == "shakespeare":
        data = ["--train", str(DATA / "tinyshakespeare" / "input.txt"), "--dev-fraction",
                "0.1"]
        extra, minutes, metric, target = SHAKESPEARE, args.minutes, "loss", 1.50
    else:
        data = ["--train", str(DATA / "wikitext-2" / "train.txt"), "--dev",
                str(DATA / "wikitext-2" / "valid.txt")]
        extra, minutes, metric, target = WIKITEXT, args.wikitext_minutes, "perplexity", 150.0
    if not (DATA / ("tinyshakespeare" if name == "shakespeare" else "wikitext-2")).is_dir():
        return [{"part": name, "value": "skipped: data not found", "target": "", "ok": ""}]
    start = time.monotonic()
    rc, text = _cli(["train", "lm", *data, *extra, "--out", str(out), "--overwrite",
                     "--max-minutes", str(minutes), "--epochs", "1000", "--threads",
                     str(args.threads), "--seed", str(args.seed), "--no-progress",
                     "--sample-length", "0"])
    seconds = time.monotonic() - start
    if rc != 0:
        return [{"part": name, "value": f"training failed (exit {rc})", "target": "", "ok": "no"}]
    config = json.loads((out / "config.json").read_text())
    if config["data"].get("valid"):
        valid = config["data"]["valid"]
    else:  # the held-out last 10% of the training file, as training saw it
        text_all = (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
        valid_path = out / "valid.txt"
        valid_path.write_text(text_all[int(len(text_all) * 0.9):], encoding="utf-8")
        valid = str(valid_path)
    rc, text = _cli(["evaluate", str(out), "--data", valid, "--json"])
    metrics = json.loads(text.strip().splitlines()[-1])
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = max((r["step"] for r in logs if r["kind"] == "train"), default=0)
    value = metrics[metric]
    unit = "nats/char" if metric == "loss" else "ppl"
    return [{"part": f"{name}: validation {metric}", "value": f"{value:.3f} {unit}",
             "target": f"<= {target}", "ok": "yes" if value <= target else "no",
             "note": f"{steps} steps, {seconds / 60:.1f} min incl. evaluation, "
                     f"{args.threads} threads"}]


# -- throughput: the same LM on rnnkit layers and on torch.nn.LSTM ----------------------------
class TorchLM(nn.Module):
    """Embedding -> torch.nn.LSTM -> linear decoder: the reference for the throughput part."""

    def __init__(self, vocab: int, emb: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        self.rnn = nn.LSTM(emb, hidden, layers, batch_first=True, dropout=dropout)
        self.decoder = nn.Linear(hidden, vocab)

    def loss(self, x, y, state=None):
        h, state = self.rnn(self.embedding(x), state)
        logits = self.decoder(h.reshape(-1, h.shape[-1]))
        return nn.functional.cross_entropy(logits, y.reshape(-1)), state


class UnfusedLoss(nn.Module):
    """A rnnkit LM's loss as it was before ``rnnkit.losses``: the (B T, V) logits made whole,
    then ``F.cross_entropy``; an adaptive softmax's by the forward of its
    ``nn.AdaptiveLogSoftmaxWithLoss`` (each cluster's log-softmax made whole)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def loss(self, x, y, state=None):
        if self.model.adaptive is not None:
            h, state = self.model.features(x, state)
            flat = y.reshape(-1)
            keep = flat != -100
            return self.model.adaptive(h.reshape(-1, h.shape[-1])[keep], flat[keep]).loss, state
        out = self.model(x, state)
        logits = out.logits.reshape(-1, out.logits.shape[-1])
        return nn.functional.cross_entropy(logits, y.reshape(-1), ignore_index=-100), out.state


def _train_rate(model: nn.Module, batches: list, steps: int, fused: bool = False) -> float:
    """Tokens per second of ``steps`` training steps (stateful, clipped, AdamW; torch's fused
    AdamW with ``fused``, as the ``rnnkit`` command's ``build_optimizer`` picks on the CPU)."""
    from rnnkit.layers import detach_states

    opt = torch.optim.AdamW(model.parameters(), 1e-3, fused=fused or None)
    state = None
    x, y = batches[0]
    loss, state = model.loss(x, y, state)  # warm-up
    loss.backward()
    opt.zero_grad()
    state = None
    start = time.perf_counter()
    for i in range(steps):
        x, y = batches[i % len(batches)]
        loss, state = model.loss(x, y, state)
        state = detach_states(state)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return steps * x.numel() / (time.perf_counter() - start)


def throughput(args: argparse.Namespace) -> list[dict]:
    """rnnkit's LM against the same model on torch.nn.LSTM (a char model and a small word
    model), and the GEMM layer's gain: rnnkit's word LM (2 x 384 LSTM, 33,278 words, 32 x 64
    tokens a step) with its full softmax, adaptive softmax and tied decoder, each against
    itself with every product on ATen (``RNNKIT_GEMM=aten``), interleaved; and each against
    the code before issue 15 as the ``rnnkit`` command runs them, a process each: with
    :mod:`rnnkit.allocator`'s malloc settings against glibc's own."""
    from rnnkit import gemm
    from rnnkit.models.lm import LanguageModel, LMConfig

    rows = []
    # (vocab, embedding, hidden, layers, batch, bptt): a char model and a small word model
    for V, E, H, L, B, T in ((67, 64, 384, 2, 32, 64), (10000, 200, 200, 2, 20, 35)):
        torch.manual_seed(0)
        ours = LanguageModel(LMConfig(vocab_size=V, embedding_size=E, hidden_size=H,
                                      num_layers=L, dropout=0.1))
        ref = TorchLM(V, E, H, L, 0.1)
        g = torch.Generator().manual_seed(0)
        batches = [(torch.randint(0, V, (B, T), generator=g),
                    torch.randint(0, V, (B, T), generator=g)) for _ in range(4)]
        r_ours, r_ref = [], []
        for _ in range(args.repeats):  # interleaved
            r_ours.append(_train_rate(ours, batches, args.steps))
            r_ref.append(_train_rate(ref, batches, args.steps))
        a, b = statistics.median(r_ours), statistics.median(r_ref)
        rows.append({"part": f"throughput V={V} {L}x{H} B={B} T={T}",
                     "value": f"{a:,.0f} vs {b:,.0f} tok/s = {a / b:.3f}x", "target": ">= 0.95",
                     "ok": "yes" if a / b >= 0.95 else "no",
                     "note": f"median of {args.repeats} x {args.steps} steps"})
    steps = max(3, args.steps // 4)
    V, H, B, T = WORD_SHAPE
    for name in WORD_LMS:
        model, batches = _word_lm(name)
        unfused = UnfusedLoss(model)
        fast, logits_whole, plain = [], [], []
        for _ in range(args.repeats):  # interleaved
            fast.append(_train_rate(model, batches, steps))
            logits_whole.append(_train_rate(unfused, batches, steps))
            with gemm.forced("aten"):
                plain.append(_train_rate(unfused, batches, steps))
        a, u, b = (statistics.median(x) for x in (fast, logits_whole, plain))
        note = f"median of {args.repeats} x {steps} steps"
        rows.append({"part": f"word LM V={V} 2x{H} B={B} T={T}, {name}: rnnkit against "
                             "itself before issue 15 (ATen, whole logits)",
                     "value": f"{a:,.0f} vs {b:,.0f} tok/s = {a / b:.2f}x",
                     "target": ">= 1.7", "ok": "yes" if a / b >= 1.7 else "no",
                     "note": note})
        whole = ("nn.AdaptiveLogSoftmaxWithLoss's forward" if name.startswith("adaptive")
                 else "whole logits")
        rows.append({"part": f"word LM V={V} 2x{H} B={B} T={T}, {name}: the chunked "
                             f"decoder + cross-entropy against {whole} (both on the "
                             "GEMM layer)",
                     "value": f"{a:,.0f} vs {u:,.0f} tok/s = {a / u:.2f}x",
                     "target": "measured", "ok": "-", "note": note})
        # the same against the code before issue 15 as each runs as a command: this one with
        # rnnkit.allocator's settings, the old one with the C library's (processes of their
        # own, interleaved: malloc's settings are the process's)
        now, before = [], []
        for _ in range(args.repeats):
            now.append(_child_rate(name, "now", steps, args.threads))
            before.append(_child_rate(name, "before", steps, args.threads))
        a, b = statistics.median(now), statistics.median(before)
        rows.append({"part": f"word LM V={V} 2x{H} B={B} T={T}, {name}: as the rnnkit command "
                             "runs it (rnnkit.allocator, fused AdamW) against the code before "
                             "issue 15 (ATen, whole logits, glibc's malloc settings)",
                     "value": f"{a:,.0f} vs {b:,.0f} tok/s = {a / b:.2f}x",
                     "target": ">= 1.7", "ok": "yes" if a / b >= 1.7 else "no",
                     "note": f"median of {args.repeats} x {steps} steps, a process each"})
    return rows


#: the word LMs of the throughput part (2 x 384 LSTM, 33,278 words, 32 x 64 tokens a step)
WORD_LMS = {"full softmax": {}, "adaptive 2000,10000": {"adaptive_cutoffs": [2000, 10000]},
            "tied": {"tie_weights": True}}
#: their vocabulary, hidden size, batch and steps
WORD_SHAPE = (33_278, 384, 32, 64)


def _word_lm(name: str):
    """The word LM ``name`` of :data:`WORD_LMS` (seed 0) and its two batches."""
    from rnnkit.models.lm import LanguageModel, LMConfig

    V, H, B, T = WORD_SHAPE
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, V, (B, T), generator=g),
                torch.randint(0, V, (B, T), generator=g)) for _ in range(2)]
    torch.manual_seed(0)
    model = LanguageModel(LMConfig(vocab_size=V, embedding_size=H, hidden_size=H, num_layers=2,
                                   dropout=0.1, **WORD_LMS[name]))
    return model, batches


def _child_rate(name: str, variant: str, steps: int, threads: int) -> float:
    """Tokens per second of the word LM ``name`` in a fresh process: ``variant`` "now" (with
    rnnkit.allocator's settings and the fused AdamW the command's trainer uses) or "before"
    (ATen, whole logits, the C library's settings, the Python step loops past batch x hidden
    = 512, torch's default AdamW)."""
    out = subprocess.run([sys.executable, __file__, "--child", f"{name}|{variant}", "--steps",
                          str(steps), "--threads", str(threads)], capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _child(spec: str, steps: int) -> float:
    name, variant = spec.split("|")
    from rnnkit import allocator, gemm

    if variant == "now":
        allocator.keep_freed_memory()
    model, batches = _word_lm(name)
    if variant == "now":
        return _train_rate(model, batches, steps, fused=True)
    from rnnkit.engines.kernels import base

    # the compiled loops' reach before issue 15: batch x hidden <= 512 both ways (the word
    # LM's 32 x 384 ran the Python loops)
    base.FUSED_FORWARD_MAX = base.FUSED_MAX = base.FUSED_LN_MAX = 512
    with gemm.forced("aten"):
        return _train_rate(UnfusedLoss(model), batches, steps)


# -- generation latency -------------------------------------------------------------------------
def _torch_step_latency(emb, lstm, dec, tokens: int) -> float:
    state = None
    tok = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(tokens):
            h, state = lstm(emb(tok), state)
            logits = dec(h[:, -1])
            tok = logits.argmax(-1, keepdim=True)
    return (time.perf_counter() - start) / tokens


def _cells_step_latency(emb, lstm, dec, tokens: int) -> float:
    """The strongest plain-PyTorch decoding loop: the LSTM's weights pre-transposed and
    concatenated once ([W_ih W_hh]^T per layer), one addmm and the gate arithmetic per layer
    and token, under ``torch.inference_mode()`` (no module calls, no autograd)."""
    L, H = lstm.num_layers, lstm.hidden_size
    with torch.inference_mode():
        weights = [torch.cat([getattr(lstm, f"weight_ih_l{k}"),
                              getattr(lstm, f"weight_hh_l{k}")], 1).t().contiguous()
                   for k in range(L)]
        biases = [getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}")
                  for k in range(L)]
        dec_t, table = dec.weight.t().contiguous(), emb.weight
        h = [torch.zeros(1, H) for _ in range(L)]
        c = [torch.zeros(1, H) for _ in range(L)]
        tok = 0
        start = time.perf_counter()
        for _ in range(tokens):
            x = table[tok:tok + 1]
            for k in range(L):
                gates = torch.addmm(biases[k], torch.cat([x, h[k]], 1), weights[k])
                i, f, g, o = gates.chunk(4, 1)
                c[k] = torch.sigmoid(f) * c[k] + torch.sigmoid(i) * torch.tanh(g)
                h[k] = torch.sigmoid(o) * torch.tanh(c[k])
                x = h[k]
            logits = torch.addmm(dec.bias, x, dec_t)
            tok = int(logits.argmax())
    return (time.perf_counter() - start) / tokens


def _rnnkit_step_latency(model, tokens: int) -> float:
    state = None
    tok = torch.zeros(1, dtype=torch.long)
    start = time.perf_counter()
    for _ in range(tokens):
        logits, state = model.step(tok, state)
        tok = logits.argmax(-1)
    return (time.perf_counter() - start) / tokens


SCAN_CELLS = ("scan-gru", "scan-lstm", "qrnn")
#: the models of the generation part: name -> (cell, cell options); the QRNN also with
#: window 1 (0.68 of the LSTM's weight bytes a token against window 2's 0.87)
SCAN_MODELS = {**{cell: (cell, {}) for cell in SCAN_CELLS}, "qrnn window 1": ("qrnn",
                                                                         {"window": 1})}


def generation(args: argparse.Namespace) -> list[dict]:
    from rnnkit.models.lm import LanguageModel, LMConfig

    V, E, H, L = 10000, 650, 650, 2
    torch.manual_seed(0)
    model = LanguageModel(LMConfig(vocab_size=V, embedding_size=E, hidden_size=H,
                                   num_layers=L)).eval()
    emb, lstm, dec = nn.Embedding(V, E), nn.LSTM(E, H, L, batch_first=True), nn.Linear(H, V)
    for m in (emb, lstm, dec):
        m.eval()
    # the scan cells' models: the same sizes, embedding and decoder (issue 17's target)
    scans = {}
    for name, (cell, options) in SCAN_MODELS.items():
        torch.manual_seed(0)
        scans[name] = LanguageModel(LMConfig(vocab_size=V, embedding_size=E, hidden_size=H,
                                             num_layers=L, cell=cell,
                                             cell_options=options)).eval()
    _rnnkit_step_latency(model, 20)
    _torch_step_latency(emb, lstm, dec, 20)
    _cells_step_latency(emb, lstm, dec, 20)
    for m in scans.values():
        _rnnkit_step_latency(m, 20)
    ours, ref, cells = [], [], []
    scan_times: dict[str, list[float]] = {cell: [] for cell in scans}
    for _ in range(args.repeats):  # interleaved
        ours.append(_rnnkit_step_latency(model, args.tokens))
        ref.append(_torch_step_latency(emb, lstm, dec, args.tokens))
        cells.append(_cells_step_latency(emb, lstm, dec, args.tokens))
        for cell, m in scans.items():
            scan_times[cell].append(_rnnkit_step_latency(m, args.tokens))
    a, b, c = (statistics.median(x) * 1e3 for x in (ours, ref, cells))
    note = f"median of {args.repeats} x {args.tokens} tokens"
    rows = []
    for cell, times in scan_times.items():
        s = statistics.median(times) * 1e3
        rows.append({"part": f"generation 2x650 {cell}, V=10k, batch 1: vs rnnkit's LSTM step "
                             "path", "value": f"{s:.2f} vs {a:.2f} ms/token = {s / a:.3f}x",
                     "target": "<= 0.7", "ok": "yes" if s / a <= 0.7 else "no",
                     "note": note})
    lstm_rows = [
        {"part": "generation 2x650 LSTM, V=10k, batch 1: vs torch.nn.LSTM module per token",
         "value": f"{a:.2f} vs {b:.2f} ms/token = {a / b:.3f}x", "target": "<= 0.6",
         "ok": "yes" if a / b <= 0.6 else "no", "note": note},
        {"part": "generation 2x650 LSTM, V=10k, batch 1: vs the plain-PyTorch cell loop "
                 "(pre-transposed weights, inference_mode)",
         "value": f"{a:.2f} vs {c:.2f} ms/token = {a / c:.3f}x", "target": "<= 1.0",
         "ok": "yes" if a / c <= 1.0 else "no", "note": note}]
    return lstm_rows + rows

def table(rows: list[dict], args: argparse.Namespace) -> str:
    from rnnkit import gemm

    lines = [f"### Language models (`benchmarks/lm_quality.py`, torch "
             f"{torch.__version__}, {args.threads} threads)", "", f"Machine: {gemm.describe()}",
             "",
             "| part | result | target | met | notes |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['part']} | {r['value']} | {r['target']} | {r['ok']} | "
                     f"{r.get('note', '')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=30.0,
                        help="tiny Shakespeare training budget")
    parser.add_argument("--wikitext-minutes", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timing repeats")
    parser.add_argument("--steps", type=int, default=20, help="training steps per repeat")
    parser.add_argument("--tokens", type=int, default=200, help="generated tokens per repeat")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench-lm")
    parser.add_argument("--results", metavar="FILE", help="append the table to FILE")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one measurement, in its process
    args = parser.parse_args(argv)
    if args.child:
        torch.set_num_threads(args.threads)
        print(_child(args.child, args.steps))
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    for part in parts:
        if part in ("shakespeare", "wikitext"):
            rows += quality(part, args)
        elif part == "throughput":
            rows += throughput(args)
        else:
            rows += generation(args)
        print(table(rows, args), file=sys.stderr, flush=True)
    out = table(rows, args)
    print(out)
    if args.results:
        with open(args.results, "a", encoding="utf-8") as f:
            f.write("\n" + out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
