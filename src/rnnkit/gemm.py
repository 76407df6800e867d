"""rnnkit's GEMM layer: every large matrix product of the library on the fastest backend of the
machine it runs on.

torch's float32 ``mm``/``addmm``/``F.linear`` go to ATen's BLAS (MKL or OpenBLAS). On some
processors that is half of what the hardware does: on AMD EPYC MKL runs its AVX2 code while
oneDNN, which torch bundles, runs AVX-512 (benchmarks/RESULTS.md, "GEMM backends"). torch 2.13
has no switch that sends float32 matmul to oneDNN at full precision
(``torch.backends.mkldnn.matmul.fp32_precision`` does so only at reduced precision, bf16 or
tf32), so this module calls oneDNN itself, on ordinary dense tensors, through
``torch.ops.mkldnn._linear_pointwise`` (the operator behind inductor's CPU linear fusion).

Backends:

- ``"aten"``: ``torch.addmm`` / ``torch.mm``; the only backend for float64 (the gradient
  checks), for other devices than the CPU and for anything that needs a second derivative;
- ``"onednn"``: oneDNN's matmul; float32 on the CPU.

Which one a product uses is measured per machine, product kind and shape (median of
interleaved repeats of both, on the product's own operands) and cached in
``~/.cache/rnnkit/gemm-<machine>.json`` (the machine: CPU model, torch version, threads), as
the C++ loops are built once per machine. A choice is measured again by the next process that
needs it, until two measurements in different processes agree (then it is confirmed and never
measured again), so that one measurement made in a bad moment (another job on the machine)
cannot keep a product on the slower backend for good (seen: a QRNN's weight gradient stored
as ATen's, 18.5 ms, against oneDNN's 10.8 ms on the quiet machine). ``RNNKIT_GEMM=aten``
(or ``onednn``) in the environment forces one backend wherever it applies; :func:`forced`
does the same inside a block.

The products (``kind``):

- ``"linear"``: ``x W^T + b`` over many rows (input projections over all steps, decoders,
  attention, the taggers' and classifiers' projections): :func:`linear`, differentiable, whose
  backward products are ``"dgrad"`` (``dY W``) and ``"wgrad"`` (``dY^T X``);
- ``"step"``: one step's recurrent product, the same weight for every step of a sequence:
  :class:`StepWeight` (oneDNN keeps the weight in its own layout across the steps);
- ``"wgrad"``: a weight gradient summed over all steps, :func:`mm`; ``dY^T X`` has two
  oneDNN forms (:func:`_transposable`), measured against each other and ATen under the
  key ``"wgrad-forms"``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.files import write_text_atomic

BACKENDS = ("aten", "onednn")
#: the environment variable that forces a backend: ``aten``, ``onednn`` or ``auto`` (default)
ENV = "RNNKIT_GEMM"
#: products smaller than this many multiply-adds are not worth measuring: ATen
MIN_MEASURED = 1 << 16
_REPEATS = 5

_state: dict[str, object] = {"forced": None, "choices": None, "path": None, "threads": None,
                             "confirmed": set(), "checked": set(),
                             "used": {"aten": 0, "onednn": 0}}


# -- availability and the choice ----------------------------------------------------------------
@functools.cache
def onednn_available() -> bool:
    """Whether this torch has oneDNN and the dense-tensor linear operator rnnkit calls (asked
    once: every product asks)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._linear_pointwise  # noqa: B018 (a lookup that raises when absent)
    except (AttributeError, RuntimeError):
        return False
    return True


def _mode() -> str:
    forced = _state["forced"]
    if forced is not None:
        return forced  # type: ignore[return-value]
    mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if mode not in (*BACKENDS, "auto"):
        raise ValueError(f"{ENV}={mode!r}: expected one of aten, onednn, auto")
    return mode


@contextmanager
def forced(backend: str | None) -> Iterator[None]:
    """Use ``backend`` (``"aten"``, ``"onednn"``; None: measure) for every product inside the
    block, wherever it applies (oneDNN: float32 on the CPU)."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    was = _state["forced"]
    _state["forced"] = backend or "auto"
    try:
        yield
    finally:
        _state["forced"] = was


def applies(*tensors: Tensor) -> bool:
    """Whether oneDNN may run a product of these operands: float32 on the CPU, oneDNN
    present, not forced to ATen, not inside a TorchScript trace or an ONNX export."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():  # exports see plain ops
        return False
    return (_mode() != "aten" and all(t.dtype == torch.float32 and t.device.type == "cpu"
                                      for t in tensors) and onednn_available())


@functools.cache
def _cpu() -> str:
    """The CPU's model name (/proc/cpuinfo, else what platform says) and the widest vector
    instructions torch's kernels use on it (``torch.backends.cpu.get_cpu_capability()``): one
    model name covers VMs with and without AVX-512, whose GEMMs differ by 2x."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def machine() -> str:
    """What a measured choice is true of: the CPU model, torch's version and thread count."""
    return f"{_cpu()} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def _cache_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rnnkit"
    digest = hashlib.sha256(machine().encode()).hexdigest()[:16]
    return root / f"gemm-{digest}.json"


def _choices() -> dict[str, str]:
    """The measured choices of this machine, read from its cache file once per thread
    count (and which of them are confirmed: :func:`remembered`)."""
    threads = torch.get_num_threads()
    if _state["choices"] is None or _state["threads"] != threads:
        path = _cache_path()
        choices: dict[str, str] = {}
        confirmed: set[str] = set()
        try:
            saved = json.loads(path.read_text())
            if saved.get("machine") == machine():
                choices = {k: v for k, v in saved.get("choices", {}).items()
                           if isinstance(v, str)}
                # a file written before confirmations has none: each choice is measured once more
                confirmed = {k for k in saved.get("confirmed", []) if k in choices}
        except (OSError, ValueError, AttributeError, TypeError):
            pass  # no cache yet, or an unreadable one: measure again
        _state.update(choices=choices, path=path, threads=threads, confirmed=confirmed,
                      checked=set())
    return _state["choices"]  # type: ignore[return-value]


def _settled(key: str) -> str | None:
    """The choice stored under ``key`` where it is not to be measured again in this process
    (confirmed by two measurements in different processes, or measured in this one), else
    None."""
    value = _choices().get(key)
    if key in _state["confirmed"] or key in _state["checked"]:  # type: ignore[operator]
        return value
    return None


def _save() -> None:
    path = _state["path"]
    with contextlib.suppress(OSError):  # a read-only home: the choices hold for this process
        write_text_atomic(path, json.dumps(
            {"machine": machine(), "choices": _state["choices"],
             "confirmed": sorted(_state["confirmed"])},  # type: ignore[call-overload]
            indent=1, sort_keys=True))


def _time_once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_times(runs: dict[str, Callable[[], object]], repeats: int = _REPEATS
                 ) -> dict[str, float]:
    """Seconds of each way of computing something: one warm-up call each, then the median of
    ``repeats`` interleaved timings (no autograd)."""
    with torch.no_grad():
        for fn in runs.values():
            fn()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, fn in runs.items():
                times[name].append(_time_once(fn))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def fastest(runs: dict[str, Callable[[], object]]) -> str:
    """The name of the fastest of several ways to compute the same thing
    (:func:`median_times`)."""
    medians = median_times(runs)
    return min(medians, key=medians.__getitem__)


def measure(run_aten: Callable[[], object], run_onednn: Callable[[], object],
            **forms: Callable[[], object]) -> str:
    """The fastest way to make the same product (:func:`fastest`): ``"aten"``, ``"onednn"``,
    or one of the other oneDNN ``forms`` given by name."""
    return fastest({"aten": run_aten, "onednn": run_onednn, **forms})


def remembered(key: str, choose_now: Callable[[], str]) -> str:
    """The choice stored under ``key`` for this machine, else ``choose_now()``, stored (in
    memory and in the machine's cache file) for next time. A stored choice not yet confirmed
    is measured once more, once per process: when the new measurement agrees it is confirmed
    (never measured again), else the new one is stored, to be confirmed by the next process.
    ``choose_now`` runs with torch's CPU random state saved and restored: a measurement's
    random operands must not move the dropout masks of the run that happens to measure (a
    first run on a machine trained differently from the same run with the cache warm)."""
    settled = _settled(key)
    if settled is not None:
        return settled
    choices = _choices()
    value = choices.get(key)
    with torch.random.fork_rng(devices=[]):
        now = choose_now()
    _state["checked"].add(key)  # type: ignore[attr-defined]
    if now == value:
        _state["confirmed"].add(key)  # type: ignore[attr-defined]
    choices[key] = now
    _save()
    return now


def measuring() -> bool:
    """Whether choices are measured (``RNNKIT_GEMM`` unset or ``auto``, nothing forced); when
    not, every choice follows a fixed rule, so that nothing is timed (tests)."""
    return _mode() == "auto"


def size_class(x: int) -> int:
    """The size a measured choice stands for: the smallest 2^j or 3 2^(j-1) that is at least
    ``x``. Products of about one size share a measurement: a key per exact row count would
    measure (and store) one for every distinct count of rows that reach an adaptive
    softmax's tail, hundreds in one run."""
    if x <= 2:
        return x
    p = 1 << (x - 1).bit_length()  # the power of two at or above x
    return 3 * p // 4 if 3 * p // 4 >= x else p


def choose(kind: str, m: int, k: int, n: int, run_aten: Callable[[], object],
           run_onednn: Callable[[], object], **forms: Callable[[], object]) -> str:
    """The backend of an (m, k) x (k, n) product of ``kind``, whose operands suit oneDNN:
    forced, or measured per machine and size class (:func:`size_class`) and cached
    (:func:`remembered`); with other oneDNN ``forms`` by name, the fastest of them all (a
    forced or unmeasured oneDNN is ``"onednn"``)."""
    known = _known(kind, m, k, n)
    if known is not None:
        return known
    return remembered(_key(kind, m, k, n), lambda: measure(run_aten, run_onednn, **forms))


def _key(kind: str, m: int, k: int, n: int) -> str:
    return f"{kind}:{size_class(m)}:{size_class(k)}:{size_class(n)}"


def _known(kind: str, m: int, k: int, n: int) -> str | None:
    """What :func:`choose` returns without measuring anything: forced, a small product
    (ATen) or a choice already made; None when it would measure now."""
    mode = _mode()
    if mode != "auto":
        return mode
    if m * k * n < MIN_MEASURED:
        return "aten"
    return _settled(_key(kind, m, k, n))


def speeds(m: int = 700, k: int = 650, n: int = 2600, repeats: int = 7) -> dict[str, float]:
    """GFLOP/s of each backend present at one float32 (m, k) x (k, n) product on the CPU
    (default: an input projection of 35 x 20 steps, 650 -> 2600), median of interleaved
    repeats; for the header of every benchmark."""
    a, w = torch.randn(m, k), torch.randn(n, k)
    runs = {"aten": lambda: torch.mm(a, w.t())}
    if onednn_available():
        runs["onednn"] = lambda: _onednn(a, w, None)
    return {name: 2 * m * k * n / t / 1e9 for name, t in median_times(runs, repeats).items()}


def describe(m: int = 700, k: int = 650, n: int = 2600) -> str:
    """One line naming the machine and each backend's GFLOP/s at (m, k) x (k, n)."""
    rates = ", ".join(f"{name} {rate:.0f}" for name, rate in speeds(m, k, n).items())
    return f"{machine()}; float32 GEMM {m} x {k} -> {n}: {rates} GFLOP/s"


def usage() -> dict[str, int]:
    """How many products each backend made in this process (for tests and benchmarks)."""
    return dict(_state["used"])  # type: ignore[arg-type]


def _count(backend: str) -> None:
    _state["used"][backend] += 1  # type: ignore[index]


# -- oneDNN on dense tensors --------------------------------------------------------------------
def _onednn(a: Tensor, w: Tensor, base: Tensor | None, bias: Tensor | None = None) -> Tensor:
    """``base + a w^T + bias`` by oneDNN: a (m, k), w (n, k) dense or packed, base (m, n)."""
    if base is None:
        return torch.ops.mkldnn._linear_pointwise(a, w, bias, "none", [], "")
    return torch.ops.mkldnn._linear_pointwise.binary(a, base, w, bias, "add")


def mm(a: Tensor, b: Tensor, base: Tensor | None = None, *, bias: Tensor | None = None,
       kind: str = "wgrad", out: Tensor | None = None) -> Tensor:
    """``base + a @ b + bias`` (a (m, k), b (k, n), base (m, n) or None, bias (n,) or None) on
    the backend chosen for ``kind`` at this shape; written into ``out`` when given. No
    autograd (for the hand-written backward passes and :func:`linear`)."""
    m, k = a.shape
    n = b.shape[1]
    if not applies(a, b):
        return _aten(base, a, b, out, bias)

    def rows(out: Tensor | None = None) -> Tensor:  # oneDNN copies a transposed ``a`` into rows
        y = _onednn(a, b.t(), base, bias)
        return y if out is None else out.copy_(y)

    def transposed(out: Tensor | None = None) -> Tensor:
        return _onednn_transposed(a, b, base, bias, out)

    def aten() -> Tensor:
        return _aten(base, a, b, None, bias)

    if not _transposable(a, b):
        backend = choose(kind, m, k, n, aten, rows)
    else:  # both oneDNN forms, measured against each other and ATen (their own key)
        backend = choose(f"{kind}-forms", m, k, n, aten, rows, **{"onednn-t": transposed})
        if backend == "onednn" and not measuring() and n <= m:  # forced: the rule's form
            backend = "onednn-t"
    if backend == "aten":
        return _aten(base, a, b, out, bias)
    _count("onednn")
    return (transposed if backend == "onednn-t" else rows)(out)


def _transposable(a: Tensor, b: Tensor) -> bool:
    """Whether ``a @ b`` can also be made as ``(b^T a^T)^T`` on oneDNN without a copy of
    ``a``: ``a`` (m, k) the transposed view of a contiguous (k, m) tensor (a weight
    gradient's ``dY^T``), ``b`` (k, n) contiguous. oneDNN copies a transposed input into rows
    before it multiplies, but reads a transposed weight as it lies; so in the transposed
    form ``a`` goes in as the weight and the copy is of ``b^T``. Which form is faster depends
    on the shape (AMD EPYC with AVX-512, 2 threads; benchmarks/RESULTS.md): dY^T X at 3,200
    rows x 1,024 -> 256 transposed 6.0 against 9.4 ms, at 8,192 rows x 1,536 -> 1,024 (a
    QRNN's window of 2) in rows 102-104 against 125-129 ms (twenty-third session); so both
    are measured, and ATen beside them. Forced to oneDNN (``RNNKIT_GEMM=onednn``) without a
    measurement, :func:`mm` takes the transposed form where n <= m (the smaller operand is
    copied)."""
    return not a.is_contiguous() and a.t().is_contiguous() and b.is_contiguous()


def _onednn_transposed(a: Tensor, b: Tensor, base: Tensor | None, bias: Tensor | None,
                       out: Tensor | None = None) -> Tensor:
    """``base + a @ b + bias`` as ``(b^T a^T)^T`` by oneDNN (:func:`_transposable`):
    written into ``out`` when given (added to it in place when ``base`` is ``out``, as the
    weight gradients accumulate), else a new contiguous (m, n) tensor."""
    y = _onednn(b.t(), a, None).t()
    if bias is not None:
        y = y + bias
    if out is not None and base is out:
        return out.add_(y)
    if base is not None:
        y = base + y
    return y.contiguous() if out is None else out.copy_(y)


def _aten(base: Tensor | None, a: Tensor, b: Tensor, out: Tensor | None,
          bias: Tensor | None = None) -> Tensor:
    _count("aten")
    if bias is not None:
        base = bias if base is None else base + bias
    if base is None:
        return torch.mm(a, b) if out is None else torch.mm(a, b, out=out)
    return torch.addmm(base, a, b) if out is None else torch.addmm(base, a, b, out=out)


class StepWeight:
    """A matrix ``B`` (k, n) by which every step of a sequence multiplies its (m, k) rows: the
    recurrent weight in the forward loop (``B = W_hh^T``) and in the backward loop
    (``B = W_hh``). On oneDNN it is reordered into oneDNN's layout once, for all steps.

    Args:
        b: ``B`` (k, n), as ATen multiplies it (the kernels keep it contiguous); None when
            ``bt`` is given: then ``B = bt^T`` is made contiguous the first time ATen needs it
            (:meth:`of_transpose`).
        rows: m, the rows of each step (the batch).
        bt: ``B^T`` (n, k) contiguous when the caller has it (else made when needed).
    """

    def __init__(self, b: Tensor | None, rows: int, bt: Tensor | None = None) -> None:
        if b is None and bt is None:
            raise ValueError("StepWeight needs b or bt")
        self._b, self._bt = b, bt
        self.rows = rows
        self.packed: Tensor | None = None
        self.backend = "aten"
        ref = bt if b is None else b
        n, k = bt.shape if b is None else b.t().shape
        if not applies(ref):
            return
        made: dict[str, Tensor] = {}

        def pack() -> Tensor:  # B^T in oneDNN's layout, made once and only for oneDNN
            if "packed" not in made:  # oneDNN's reorder reads a transposed view as it is
                made["packed"] = torch.ops.mkldnn._reorder_linear_weight(
                    self._b.t() if bt is None else bt, rows)
            return made["packed"]

        def operands() -> tuple[Tensor, Tensor]:  # made only when the shape is measured
            if "a" not in made:
                made.update(a=ref.new_empty(rows, k).normal_(),
                            base=ref.new_empty(rows, n).normal_())
            return made["a"], made["base"]

        def run_aten() -> Tensor:
            a, base = operands()
            return torch.addmm(base, a, self.b)

        def run_onednn() -> Tensor:
            a, base = operands()
            return _onednn(a, pack(), base)

        self.backend = choose("step", rows, k, n, run_aten, run_onednn)
        if self.backend == "onednn":
            self.packed = pack()

    @classmethod
    def of_transpose(cls, w: Tensor, rows: int) -> StepWeight:
        """The products ``a @ w^T`` for a contiguous ``w`` (n, k): oneDNN packs ``w`` as it
        is, and ``w^T`` is made contiguous only if ATen runs (a transposed copy of the
        weight, which a forward pass on oneDNN does not pay)."""
        return cls(None, rows, w)

    @property
    def b(self) -> Tensor:
        """``B`` (k, n), contiguous when made here from ``bt``."""
        if self._b is None:
            self._b = self._bt.t().contiguous()
        return self._b

    def b_for(self, makes_itself: Callable[[int, int, int], bool]) -> Tensor | None:
        """``B`` for a caller that makes the (m, k) x (k, n) products for which
        ``makes_itself(m, k, n)`` holds and passes the others to oneDNN (the compiled step
        loops): None where oneDNN takes every product, so that a transposed ``B`` is never
        made for nothing."""
        k, n = (self._bt.shape[1], self._bt.shape[0]) if self._b is None else self._b.shape
        if self.packed is not None and not makes_itself(self.rows, k, n):
            return None
        return self.b

    def addmm(self, base: Tensor | None, a: Tensor, out: Tensor | None = None,
              bias: Tensor | None = None, *, copy: bool = True) -> Tensor:
        """``base + a @ B + bias`` for one step's rows ``a`` (m, k); into ``out`` when given.

        ``copy=False``: the result may come back in a new tensor instead of ``out`` (oneDNN
        writes its own output; copying it into ``out`` is a pass over the step's values), for a
        caller that reads the result once and writes what it makes of it into ``out`` itself.
        """
        if self.packed is None:
            return _aten(base, a, self.b, out, bias)
        _count("onednn")
        y = _onednn(a, self.packed, base, bias)
        return y if out is None or not copy else out.copy_(y)


# -- a differentiable linear layer --------------------------------------------------------------
class _Linear(torch.autograd.Function):
    """``x W^T + b`` with every product (forward, dgrad, wgrad) on its chosen backend."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        x2 = x.reshape(-1, x.shape[-1])
        y = mm(x2, weight.t(), bias=bias, kind="linear")
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        differentiable = torch.is_grad_enabled()  # create_graph=True: ATen's tracked ops
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = (dy2 @ weight if differentiable else mm(dy2, weight, kind="dgrad"))
            dx = dx.view(x.shape)
        if ctx.needs_input_grad[1]:
            dw = dy2.t() @ x2 if differentiable else mm(dy2.t(), x2, kind="wgrad")
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2.sum(0)
        return dx, dw, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``: x (..., in), weight (out, in), bias (out,) -> (..., out),
    each product of its forward and backward passes on the backend chosen for it; plain
    ``F.linear`` where oneDNN does not apply (float64, other devices, ``RNNKIT_GEMM=aten``)
    or is known to lose all three products."""
    if not applies(x, weight) or _all_aten(x.numel() // x.shape[-1], x.shape[-1],
                                           weight.shape[0]):
        return F.linear(x, weight, bias)
    return _Linear.apply(x, weight, bias)


def _all_aten(m: int, k: int, n: int) -> bool:
    """Whether the forward, dgrad and wgrad products of an (m, k) -> n :func:`linear` are all
    known to be ATen's: then torch's own ``F.linear`` makes the same three products without
    a Python autograd Function around them (measured: 80 us of a 680 us forward and
    backward at 256 x 128 -> 384). A choice not made yet is made by :class:`_Linear`, on the
    real operands."""
    return all(_known(kind, *dims) == "aten" for kind, dims in  # dY^T X: :func:`_transposable`
               (("linear", (m, k, n)), ("dgrad", (m, n, k)), ("wgrad-forms", (n, m, k))))


class Linear(nn.Linear):
    """``torch.nn.Linear`` whose products go through :func:`linear`; the same parameters and
    state-dict keys, so a model's checkpoints are unchanged."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


def adopt(module: nn.Module) -> nn.Module:
    """Turn every ``torch.nn.Linear`` inside ``module`` (itself included) into a :class:`Linear`
    in place (its class only: parameters, names and hooks stay); returns ``module``."""
    for m in module.modules():
        if type(m) is nn.Linear:
            m.__class__ = Linear
    return module


__all__ = ["BACKENDS", "ENV", "Linear", "StepWeight", "adopt", "applies", "choose", "describe",
           "fastest", "forced", "linear", "machine", "measure", "measuring", "median_times", "mm",
           "onednn_available", "remembered", "speeds", "usage"]
