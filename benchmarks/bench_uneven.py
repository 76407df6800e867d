"""Stacks over sequences of unequal lengths: rnnkit against torch.nn.LSTM on the same packed input.

    python benchmarks/bench_uneven.py                 # the shapes below, 2 threads
    python benchmarks/bench_uneven.py --repeats 3 --threads 1

Every task but the language model trains on batches of unequal lengths (speech, tagging,
classification, the translation encoder). torch.nn's answer is a ``PackedSequence``; on the
CPU, ATen's packed LSTM slices its input step by step, and the backward of each slice writes
zeros the size of the whole input, so its fwd+bwd time grows with T^2. rnnkit's stacks on the
CPU run such a batch layer by layer, each direction one fused call over the steps every
sequence has and a packed call over the steps past the shortest sequence only
(``rnnkit.engines.native.run_native``).

For each shape (T, B, input, hidden, layers, bidirectional) and each spread of lengths
(``bucketed``: within 4 steps of T, as ``rnnkit.data.padding.length_batches`` makes them;
``random``: uniform in [T/4, T], an unsorted batch), forward+backward of torch.nn.LSTM on the
packed batch, of ``rnnkit.layers.stack`` on the same packed batch and on the padded batch with
``lengths``, and of torch.nn.LSTM on the padded batch as if every sequence had T steps (the
fused kernel's time: the floor), interleaved, median of repeats; printed as ms and as ratios
to torch.nn.LSTM on the packed batch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence

from rnnkit import gemm
from rnnkit.layers import stack

# (T, B, input, hidden, layers, bidirectional)
SHAPES = [(84, 16, 120, 256, 3, True),   # the speech model at its median batch
          (200, 16, 120, 256, 3, True),  # its longest batches (7 digits)
          (40, 32, 100, 256, 2, True),   # a tagger's sentences
          (100, 32, 256, 256, 2, False)]


def lengths_of(spread: str, steps: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """(B,) lengths whose longest is ``steps``."""
    lo = steps - 3 if spread == "bucketed" else max(1, steps // 4)
    lengths = torch.randint(lo, steps + 1, (batch,), generator=generator)
    lengths[0] = steps
    return lengths


def _times(ref: torch.nn.LSTM, ours: torch.nn.Module, x: torch.Tensor, lengths: torch.Tensor,
           repeats: int) -> dict[str, float]:
    """Median fwd+bwd ms of each way to run the batch, interleaved."""
    def packed() -> torch.nn.utils.rnn.PackedSequence:
        return pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)

    runs = {
        "torch": lambda: ref(packed())[0].data.sum().backward(),
        "ours_packed": lambda: ours(packed())[0].data.sum().backward(),
        "ours_lengths": lambda: ours(x, lengths=lengths).output.sum().backward(),
        "floor": lambda: ref(x)[0].sum().backward(),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(repeats):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# {gemm.describe()}", flush=True)
    print("fwd+bwd ms; ratio: time / torch.nn.LSTM's on the packed batch (below 1: faster)\n")
    print("| T, B, input, hidden, layers, dir | lengths | torch.nn packed | rnnkit packed "
          "| rnnkit lengths | torch.nn all T (floor) |\n|---|---|---:|---:|---:|---:|")
    g = torch.Generator().manual_seed(0)
    for T, B, I, H, L, bi in SHAPES:
        torch.manual_seed(0)
        ref = torch.nn.LSTM(I, H, L, bidirectional=bi, batch_first=True)
        ours = stack("lstm", I, H, L, bidirectional=bi)
        x = torch.randn(B, T, I, requires_grad=True)
        for spread in ("bucketed", "random"):
            lengths = lengths_of(spread, T, B, g)
            ms = _times(ref, ours, x, lengths, args.repeats)
            base = ms["torch"]
            cells = " | ".join(f"{ms[k]:.1f} ({ms[k] / base:.2f}x)"
                               for k in ("ours_packed", "ours_lengths", "floor"))
            print(f"| {T}, {B}, {I}, {H}, {L}, {'bi' if bi else 'uni'} | {spread} "
                  f"({int(lengths.min())}-{T}) | {base:.1f} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
