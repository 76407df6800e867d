"""rnnkit's CPU dropout against torch's, alone and inside a word LM's training step.

    python benchmarks/bench_dropout.py                 # both parts, 2 threads
    python benchmarks/bench_dropout.py --parts dropout --repeats 21

Part ``dropout``: forward + backward of one dropout (p = 0.3) at the activations of the
project's models, ``torch.nn.functional.dropout`` against ``rnnkit.layers.dropout.dropout``
(15 random bits an element), interleaved, median of repeats. Part ``step``: one training
step (loss, backward, clipping, fused AdamW, as ``rnnkit train lm`` runs it) of the WikiText-2
benchmark's models (2 x 512 LSTM and 3 x 512 QRNN with windows 2,1,1; 256-dim embeddings,
adaptive softmax 2,000 / 10,000, dropouts 0.3 / 0.1 / 0.3) on 32 x 70 tokens, with every
rnnkit dropout on each backend (``use_backend``), interleaved in one process. The tokens are
WikiText-2's first ones where ../shared/data has it (else Zipf-distributed draws: the adaptive
softmax's time depends on how many fall in its tail clusters).
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2" / "train.txt"
SHAPES = [(32, 70, 256), (32, 70, 512), (20, 35, 650), (64, 64, 512)]
MODELS = {"lstm 2 x 512": dict(cell="lstm", num_layers=2),
          "qrnn 3 x 512, windows 2,1,1": dict(cell="qrnn", num_layers=3, layer_cell_options=[
              {"window": 2}, {"window": 1}, {"window": 1}])}


def _median_ms(fns: dict, repeats: int) -> dict[str, float]:
    """Each function's median time in ms, the functions interleaved round by round."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def _tokens(n: int, vocab: int):
    import torch

    if DATA.is_file():
        from collections import Counter

        from rnnkit.data.vocab import Vocabulary

        words: list[str] = []
        with DATA.open(encoding="utf-8") as f:
            for line in f:
                words += [*line.split(), "<eos>"]
        ids = Vocabulary.build(Counter(words)).encode(words[:n])  # ids by frequency
        return ids.clamp(max=vocab - 1), "WikiText-2"
    g = torch.Generator().manual_seed(0)
    weights = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    return torch.multinomial(weights, n, replacement=True, generator=g), "Zipf draws"


def _fwd_bwd(f, x, g) -> None:
    import torch

    torch.autograd.grad(f(x, 0.3, training=True), x, g)


def _train_step(model, opt, x, y, backend: str) -> None:
    """One step as the trainer takes it, every rnnkit dropout on ``backend``."""
    import torch

    from rnnkit.layers.dropout import use_backend

    with use_backend(backend):
        loss, _ = model.loss(x, y, None)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    opt.step()


def part_dropout(repeats: int) -> None:
    import torch
    import torch.nn.functional as F

    from rnnkit.layers.dropout import dropout

    print("\n| activations (B, T, H) | torch ms | rnnkit ms | rnnkit / torch |\n"
          "|---|---:|---:|---:|")
    for shape in SHAPES:
        x = torch.randn(shape, requires_grad=True)
        g = torch.randn(shape)
        ms = _median_ms({"torch": partial(_fwd_bwd, F.dropout, x, g),
                         "rnnkit": partial(_fwd_bwd, dropout, x, g)}, repeats)
        print(f"| {shape} | {ms['torch']:.2f} | {ms['rnnkit']:.2f} | "
              f"{ms['rnnkit'] / ms['torch']:.3f} |", flush=True)


def part_step(repeats: int) -> None:
    import torch

    from rnnkit.models.lm import LanguageModel, LMConfig
    from rnnkit.training.task import TrainConfig, build_optimizer

    V, B, T = 33278, 32, 70
    ids, source = _tokens(B * (T + 1), V)
    ids = ids.view(B, T + 1)
    x, y = ids[:, :T].contiguous(), ids[:, 1:].contiguous()
    print(f"\nTraining step, {B} x {T} tokens of {source}, ms (median of {repeats}); "
          "tokens/s in brackets\n\n| model | parameters | torch dropout | rnnkit dropout | "
          "speed-up |\n|---|---:|---:|---:|---:|")
    for name, opts in MODELS.items():
        torch.manual_seed(0)
        model = LanguageModel(LMConfig(vocab_size=V, embedding_size=256, hidden_size=512,
                                       dropout=0.3, embedding_dropout=0.1, output_dropout=0.3,
                                       adaptive_cutoffs=[2000, 10000], **opts)).train()
        opt = build_optimizer(model, TrainConfig(lr=1e-3))
        ms = _median_ms({b: partial(_train_step, model, opt, x, y, b)
                         for b in ("torch", "rnnkit")}, repeats)
        n = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {n:,} | {ms['torch']:.1f} ({B * T / ms['torch'] * 1e3:,.0f}) | "
              f"{ms['rnnkit']:.1f} ({B * T / ms['rnnkit'] * 1e3:,.0f}) | "
              f"{ms['torch'] / ms['rnnkit']:.3f}x |", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="dropout,step", help="dropout, step, or both")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=11)
    args = p.parse_args(argv)
    parts = args.parts.split(",")
    if any(k not in ("dropout", "step") for k in parts):
        p.error("--parts: dropout, step, or both (comma-separated)")
    import torch

    from rnnkit import gemm

    torch.set_num_threads(args.threads)
    print(f"# {gemm.describe()}", flush=True)  # the machine the numbers are true of
    if "dropout" in parts:
        part_dropout(args.repeats)
    if "step" in parts:
        part_step(args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
