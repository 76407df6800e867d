"""Long sequences through the scan cells (issue 17): forward and backward over 10^4 and 10^5
steps in one sequence, the time and the peak memory (resident set) above the process's
baseline, each configuration in a fresh process.

    python benchmarks/scan_long.py                      # 10^4 and 10^5 steps, B = 1, 128 -> 128
    python benchmarks/scan_long.py --steps 100000 --batch 4

Memory is linear in T: the engine keeps the activated gates (T, B, G H) and c (T, B, H) for
the backward pass (the input projection's autograd keeps x); "bytes / step / unit" is the peak
over T x B x H, the constant of that line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def child(cell: str, steps: int, batch: int, size: int, threads: int) -> dict:
    import resource

    import torch

    from rnnkit.cells import make_cell
    from rnnkit.layers.recurrent import Recurrent

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layer = Recurrent(make_cell(cell, size, size), engine="scan")
    small = torch.randn(8, batch, size, requires_grad=True)
    layer(small)[0].sum().backward()  # warm up (the compiled loops, the GEMM choice)
    x = torch.randn(steps, batch, size, requires_grad=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    start = time.perf_counter()
    out, _ = layer(x)
    out.sum().backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    grad_ok = bool(torch.isfinite(x.grad).all())
    return {"cell": cell, "steps": steps, "batch": batch, "size": size, "seconds": seconds,
            "peak_mib": (peak - base) / 1024, "finite": grad_ok,
            "bytes_per_step_unit": (peak - base) * 1024 / (steps * batch * size)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", default="10000,100000")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--cells", default="scan-gru,scan-lstm,qrnn")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        cell, steps, batch, size = args.child
        print(json.dumps(child(cell, int(steps), int(batch), int(size), args.threads)))
        return 0
    from rnnkit import gemm

    print(f"# {gemm.describe()}")
    print("| cell | T | B | size | fwd+bwd s | peak MiB above baseline | bytes / step / unit |"
          " gradient finite |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for cell in args.cells.split(","):
        for steps in args.steps.split(","):
            out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                                  "--child", cell, steps, str(args.batch), str(args.size)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {cell} | {r['steps']:,} | {r['batch']} | {r['size']} | "
                  f"{r['seconds']:.3f} | {r['peak_mib']:.1f} | {r['bytes_per_step_unit']:.1f} | "
                  f"{r['finite']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
