"""Speed and memory of rnnkit's layers against torch.nn, in one process, as ratios.

For each shape (T, B, input, hidden) of DESIGN.md it times forward+backward and forward-only
(under ``torch.no_grad``) of every cell under every engine that supports it, through
``rnnkit.layers.Recurrent`` (time-major input, one layer), of torch.nn.LSTM / GRU / RNN
themselves and of the drop-ins ``rnnkit.LSTM`` / ``rnnkit.GRU`` (engine="native"). Every time
is the median of interleaved repeats (each candidate once per round, after warm-up), reported
as a ratio to torch.nn.LSTM. Peak memory of ``bptt`` against ``reference`` and, for the
RNN, LSTM and GRU, against torch.nn's module with autograd (what a user would otherwise
run): each run in a fresh subprocess, the rise of the resident set's high-water mark
(reset after set-up) above the resident set, during one forward+backward after a first one
of the same size (glibc malloc with a fixed mmap threshold, so that the resident set follows
the live tensors; the smallest of three runs).

    python benchmarks/bench_layers.py                      # everything, 2 threads
    python benchmarks/bench_layers.py --quick              # one small shape, to check it runs
    python benchmarks/bench_layers.py --markdown --targets > table.md   # for RESULTS.md
    python benchmarks/bench_layers.py --shapes 64,64,512,512 --cells lstm,gru --engines bptt

Never run it while other jobs use the machine: OpenMP threads spin (DESIGN.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

import rnnkit
from rnnkit import gemm
from rnnkit.cells import make_cell
from rnnkit.engines import supports
from rnnkit.layers import Recurrent

SHAPES: list[tuple[int, int, int, int]] = [
    (35, 20, 200, 200), (35, 20, 650, 650), (100, 32, 256, 256), (64, 64, 512, 512),
    (256, 1, 128, 128),
]
BIG_SHAPES = [(35, 20, 650, 650), (100, 32, 256, 256), (64, 64, 512, 512)]
SMALL_BATCH_SHAPE = (256, 1, 128, 128)
QUICK_SHAPE = (8, 4, 16, 16)

# label -> (rnnkit cell name, cell options)
CELLS: dict[str, tuple[str, dict]] = {
    "rnn": ("rnn", {}),
    "lstm": ("lstm", {}),
    "lstm-ln": ("lstm", {"layer_norm": True}),
    "peephole": ("peephole", {}),
    "gru": ("gru", {}),
    "gru-ln": ("gru", {"layer_norm": True}),
    "gru-before": ("gru-before", {}),
    "gru-simple": ("gru-simple", {}),
    "scan-gru": ("scan-gru", {}),
    "scan-lstm": ("scan-lstm", {}),
    "qrnn": ("qrnn", {}),
    # not in the default set
    "rnn-relu": ("rnn-relu", {}),
    "gru-before-ln": ("gru-before", {"layer_norm": True}),
}
#: the torch.nn module of the same recurrence, for the peak-memory baseline
TORCH_MODULES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
DEFAULT_CELLS = ["rnn", "lstm", "lstm-ln", "peephole", "gru", "gru-ln", "gru-before", "gru-simple",
                 "scan-gru", "scan-lstm", "qrnn"]
SCAN_CELLS = ["scan-gru", "scan-lstm", "qrnn"]
ENGINES = ["reference", "bptt", "native", "scan"]
BASELINE = "torch.nn.LSTM"

# targets of issue 15 (forward+backward, against torch.nn.LSTM at the batched shapes): the
# LSTMs within 1.2x, the layer-normalised cells within 1.5x, every GRU within 1.0x (and the GRU
# faster than torch.nn.GRU); batch 1 within 2.5x; every cell within 1.5x of its own GEMMs
BPTT_TARGET = {"lstm": 1.2, "peephole": 1.2, "gru": 1.0, "gru-before": 1.0, "gru-simple": 1.0,
               "lstm-ln": 1.5, "gru-ln": 1.5}
NATIVE_TARGET = 1.05
SMALL_BATCH_TARGET = 2.5
OWN_GEMM_TARGET = 1.5
# targets of issue 17: the scan cells against torch.nn.LSTM, forward+backward
SCAN_SHAPES = [(64, 64, 512, 512), (256, 32, 512, 512)]
SCAN_TARGET = {"scan-gru": 0.35, "scan-lstm": 0.40, "qrnn": 0.85}
SCAN_SMALL_BATCH_TARGET = 0.25
LONG_SHAPE, LONG_TARGET = (4096, 8, 256, 256), 0.1


@dataclass
class Candidate:
    """One thing to time: a module and how to call it."""

    label: str
    module: nn.Module
    cell: str | None = None  # rnnkit cell label, None for torch.nn and the drop-ins
    engine: str | None = None
    times: dict[str, list[float]] = field(default_factory=lambda: {"fb": [], "f": []})
    inner: int = 1


class _GemmOnly(torch.autograd.Function):
    """Only the matrix products of a recurrent layer with ``k`` gate blocks, at its shapes:
    forward the input projection over all steps and one (B, H) x (H, kH) product per step;
    backward dX, dW_ih, one (B, kH) x (kH, H) product per step and dW_hh. No nonlinearity,
    no state arithmetic; each product on the backend rnnkit.gemm chooses for it (the fastest
    measured on this machine): the time a cell cannot go below (its physical floor)."""

    @staticmethod
    def forward(ctx, x, w_ih, w_hh):
        T, B, I = x.shape
        H = w_hh.shape[1]
        gemm.mm(x.reshape(T * B, I), w_ih.t(), kind="linear")
        step = gemm.StepWeight.of_transpose(w_hh, B)  # as the kernels' forward builds it
        h, hs = x.new_zeros(B, H), []
        for _ in range(T):
            h = step.addmm(None, h)[:, :H]  # the next product reads a (B, H) state
            hs.append(h)
        out = torch.stack(hs)
        ctx.save_for_backward(x, w_ih, w_hh, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w_ih, w_hh, hs = ctx.saved_tensors
        T, B, I = x.shape
        g = grad.new_ones(T * B, w_hh.shape[0])  # dL/d gates, all steps
        dx = gemm.mm(g, w_ih, kind="dgrad").view(T, B, I)
        dw_ih = gemm.mm(g.t(), x.reshape(T * B, I), kind="wgrad")
        step = gemm.StepWeight(w_hh, B)
        for t in range(T):
            step.addmm(None, g[t * B:(t + 1) * B])
        dw_hh = gemm.mm(g.t(), hs.reshape(T * B, -1), kind="wgrad")
        return dx, dw_ih, dw_hh


class GemmFloor(nn.Module):
    """:class:`_GemmOnly` as a layer: ``k`` gate blocks of ``H`` (LSTM 4, GRU 3, RNN 1)."""

    def __init__(self, I: int, H: int, k: int) -> None:
        super().__init__()
        self.w_ih = nn.Parameter(torch.randn(k * H, I) / I ** 0.5)
        self.w_hh = nn.Parameter(torch.randn(k * H, H) / H ** 0.5)

    def forward(self, x):
        return _GemmOnly.apply(x, self.w_ih, self.w_hh), None


def gate_blocks(label: str, I: int = 3, H: int = 5) -> int | None:
    """How many gate blocks of H the cell ``label`` multiplies by (its weight_hh's rows / H);
    None for a scan cell, which multiplies nothing by its state."""
    name, opts = CELLS[label]
    cell = make_cell(name, I, H, **opts)
    return cell.weight_hh.shape[0] // H if hasattr(cell, "weight_hh") else None


def build_candidates(shape: tuple[int, int, int, int], cells: list[str], engines: list[str]
                     ) -> list[Candidate]:
    """torch.nn's layers, rnnkit's layers for every (cell, engine) supported, the drop-ins."""
    _, _, I, H = shape
    out = [Candidate("torch.nn.LSTM", nn.LSTM(I, H)), Candidate("torch.nn.GRU", nn.GRU(I, H)),
           Candidate("torch.nn.RNN", nn.RNN(I, H))]
    for label in cells:
        name, opts = CELLS[label]
        for engine in engines:
            cell = make_cell(name, I, H, **opts)
            if not supports(engine, cell):
                continue
            layer = Recurrent(cell, batch_first=False, engine=engine)
            out.append(Candidate(f"{label} [{engine}]", layer, label, engine))
    out.append(Candidate("rnnkit.LSTM [native]", rnnkit.LSTM(I, H, engine="native")))
    out.append(Candidate("rnnkit.GRU [native]", rnnkit.GRU(I, H, engine="native")))
    for k in sorted({gate_blocks(label) for label in cells} - {None}):
        out.append(Candidate(f"GEMMs only, {k} block(s)", GemmFloor(I, H, k)))
    return out


def _forward_backward(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
    for p in module.parameters():
        p.grad = None
    x.grad = None
    out, _ = module(x)
    out.backward(grad)


def _forward(module: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        module(x)


def run_once(c: Candidate, mode: str, x: torch.Tensor, grad: torch.Tensor,
             timer: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per call of ``c`` in ``mode`` ("fb" or "f"), over ``c.inner`` calls."""
    start = timer()
    for _ in range(c.inner):
        if mode == "fb":
            _forward_backward(c.module, x, grad)
        else:
            _forward(c.module, x)
    return (timer() - start) / c.inner


def measure(candidates: list[Candidate], shape: tuple[int, int, int, int], repeats: int,
            warmup: int, min_time: float, timer: Callable[[], float] = time.perf_counter
            ) -> dict[str, dict[str, float]]:
    """Median seconds per call, ``{label: {"fb": ..., "f": ...}}``; candidates interleaved."""
    T, B, I, _ = shape
    torch.manual_seed(0)
    x = torch.randn(T, B, I, requires_grad=True)
    for c in candidates:
        for _ in range(max(1, warmup)):
            first = run_once(c, "fb", x, torch.ones(T, B, _out_size(c, x)), timer)
            run_once(c, "f", x, x, timer)
        c.inner = max(1, math.ceil(min_time / max(first, 1e-9)))
    grads = {c.label: torch.ones(T, B, _out_size(c, x)) for c in candidates}
    for _ in range(repeats):
        for mode in ("fb", "f"):
            for c in candidates:
                c.times[mode].append(run_once(c, mode, x, grads[c.label], timer))
    return {c.label: {m: statistics.median(v) for m, v in c.times.items()} for c in candidates}


def _out_size(c: Candidate, x: torch.Tensor) -> int:
    with torch.no_grad():
        return c.module(x[:1])[0].shape[-1]


def ratios(medians: dict[str, dict[str, float]], baseline: str = BASELINE
           ) -> dict[str, dict[str, float]]:
    """Every median divided by the baseline's, per mode."""
    base = medians[baseline]
    return {label: {m: t / base[m] for m, t in times.items()} for label, times in
            medians.items()}


# -- peak memory, one fresh process per measurement -------------------------------------------

def _status_kib(key: str) -> int:
    """A ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def memory_child(cell_label: str, engine: str, shape: tuple[int, int, int, int],
                 threads: int) -> int:
    """In a fresh process: KiB the resident set's high-water mark rises above the resident
    set during one forward+backward of ``cell_label`` under ``engine``, in steady state: after
    one forward+backward of the same size (the libraries' workspaces for those shapes are
    then allocated, as in any training loop after its first step). The mark is reset first
    (``clear_refs``): set-up (importing torch) peaks higher than a small run would, which hid
    small runs entirely."""
    torch.set_num_threads(threads)
    T, B, I, H = shape
    name, opts = CELLS[cell_label]
    if engine == "torch.nn":  # what a user would otherwise run: torch's module, autograd
        layer = TORCH_MODULES[cell_label](I, H)
    else:
        layer = Recurrent(make_cell(name, I, H, **opts), batch_first=False, engine=engine)
    x = torch.randn(T, B, I, requires_grad=True)
    out, _ = layer(x)
    out.sum().backward()
    del out
    layer.zero_grad(set_to_none=True)
    x.grad = None
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the high-water mark := the resident set now
        before, peak = _status_kib("VmRSS"), lambda: _status_kib("VmHWM")
    except OSError:  # no procfs: the mark since start, which can hide small runs
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # noqa: E731
    out, _ = layer(x)
    out.sum().backward()
    return peak() - before


def peak_memory(cell_label: str, engine: str, shape: tuple[int, int, int, int],
                threads: int, runs: int = 3) -> int:
    """:func:`memory_child` run in ``runs`` fresh subprocesses; the smallest, KiB.

    glibc's malloc raises its mmap threshold as large blocks are freed and serves later ones
    from a heap it keeps resident: the high-water mark then misses what a run allocates (it
    read 0 for every cell) and counts whatever the heap held before. A fixed 8 KiB threshold
    gives every block bigger than that its own mapping, returned to the system when freed, so
    the resident set follows the live tensors. What remains is noise that only adds (small
    blocks on the heap): the smallest of a few runs is the estimate.
    """
    cmd = [sys.executable, __file__, "--memory-child", json.dumps([cell_label, engine,
                                                                  list(shape), threads])]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "8192"}
    return min(int(subprocess.run(cmd, capture_output=True, text=True, check=True,
                                  env=env).stdout.strip().splitlines()[-1])
               for _ in range(runs))


# -- targets ---------------------------------------------------------------------------------

def check_targets(shape: tuple[int, int, int, int], r: dict[str, dict[str, float]],
                  memory: dict[str, dict[str, int]] | None) -> list[tuple[str, bool]]:
    """The targets of issue 15 that apply at ``shape``: ``(description, passed)``."""
    out: list[tuple[str, bool]] = []

    def rel(a: str, b: str) -> float | None:
        if a in r and b in r:
            return r[a]["fb"] / r[b]["fb"]
        return None

    for ours, theirs in (("lstm [native]", "torch.nn.LSTM"), ("gru [native]", "torch.nn.GRU"),
                         ("rnn [native]", "torch.nn.RNN"),
                         ("rnnkit.LSTM [native]", "torch.nn.LSTM"),
                         ("rnnkit.GRU [native]", "torch.nn.GRU")):
        v = rel(ours, theirs)
        if v is not None:
            out.append((f"{ours} within {NATIVE_TARGET}x of {theirs}: {v:.2f}x",
                        v <= NATIVE_TARGET))
    for cell, limit in BPTT_TARGET.items():
        label = f"{cell} [bptt]"
        if label not in r:
            continue
        if shape in BIG_SHAPES:
            v = r[label]["fb"]
            out.append((f"{label} within {limit}x of torch.nn.LSTM: {v:.2f}x", v <= limit))
        elif shape == SMALL_BATCH_SHAPE:
            v = r[label]["fb"]
            out.append((f"{label} within {SMALL_BATCH_TARGET}x of torch.nn.LSTM: {v:.2f}x",
                        v <= SMALL_BATCH_TARGET))
    v = rel("gru [bptt]", "torch.nn.GRU")
    if v is not None:
        out.append((f"gru [bptt] faster than torch.nn.GRU: {v:.2f}x", v < 1.0))
    if shape in BIG_SHAPES:
        for cell in BPTT_TARGET:
            floor = f"GEMMs only, {gate_blocks(cell)} block(s)"
            v = rel(f"{cell} [bptt]", floor)
            if v is not None:
                out.append((f"{cell} [bptt] within {OWN_GEMM_TARGET}x of its own GEMMs: "
                            f"{v:.2f}x", v <= OWN_GEMM_TARGET))
    for cell, limit in SCAN_TARGET.items():
        v = r.get(f"{cell} [scan]", {}).get("fb")
        if v is None:
            continue
        if shape in SCAN_SHAPES:
            out.append((f"{cell} [scan] at most {limit}x of torch.nn.LSTM: {v:.2f}x",
                        v <= limit))
        elif shape == SMALL_BATCH_SHAPE:
            out.append((f"{cell} [scan] at most {SCAN_SMALL_BATCH_TARGET}x of torch.nn.LSTM: "
                        f"{v:.2f}x", v <= SCAN_SMALL_BATCH_TARGET))
        elif shape == LONG_SHAPE:
            out.append((f"{cell} [scan] at least {1 / LONG_TARGET:.0f}x faster than "
                        f"torch.nn.LSTM: {1 / v:.1f}x", v <= LONG_TARGET))
    for cell, m in (memory or {}).items():
        if "bptt" in m and "reference" in m:
            out.append((f"{cell} [bptt] peak memory <= reference: {m['bptt'] / 1024:.1f} MiB "
                        f"vs {m['reference'] / 1024:.1f} MiB", m["bptt"] <= m["reference"]))
    return out


# -- printing --------------------------------------------------------------------------------

def render(title: str, head: list[str], rows: list[list[str]], markdown: bool) -> str:
    """A table with a title: Markdown, or plain text in aligned columns."""
    if markdown:
        lines = [f"#### {title}", "", "| " + " | ".join(head) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines) + "\n"
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:<{widths[0]}}}" if i == 0 else f"{{:>{w}}}"
                    for i, w in enumerate(widths))
    return "\n".join([title, fmt.format(*head), *(fmt.format(*row) for row in rows)]) + "\n"


def gemm_flops(shape: tuple[int, int, int, int], k: int) -> int:
    """The multiply-adds x 2 of a layer with ``k`` gate blocks over ``shape``, forward and
    backward: the input projection, dX and dW_ih (3 x 2TB kH I) and the per-step products of
    both passes with dW_hh (3 x 2TB kH H)."""
    T, B, I, H = shape
    return 6 * T * B * k * H * (I + H)


def format_table(shape, medians, r, memory, markdown: bool) -> str:
    """One row per layer; ``x own GEMMs``: its forward+backward time over that of its own
    matrix products alone (:class:`GemmFloor` with its gate blocks, each product on the
    fastest backend of the machine), the distance to the floor; ``GEMM GFLOP/s``: the
    layer's matrix-product work over its forward+backward time."""
    head = ["layer", "fwd+bwd ms", "x LSTM", "x own GEMMs", "GEMM GFLOP/s", "fwd ms", "x LSTM",
            "peak MiB"]
    torch_blocks = {"torch.nn.LSTM": 4, "torch.nn.GRU": 3, "torch.nn.RNN": 1,
                    "rnnkit.LSTM [native]": 4, "rnnkit.GRU [native]": 3}
    rows = []
    for label, t in medians.items():
        c_label, _, engine = label.partition(" [")
        mem = (memory or {}).get(c_label, {}).get(engine.rstrip("]"))
        if label.startswith("GEMMs only, "):
            k = int(label.split(", ")[1].split()[0])
        else:
            k = gate_blocks(c_label) if c_label in CELLS else torch_blocks.get(label)
        floor = medians.get(f"GEMMs only, {k} block(s)")
        own = "" if floor is None or label.startswith("GEMMs") else f"{t['fb'] / floor['fb']:.2f}"
        rate = "" if k is None else f"{gemm_flops(shape, k) / t['fb'] / 1e9:.0f}"
        rows.append([label, f"{1e3 * t['fb']:.2f}", f"{r[label]['fb']:.2f}", own, rate,
                     f"{1e3 * t['f']:.2f}", f"{r[label]['f']:.2f}",
                     "" if mem is None else f"{mem / 1024:.1f}"])
    return render("T={}, B={}, input={}, hidden={}".format(*shape), head, rows, markdown)


def format_memory(shape, memory: dict[str, dict[str, int]], markdown: bool) -> str:
    """The peak-memory table of one shape (``--memory-only``), MiB."""
    rows = [[cell, f"{m['bptt'] / 1024:.1f}", f"{m['reference'] / 1024:.1f}",
             f"{m['torch.nn'] / 1024:.1f}" if "torch.nn" in m else ""]
            for cell, m in memory.items() if "bptt" in m and "reference" in m]
    title = "T={}, B={}, input={}, hidden={}: peak memory, MiB".format(*shape)
    return render(title, ["cell", "bptt", "reference", "torch.nn (autograd)"], rows, markdown)


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    """``"35,20,200,200;64,64,512,512"`` -> shapes."""
    shapes = []
    for part in text.split(";"):
        dims = tuple(int(v) for v in part.split(","))
        if len(dims) != 4 or min(dims) < 1:
            raise argparse.ArgumentTypeError(f"--shapes: each shape must be T,B,input,hidden "
                                             f"of positive ints, got {part!r}")
        shapes.append(dims)
    return shapes


def parse_list(choices: list[str], name: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [s for s in text.split(",") if s]
        bad = [s for s in items if s not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"{name}: unknown {bad}, choose from {choices}")
        return items
    return parse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", type=parse_shapes, default=SHAPES,
                    help="T,B,input,hidden;... (default: the five of DESIGN.md)")
    ap.add_argument("--cells", type=parse_list(list(CELLS), "--cells"), default=DEFAULT_CELLS)
    ap.add_argument("--engines", type=parse_list(ENGINES, "--engines"), default=ENGINES)
    ap.add_argument("--repeats", type=int, default=11, help="interleaved rounds (median)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=0.05,
                    help="seconds each timed measurement lasts at least (repeated calls)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the peak-memory runs (they need no quiet machine)")
    ap.add_argument("--quick", action="store_true",
                    help=f"one small shape {QUICK_SHAPE}, one repeat: checks that it runs")
    ap.add_argument("--markdown", action="store_true", help="print markdown tables")
    ap.add_argument("--targets", action="store_true",
                    help="print PASS/FAIL against the targets of issue 15")
    ap.add_argument("--malloc", choices=["system", "keep"], default="system",
                    help="keep: glibc keeps freed memory for reuse (rnnkit.allocator, as the "
                         "rnnkit command runs) for every candidate of the timing runs; "
                         "default: the C library's settings")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.memory_child:
        cell, engine, shape, threads = json.loads(args.memory_child)
        print(memory_child(cell, engine, tuple(shape), threads))
        return 0
    if args.quick:
        args.shapes, args.repeats, args.warmup, args.min_time = [QUICK_SHAPE], 1, 1, 0.0
    torch.set_num_threads(args.threads)
    if args.malloc == "keep":
        from rnnkit import allocator

        allocator.keep_freed_memory()
    print(f"# {gemm.describe()}; {gemm.ENV}={os.environ.get(gemm.ENV, 'auto')}; "
          f"malloc: {args.malloc}")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
          f"time-major input; median of {args.repeats} interleaved repeats; ratios to "
          f"{BASELINE} (forward+backward, and forward-only under no_grad); peak memory: the "
          f"rise of the resident set's high-water mark in a fresh process during one "
          f"forward+backward (8 KiB mmap threshold, smallest of 3 runs)\n")
    failures = 0
    for shape in args.shapes:
        candidates = build_candidates(shape, args.cells, args.engines)
        memory = None
        if not args.no_memory:
            labels = {c.label for c in candidates}
            memory = {}
            for cell in args.cells:
                for engine in ("bptt", "reference"):
                    if engine in args.engines and f"{cell} [{engine}]" in labels:
                        memory.setdefault(cell, {})[engine] = peak_memory(
                            cell, engine, shape, args.threads)
                if cell in TORCH_MODULES and cell in memory:
                    memory[cell]["torch.nn"] = peak_memory(cell, "torch.nn", shape,
                                                           args.threads)
        if args.memory_only:
            r = {}
            print(format_memory(shape, memory or {}, args.markdown))
        else:
            medians = measure(candidates, shape, args.repeats, args.warmup, args.min_time)
            r = ratios(medians)
            print(format_table(shape, medians, r, memory, args.markdown))
        if args.targets:
            for text, ok in check_targets(shape, r, memory):
                failures += not ok
                print(f"{'- ' if args.markdown else ''}{'PASS' if ok else 'FAIL'}  {text}")
            print()
        sys.stdout.flush()
    if args.targets:
        print(f"{failures} target(s) failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
