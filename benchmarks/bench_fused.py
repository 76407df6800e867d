"""Where the bptt engine's compiled step loops beat its Python loops, forward and backward.

    python benchmarks/bench_fused.py                 # T=64, H in 128/256/512, B in 1..64
    python benchmarks/bench_fused.py --threads 1 --hidden 128 --batch 1,2,4 --cells lstm

For each cell and (B, H), ``Recurrent(cell)`` under ``engine="bptt"`` runs forward and
backward with the C++ loops (``engines/csrc/recurrent_loops.cpp``: each step's elementwise
work in one pass, vectorised activations in float32, the step product by small_mm, oneDNN or
ATen) and with the Python loops (a dozen vectorised ATen calls a step), interleaved, median of
repeats; the table gives compiled time / Python time of the forward pass and of the backward
pass apart (below 1: the compiled loop is faster). ``rnnkit.engines.kernels.base``'s
``FUSED_FORWARD_MAX``, ``FUSED_MAX`` and ``FUSED_LN_MAX`` (the largest B x H whose forward
loop, backward loop, and backward loop with layer norm run compiled) are set from this
table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

CELLS = {"lstm": ("lstm", {}), "lstm-ln": ("lstm", {"layer_norm": True}),
         "peephole": ("peephole", {}), "gru": ("gru", {}),
         "gru-ln": ("gru", {"layer_norm": True}), "gru-before": ("gru-before", {}),
         "gru-simple": ("gru-simple", {})}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--hidden", default="128,256,512")
    p.add_argument("--batch", default="1,4,16,32,64")
    p.add_argument("--cells", default=",".join(CELLS), help=f"from {','.join(CELLS)}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    cells = args.cells.split(",")
    if any(c not in CELLS for c in cells):
        p.error(f"--cells: choose from {','.join(CELLS)}")
    import torch

    from rnnkit import gemm
    from rnnkit.cells import make_cell
    from rnnkit.engines import compiled
    from rnnkit.engines.kernels import base as kernels_base
    from rnnkit.layers import Recurrent

    torch.set_num_threads(args.threads)
    print(f"# {gemm.describe()}", flush=True)  # the machine the numbers are true of
    if compiled.loops() is None:
        print("the compiled loops could not be built here", file=sys.stderr)
        return 1
    print(f"T={args.steps}, {args.threads} threads: compiled / Python time of the forward and "
          "of the backward pass (below 1: compiled faster)")
    print("| cell | H | B | B x H | forward | backward |\n|---|---:|---:|---:|---:|---:|")
    for name in cells:
        cell_name, opts = CELLS[name]
        for hidden in (int(h) for h in args.hidden.split(",")):
            for batch in (int(b) for b in args.batch.split(",")):
                x = torch.randn(args.steps, batch, hidden, requires_grad=True)
                layer = Recurrent(make_cell(cell_name, hidden, hidden, **opts), batch_first=False,
                                  engine="bptt")

                def run(on: bool, layer=layer, x=x) -> tuple[float, float]:
                    most = 1 << 62 if on else 0
                    for name in ("FUSED_FORWARD_MAX", "FUSED_MAX", "FUSED_LN_MAX"):
                        setattr(kernels_base, name, most)
                    t0 = time.perf_counter()
                    out = layer(x)[0]
                    t1 = time.perf_counter()
                    out.sum().backward()
                    return t1 - t0, time.perf_counter() - t1

                for on in (True, False, True, False):  # warm-up, gemm's measurements
                    run(on)
                times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
                for _ in range(args.repeats):
                    for on in (True, False):
                        times[on].append(run(on))
                med = {on: [statistics.median(t[i] for t in times[on]) for i in (0, 1)]
                       for on in times}
                fwd, bwd = (med[True][i] / med[False][i] for i in (0, 1))
                print(f"| {name} | {hidden} | {batch} | {batch * hidden} | {fwd:.2f} | "
                      f"{bwd:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
