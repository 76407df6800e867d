"""GFLOP/s of each GEMM backend (rnnkit.gemm) at the products rnnkit makes, float32, in one
process: ATen (MKL / OpenBLAS) and oneDNN, for the input projection over all steps, one
recurrent step (oneDNN on a weight packed once), a weight gradient (dY^T X, both operands
transposed views) and the word-LM decoder; and which backend rnnkit.gemm picks.

    python benchmarks/bench_gemm.py --markdown       # 2 threads, a quiet machine

Each number is the median of interleaved repeats after a warm-up call.
"""

from __future__ import annotations

import argparse
import sys

import torch

from rnnkit import gemm

# (label, kind, m, k, n): m rows of k inputs to n outputs
SHAPES = [
    ("input projection, 35 x 20 steps, 650 -> 2600", "linear", 700, 650, 2600),
    ("input projection, 64 x 64 steps, 512 -> 2048", "linear", 4096, 512, 2048),
    ("one step, batch 20, 650 -> 2600", "step", 20, 650, 2600),
    ("one step, batch 64, 512 -> 2048", "step", 64, 512, 2048),
    ("one step, batch 32, 256 -> 1024", "step", 32, 256, 1024),
    ("one step, batch 4, 128 -> 512", "step", 4, 128, 512),
    ("one step, batch 1, 128 -> 512", "step", 1, 128, 512),
    ("weight gradient dW_hh, 35 x 20 steps (2600 x 700 x 650)", "wgrad", 2600, 700, 650),
    ("word-LM decoder, 32 x 64 tokens, 384 -> 33,278", "linear", 2048, 384, 33278),
]


def runs(kind: str, m: int, k: int, n: int) -> dict:
    """The two ways of making the product: ATen as rnnkit calls it, oneDNN likewise."""
    if kind == "wgrad":  # dY^T X: dY (k x m) and X (k x n) stored row-major, both transposed
        dy, x = torch.randn(k, m), torch.randn(k, n)
        a, b = dy.t(), x
        return {"aten": lambda: torch.mm(a, b),
                "onednn": lambda: gemm._onednn(a, b.t(), None)}
    a, w, base = torch.randn(m, k), torch.randn(n, k), torch.randn(m, n)
    if kind == "step":
        b = w.t().contiguous()
        packed = torch.ops.mkldnn._reorder_linear_weight(w, m)
        return {"aten": lambda: torch.addmm(base, a, b),
                "onednn": lambda: gemm._onednn(a, packed, base)}
    bias = torch.randn(n)
    return {"aten": lambda: torch.addmm(bias, a, w.t()),
            "onednn": lambda: gemm._onednn(a, w, None, bias)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# {gemm.describe()}\n")
    if not gemm.onednn_available():
        print("oneDNN is not available in this torch: every product is ATen's")
        return 0
    head = ["product", "m x k -> n", "ATen GFLOP/s", "oneDNN GFLOP/s", "oneDNN / ATen"]
    rows = []
    for label, kind, m, k, n in SHAPES:
        fns = runs(kind, m, k, n)
        reps = max(3, args.repeats // (4 if m * k * n > 1e9 else 1))
        med = gemm.median_times(fns, reps)
        flops = 2 * m * k * n
        rows.append([label, f"{m} x {k} -> {n}", f"{flops / med['aten'] / 1e9:.0f}",
                     f"{flops / med['onednn'] / 1e9:.0f}", f"{med['aten'] / med['onednn']:.2f}x"])
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|---|---|---:|---:|---:|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        for r in rows:
            print("  ".join(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
