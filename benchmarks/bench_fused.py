"""Where the bptt engine's compiled LSTM loops beat its Python loops: the batch x hidden sizes.

    python benchmarks/bench_fused.py                 # T=64, H in 128/256/512, B in 1..32
    python benchmarks/bench_fused.py --threads 1 --hidden 128 --batch 1,2,4

For each (B, H), forward+backward of ``Recurrent(LSTMCell)`` under ``engine="bptt"``, plain
and layer-normalised, with the C++ loops (``engines/csrc/recurrent_loops.cpp``, each step's
elementwise work fused, scalar transcendentals) and with the Python loops (a dozen vectorised
ATen calls a step), interleaved, median of repeats; prints fused time / Python time (below 1:
the compiled loops are faster). ``rnnkit.engines.kernels.base.FUSED_MAX`` (the largest B x H
that runs on the compiled loops) is set from this table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--hidden", default="128,256,512")
    p.add_argument("--batch", default="1,2,4,8,16,32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    import torch

    from rnnkit.cells import make_cell
    from rnnkit.engines import compiled
    from rnnkit.engines.kernels import base as kernels_base
    from rnnkit.layers import Recurrent

    torch.set_num_threads(args.threads)
    from rnnkit import gemm

    print(f"# {gemm.describe()}", flush=True)  # the machine the numbers are true of
    if compiled.loops() is None:
        print("the compiled loops could not be built here", file=sys.stderr)
        return 1
    kernels_base.FUSED_MAX = 1 << 62  # let every size run on the compiled loops
    print(f"T={args.steps}, {args.threads} threads: fused / Python time (below 1: fused faster)")
    print("| H | B | B x H | lstm | lstm-ln |\n|---:|---:|---:|---:|---:|")
    for hidden in (int(h) for h in args.hidden.split(",")):
        for batch in (int(b) for b in args.batch.split(",")):
            x = torch.randn(args.steps, batch, hidden, requires_grad=True)
            ratios = []
            for opts in ({}, {"layer_norm": True}):
                layer = Recurrent(make_cell("lstm", hidden, hidden, **opts), batch_first=False,
                                  engine="bptt")

                def run(layer=layer, x=x):
                    layer(x)[0].sum().backward()

                run()
                fused, slow = [], []
                for _ in range(3):
                    fused.append(_median_ms(run, args.repeats))
                    with compiled.disabled():
                        slow.append(_median_ms(run, args.repeats))
                ratios.append(statistics.median(fused) / statistics.median(slow))
            print(f"| {hidden} | {batch} | {batch * hidden} | {ratios[0]:.2f} | {ratios[1]:.2f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
