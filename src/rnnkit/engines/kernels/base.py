"""What every ``bptt`` kernel shares: the :class:`Kernel` protocol, the registry that maps an
exact cell type to its kernel, per-step layer normalisation and the chunking helpers.

A kernel is one cell family's forward and backward step through time, written by hand. The
driver (:mod:`rnnkit.engines.bptt`) makes the input projection of all steps, preallocates the
state sequences and calls the kernel's loops; the kernel keeps what its backward pass needs.

Adding a kernel for a cell: subclass :class:`Kernel` (``forward_step``, ``backward_step``,
``input_grad``, ``weight_grads``; ``start_backward`` for the factors computed before the
backward loop) and register a planner for the cell's exact class::

    @register_kernel(MyCell)
    def _plan(cell: MyCell, p: Params) -> Plan:
        return Plan(MyKernel, bias=p["bias_ih"], ln_weight=None, weights=(p["weight_hh"],))

A subclass of a registered cell is not its parent: it runs on the reference engine until a
kernel is registered for it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from rnnkit import gemm
from rnnkit.cells.base import LN_EPS, Params, RecurrentCell, State
from rnnkit.engines import compiled
from rnnkit.gemm import StepWeight

_LN_BACKWARD = torch.ops.aten.native_layer_norm_backward

#: the largest batch x hidden size whose backward loop runs compiled, and whose forward loop
#: does; measured with benchmarks/bench_fused.py (each loop's compiled time against its
#: Python loop's; RESULTS.md). The forward's activations are vectorised there (one pass over
#: a step's gates), so it wins at nearly every size measured (0.3-0.98x; 1.00-1.06 at three
#: of 105); the backward, without transcendentals, wins up to about a thousand values
#: (0.5-0.9x) and was even past them while the compiled loops ran on one thread. Built with
#: OpenMP (each step's rows split over the threads; fourteenth session, AMD EPYC with AVX2,
#: 2 threads, T = 64, 9 repeats) it is 0.92-0.96x for the LSTM, peephole, reset-before and
#: simplified GRU at 5,120-13,000 values, 0.96-1.00x at 20,800, and even for the GRU
#: (0.99-1.06x); with layer norm 0.81-0.95x up to 16,384 values (0.90-0.99 at 32,768).
FUSED_MAX = 16384
FUSED_LN_MAX = 16384
FUSED_FORWARD_MAX = 1 << 62


# -- the registry -----------------------------------------------------------------------------
class Plan(NamedTuple):
    """How the ``bptt`` engine runs one cell.

    Attributes:
        kernel: the :class:`Kernel` class.
        bias: what is added to the input projection of all steps (None: nothing).
        ln_weight: the input projection's layer-norm gain (None: no layer norm there).
        weights: the tensors the kernel receives after the initial states, in its order.
    """

    kernel: type[Kernel]
    bias: Tensor | None
    ln_weight: Tensor | None
    weights: tuple[Tensor | None, ...]


Planner = Callable[[RecurrentCell, Params], Plan]
_KERNELS: dict[type[RecurrentCell], Planner] = {}


def register_kernel(cell_type: type[RecurrentCell]) -> Callable[[Planner], Planner]:
    """Register a planner (``(cell, params) -> Plan``) for exactly ``cell_type``; a planner may
    raise ValueError for options its kernel does not support."""
    def register(planner: Planner) -> Planner:
        _KERNELS[cell_type] = planner
        return planner
    return register


def plan_for(cell: RecurrentCell, params: Params) -> Plan:
    """The plan of the kernel registered for ``type(cell)``; ValueError naming the class when
    there is none or it does not support the cell's options."""
    planner = _KERNELS.get(type(cell))
    if planner is None:
        raise ValueError(f"engine='bptt' has no kernel for {type(cell).__qualname__} (kernels "
                         f"are registered by exact cell class with "
                         f"rnnkit.engines.kernels.register_kernel); use engine='reference'")
    return planner(cell, params)


InferenceStep = Callable[[Tensor, State], tuple[Tensor, State]]
_INFERENCE: dict[type[RecurrentCell], Callable[[RecurrentCell], InferenceStep | None]] = {}


def register_inference(cell_type: type[RecurrentCell]):
    """Register, for exactly ``cell_type``, a factory ``cell -> step`` (or None when the cell's
    options do not suit it) of a token-by-token inference step: ``step(x_t, state) ->
    (h_t, state)`` as ``cell.step`` computes it, on weights prepared once (pre-transposed,
    contiguous), since decoding one token is bound by reading the weights."""
    def register(factory):
        _INFERENCE[cell_type] = factory
        return factory
    return register


def inference_step(cell: RecurrentCell) -> InferenceStep:
    """The registered inference step of ``type(cell)`` made from its current weights, or
    ``cell.step`` itself; for no-grad use (the prepared weights are copies)."""
    factory = _INFERENCE.get(type(cell))
    step = None if factory is None else factory(cell)
    return cell.step if step is None else step


def bias_sum(*biases: Tensor | None) -> Tensor | None:
    """The sum of the biases that are not None (None when none is)."""
    present = [b for b in biases if b is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else sum(present[1:], present[0])


# -- helpers ------------------------------------------------------------------------------------
#: the fewest values for which :func:`tanh_into` and :func:`sigmoid_with_tanh` take their
#: sigmoid's way (below, the three more calls cost more than the arithmetic they save)
TANH_BY_SIGMOID_MIN = 8192


def tanh_into(x: Tensor, out: Tensor) -> Tensor:
    """``tanh(x)`` into ``out`` (which may be ``x``); on the CPU, from
    :data:`TANH_BY_SIGMOID_MIN` values on, as ``2 sigmoid(2x) - 1``: ATen's CPU tanh is slower
    than its sigmoid (benchmarks/RESULTS.md, tenth session: 20 against 17 us at (20, 650),
    46 against 29 at (64, 512), 2 threads). The same function to rounding: an absolute error
    of about one unit in the last place of 1."""
    if not x.is_cpu or x.numel() < TANH_BY_SIGMOID_MIN:
        return torch.tanh(x, out=out)
    return torch.mul(x, 2, out=out).sigmoid_().mul_(2).sub_(1)


def sigmoid_with_tanh(pre: Tensor, out: Tensor, blocks: tuple[Tensor | None, ...], lo: int,
                      hi: int) -> Tensor:
    """``out = sigmoid(pre)`` except columns ``lo:hi``, which get ``tanh(pre)``, for (B, N)
    rows (the LSTM's and the minimal GRU's gates); returns ``out[:, lo:hi]``. ``blocks``: the
    views of out's columns ``:lo``, ``lo:hi``, ``hi:`` made once for the step (None where
    empty); ``pre`` may be ``out`` and may be changed in columns ``lo:hi``. On the CPU, from
    :data:`TANH_BY_SIGMOID_MIN` values on, one sigmoid over whole rows with the tanh columns
    as in :func:`tanh_into`: sigmoid, tanh and sigmoid over column blocks of several rows are
    strided passes, about twice its time (benchmarks/RESULTS.md, tenth session)."""
    if not pre.is_cpu or pre.numel() < TANH_BY_SIGMOID_MIN:
        first, mid, last = blocks
        if pre is out:  # in place, on the step's views (no slicing: batch 1 is call-bound)
            pre_first, pre_mid, pre_last = blocks
        else:
            pre_first, pre_mid, pre_last = pre[:, :lo], pre[:, lo:hi], pre[:, hi:]
        if first is not None:
            torch.sigmoid(pre_first, out=first)
        if last is not None:
            torch.sigmoid(pre_last, out=last)
        return torch.tanh(pre_mid, out=mid)
    pre[:, lo:hi].mul_(2)
    torch.sigmoid(pre, out=out)
    return blocks[1].mul_(2).sub_(1)


def sum_tb(x: Tensor) -> Tensor:
    """Sum over the time and batch dimensions of (T, B, N)."""
    return x.sum((0, 1))


def chunk_size(T: int) -> int:
    """Steps per chunk when whole-sequence work is done a part at a time: an eighth of T."""
    return -(-T // 8)


def chunks(T: int) -> Iterator[slice]:
    """The step ranges of :func:`chunk_size` chunks covering T steps, in order."""
    size = chunk_size(T)
    return (slice(lo, lo + size) for lo in range(0, T, size))


def dot_tb(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum((0, 1))`` for (T, B, N) tensors, an eighth of the steps at a time (no
    full-size product in memory)."""
    return sum(sum_tb(a[s] * b[s]) for s in chunks(a.shape[0]))


def grad_w(da: Tensor, h: Tensor) -> Tensor:
    """``sum_t da_t^T h_t`` as one GEMM (:mod:`rnnkit.gemm`): da (T, B, G), h (T, B, H) ->
    (G, H)."""
    return gemm.mm(da.reshape(-1, da.shape[-1]).t(), h.reshape(-1, h.shape[-1]), kind="wgrad")


class Steps:
    """The per-step views of a (T, ...) tensor (``x.unbind(0)``), made the first time one is
    asked for. The compiled loops read the buffers whole, so a run on them makes none: at
    T = 256 one tensor's views cost about 170 us, and a kernel makes twenty, a fifth of an
    LSTM's forward and backward at batch 1. :func:`materialize` turns them into tuples
    before a Python loop, whose steps then index plain tuples."""

    __slots__ = ("_make", "_views")

    def __init__(self, make: Callable[[], tuple[Tensor, ...]]) -> None:
        self._make: Callable[[], tuple[Tensor, ...]] | None = make
        self._views: tuple[Tensor, ...] | None = None

    def views(self) -> tuple[Tensor, ...]:
        """The views, made now if not yet."""
        if self._views is None:
            self._views, self._make = self._make(), None
        return self._views

    def __getitem__(self, t: int) -> Tensor:
        return self.views()[t]

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.views())

    def __len__(self) -> int:
        return len(self.views())


def steps(x: Tensor) -> Steps:
    """The per-step views of ``x`` (T, ...), made on first use (:class:`Steps`)."""
    return Steps(lambda: x.unbind(0))


def step_views(buf: Tensor, lo: int | None = None, hi: int | None = None) -> Steps:
    """Per-step views of ``buf[:, :, lo:hi]`` for a (T, B, N) buffer, made on first use."""
    return steps(buf[..., lo:hi])


def materialize(obj: object) -> None:
    """Replace every :class:`Steps` attribute of ``obj`` (and of its :class:`StepNorms`) by its
    tuple of views, before a loop in Python indexes them step by step."""
    for name, value in list(vars(obj).items()):
        if isinstance(value, Steps):
            setattr(obj, name, value.views())
        elif isinstance(value, StepNorms):
            materialize(value)


# -- layer normalisation, one step at a time ----------------------------------------------------
class StepNorms:
    """Per-step layer normalisations ``y_t = LN(a_t) * weight + bias`` over the last dimension.

    With ``buf`` (T, B, N) the caller writes each step's input into ``steps[t]``, and the
    backward pass overwrites it with that input's gradient once it is no longer needed, so
    :meth:`input_grads` costs no memory. Without, the inputs are views the caller keeps alive
    (the LSTM's cell buffer) and their gradients are only returned. Each step's gain and shift
    gradients are kept (a list append costs far less than a tensor addition at small batches)
    and summed at the end (``dweight``, ``dbias``); nothing is recomputed.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None,
                 buf: Tensor | None = None) -> None:
        self.weight, self.bias = weight, bias
        self.buf = buf
        self.steps = None if buf is None else steps(buf)
        self.inputs: list[Tensor] = []
        self.mean: list[Tensor] = []
        self.rstd: list[Tensor] = []
        self.mask = (True, True, bias is not None)
        self.shape = weight.shape  # the normalised shape, (N,)
        self.passes = 0

    def forward(self, a: Tensor) -> Tensor:
        """``LN(a) * weight + bias`` for the next step's input ``a`` (B, N); call in order."""
        y, mean, rstd = torch.native_layer_norm(a, self.shape, self.weight, self.bias, LN_EPS)
        self.inputs.append(a)
        self.mean.append(mean)
        self.rstd.append(rstd)
        return y

    def adopt(self, inputs: tuple[Tensor, ...] | list[Tensor], mean: Tensor, rstd: Tensor
              ) -> None:
        """Record what :meth:`forward` records, for steps the compiled loops ran: the inputs
        (one (B, N) view per step) and the means and rstds, (T, B, 1) each."""
        self.inputs = inputs
        self.mean, self.rstd = steps(mean), steps(rstd)

    def moments(self) -> list[Tensor]:
        """The recorded means and rstds stacked, (T, B, 1) each, as the compiled loops take
        them."""
        return [torch.stack(tuple(self.mean)), torch.stack(tuple(self.rstd))]

    def start_backward(self, inputs: tuple[Tensor, ...] = (),
                       weight: StepWeight | None = None, loops=None) -> None:
        """Forget the gain and shift gradients of a previous pass. A backward pass overwrote
        the stored inputs with their gradients, so from the second one on
        (``retain_graph=True``) the inputs are recomputed as ``inputs[t] @ B`` with the forward
        loop's ``weight``, step by step, bit for bit as in the forward: by the compiled
        ``loops`` when they ran it (their product rounds as ATen's does not)."""
        self.dweights: list[Tensor] = []
        self.dbiases: list[Tensor] = []
        self.passes += 1
        if self.passes > 1 and self.steps is not None:
            for x, a in zip(inputs, self.steps):
                if loops is None:
                    weight.addmm(None, x, out=a)
                else:
                    loops.step_mm(a, None, x, weight.b_for(loops.uses_small_mm),
                                  weight.packed)

    def backward(self, t: int, dy: Tensor) -> Tensor:
        """The gradient of step ``t``'s input from that of its output (stored in the buffer
        when there is one); the gain and shift gradients are accumulated."""
        da, dw, db = _LN_BACKWARD(dy, self.inputs[t], self.shape, self.mean[t], self.rstd[t],
                                  self.weight, self.bias, self.mask)
        self.dweights.append(dw)
        if db is not None:
            self.dbiases.append(db)
        if self.steps is not None:
            return self.steps[t].copy_(da)
        return da

    def input_grads(self) -> Tensor:
        """Every step's input gradient, (T, B, N), after the backward pass."""
        return self.buf

    @property
    def dweight(self) -> Tensor:
        """The gain's gradient, summed over the steps, after the backward pass."""
        return torch.stack(self.dweights).sum(0)

    @property
    def dbias(self) -> Tensor | None:
        """The shift's gradient (None without a shift), after the backward pass."""
        return None if self.bias is None else torch.stack(self.dbiases).sum(0)


# -- the protocol -------------------------------------------------------------------------------
class Kernel:
    """One cell family's forward and backward step for the ``bptt`` driver.

    ``xp`` is the input projection, (T, B, G), the kernel's own: the gates of step t are
    written over ``xp[t]`` once it is read, so the forward pass keeps no second (T, B, G).
    ``state_seqs`` holds the state sequences, (T + 1, B, n) each, with the initial state at
    index 0; ``state_steps[j][t]`` is the view of state j before step t. ``forward_step(t)``
    reads ``state_steps[j][t]`` and writes ``state_steps[j][t + 1]``. Everything is
    preallocated and every per-step view is made once (``unbind``), so a step costs only its
    arithmetic: at batch 1 the Python overhead per operation is the cost that matters.

    ``start_backward()`` turns the buffers the forward pass kept (named in ``consumed``) into
    the backward pass's, in place: each step's gradient factors that do not depend on the
    incoming gradient, computed for all steps at once. The backward pass thus needs little
    more memory than the forward pass kept. A backward pass that must leave the graph intact
    (``retain_graph=True``) runs on :meth:`keep`, a copy with copies of those buffers.

    ``backward_step(t, grads, base)`` receives the gradients of the states after step t,
    ``dL/da<t>`` (and ``dL/dc<t>``), and returns those of the states before it, ``dL/da<t-1>``
    (and ``dL/dc<t-1>``); ``base`` (or None) is to be added to the gradient of ``a<t-1>``
    (the GEMM that makes it takes it as its addend).
    """

    num_states: ClassVar[int] = 1
    consumed: ClassVar[tuple[str, ...]] = ()
    #: whether the input (xp, or x) needs a gradient; set before each backward pass
    needs_input_grad = True
    #: layer normalisation inside the recurrence (a kernel that has it sets it per instance)
    ln = False
    #: what only the forward GEMMs read: the forward loop's :class:`~rnnkit.gemm.StepWeight`
    #: (which holds the transposed recurrent weight), or a kernel's own transposed copy
    transposed: ClassVar[tuple[str, ...]] = ("w_hh_t", "fw")
    #: True when the kernel receives the layer input x instead of the input projection xp
    #: (and returns dL/dx and the input weights' gradients itself)
    owns_projection: ClassVar[bool] = False
    #: True when engines/csrc/recurrent_loops.cpp has this kernel's loops (its forward_loop
    #: and backward_loop then call them through :meth:`compiled_loops`)
    fused: ClassVar[bool] = False
    #: True when the kernel runs a layer-normalised cell (set by the kernels that have one):
    #: its compiled backward reaches FUSED_LN_MAX instead of FUSED_MAX
    ln: bool = False
    #: the layer norms' per-step means and rstds, (T, B, 1) each, when the compiled forward
    #: loop ran (its backward loop reads them); None otherwise
    stats: list[Tensor] | None = None
    #: the compiled loops module when it ran the forward pass (None: the Python loop did); a
    #: layer-normalised kernel's StepNorms recomputes that pass's products with it
    forward_loops = None

    def __init__(self, xp: Tensor, weights: tuple[Tensor | None, ...],
                 state_seqs: list[Tensor]) -> None:
        self.xp = xp
        self.T, self.B = xp.shape[:2]
        self.state_seqs = state_seqs
        self.state_steps = [steps(buf) for buf in state_seqs]
        self.xp_steps = steps(xp)

    def step_weight(self, w: Tensor, forward: bool) -> StepWeight:
        """The per-step products with a recurrent weight ``w`` (G, H) at this run's batch
        (:class:`~rnnkit.gemm.StepWeight`): forward ``a @ w^T`` (for ATen and the compiled
        loops ``w^T`` is made contiguous once, the StepWeight's ``b``: the GEMMs read it
        row-major), backward ``a @ w``."""
        return StepWeight.of_transpose(w, self.B) if forward else StepWeight(w, self.B)

    def _views(self) -> None:
        """(Re)make the per-step views of the ``consumed`` buffers."""

    def keep(self) -> Kernel:
        """A copy whose ``consumed`` buffers are copies, for a backward pass that must leave
        this kernel as the forward pass left it."""
        other = copy.copy(self)
        for name in self.consumed:
            buf = getattr(self, name)
            setattr(other, name, None if buf is None else buf.clone())
        other._views()
        return other

    def forward_step(self, t: int) -> None:
        raise NotImplementedError

    def compiled_loops(self, backward: bool = False):
        """The compiled loops module when they suit this run's forward (or ``backward``) loop:
        a ``fused`` kernel on the CPU, float32 or float64, a contiguous input projection and
        at most ``FUSED_FORWARD_MAX`` (backward: ``FUSED_MAX``, with layer norm
        ``FUSED_LN_MAX``) values of h per step, where a step's dozen tensor calls cost more
        than one fused pass; else None."""
        g = self.gates
        values = self.B * self.H  # of h, a step
        most = (FUSED_FORWARD_MAX if not backward
                else FUSED_LN_MAX if self.ln else FUSED_MAX)
        if not (self.fused and values <= most and g.device.type == "cpu"
                and g.dtype in (torch.float32, torch.float64) and g.is_contiguous()):
            return None
        return compiled.loops()

    def forward_loop(self, mask: Tensor | None) -> None:
        """Run :meth:`forward_step` over all steps; ``mask`` (T, B, 1) bool or None: a row
        outside its sequence keeps its state."""
        materialize(self)
        step = self.forward_step
        if mask is None:
            for t in range(self.T):
                step(t)
            return
        for t, m in enumerate(mask.unbind(0)):
            step(t)
            for seq in self.state_steps:
                torch.where(m, seq[t + 1], seq[t], out=seq[t + 1])

    def backward_loop(self, grads: list[Tensor], afters: tuple[Tensor | None, ...],
                      mask: Tensor | None) -> list[Tensor] | None:
        """Run :meth:`backward_step` from the last step to the first: ``grads`` are the last
        states' gradients, ``afters`` the gradients of the state sequences (T, B, n) from the
        outputs, None where unused. Returns the initial states' gradients, or None to leave a
        case (here: padding, or a used sequence other than h's) to the driver's general
        loop."""
        after = afters[0]
        if mask is not None or any(a is not None for a in afters[1:]):
            return None
        materialize(self)
        step = self.backward_step
        after_steps = None if after is None else after.unbind(0)
        for t in range(self.T - 1, 0, -1):
            grads = step(t, grads, None if after_steps is None else after_steps[t - 1])
        return step(0, grads, None)

    def end_forward(self) -> None:
        """Drop what only the forward pass needed: the input projection, and the transposed
        copies of the recurrent weights unless layer norm recomputes its inputs with them in a
        second backward pass (retain_graph=True)."""
        self.xp = self.xp_steps = None
        if not self.ln:
            for name in self.transposed:
                setattr(self, name, None)

    def start_backward(self) -> None:
        """Prepare the backward loop (see the class docstring)."""

    def backward_step(self, t: int, grads: list[Tensor], base: Tensor | None) -> list[Tensor]:
        raise NotImplementedError

    def end_backward(self) -> None:
        """Drop what only the backward loop needed, before the weight gradients are made."""

    def input_grad(self) -> Tensor:
        """The gradient of the input projection, (T, B, G); called after
        :meth:`weight_grads`, it may reuse buffers those needed."""
        raise NotImplementedError

    def weight_grads(self) -> tuple[Tensor | None, ...]:
        """The gradients of ``Plan.weights``, in their order (None where not needed)."""
        raise NotImplementedError
