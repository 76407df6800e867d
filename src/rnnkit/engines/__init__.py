"""Engines run a cell over a whole sequence.

- ``reference``: a Python loop over ``cell.step``, autograd does the backward (the oracle);
  it runs every cell, a user's too;
- ``bptt``: hand-written backpropagation through time, for the cells with a kernel registered
  for their exact class (``rnnkit.engines.kernels``);
- ``native``: torch's fused kernels, for the cells that are exactly torch's (``native_mode``);
- ``scan``: the cells whose state update is elementwise linear (``rnnkit.cells.scan``): one
  GEMM over all steps and a linear scan with a hand-written backward;
- ``auto``: the fastest of these that supports the configuration, so a subclass that changes
  ``step`` without registering a kernel runs on ``reference``.

Every engine takes time-major input (T, B, I); layers transpose at this boundary.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from rnnkit import gemm
from rnnkit.cells.base import Params, RecurrentCell, check_choice
from rnnkit.engines.bptt import bptt_supports, run_bptt
from rnnkit.engines.native import run_native
from rnnkit.engines.reference import run_reference
from rnnkit.engines.scan import run_scan, scan_supports
from rnnkit.engines.state_grads import StateGradRecord, record_state_grads

ENGINES = ("auto", "reference", "bptt", "native", "scan")

# Cells for which torch's fused CPU kernel beats the bptt engine (benchmarks/bench_layers.py):
# oneDNN fuses the LSTM. torch has no fused GRU on CPU, and its tanh/relu RNN runs a generic
# loop that bptt beats too (0.45-0.78x of its time, fwd+bwd, 1 thread, measured 2026-11-26).
_NATIVE_FASTEST_ON_CPU = ("LSTM",)


class EngineResult(NamedTuple):
    """What an engine returns, time-major.

    Attributes:
        output: (T, B, H_out), zero past each sequence's length.
        state: the final state, a tuple of (B, n): each sequence's state after its last step.
        states: one (T, B, n) tensor per state tensor (zero past each length), or ``None`` when
            not asked for.
    """

    output: Tensor
    state: tuple[Tensor, ...]
    states: tuple[Tensor, ...] | None


def supports(engine: str, cell: RecurrentCell, need_states: bool = False) -> bool:
    """Whether ``engine`` can run ``cell``; ``need_states``: the per-step states are wanted."""
    if engine == "reference":
        return True
    if engine == "bptt":
        return bptt_supports(cell)
    if engine == "native":
        return cell.native_mode is not None and not (need_states and cell.num_states > 1)
    if engine == "scan":
        return scan_supports(cell)
    return True


def resolve_engine(engine: str, cell: RecurrentCell, device: torch.device,
                   need_states: bool = False, batch_size: int | None = None) -> str:
    """The concrete engine for ``engine`` (which may be ``"auto"``) on ``device``.

    ``"auto"`` on the CPU, for a float32 cell that both ``native`` and ``bptt`` run, with
    ``batch_size`` known and choices measured (:func:`rnnkit.gemm.measuring`): the faster of
    the two at this batch and size, forward and backward over 16 steps, measured on the
    machine and cached with the GEMM layer's choices (:func:`rnnkit.gemm.remembered`).
    Otherwise a fixed rule: ``native`` off the CPU and for torch's fused LSTM on it, else
    ``bptt`` where a kernel is registered."""
    check_choice("engine", engine, ENGINES)
    if engine != "auto":
        if not supports(engine, cell, need_states):
            why = {"bptt": "no bptt kernel is registered for this exact class",
                   "native": "torch has no fused kernel for this exact class and options",
                   "scan": "only the scan cells (scan-gru, scan-lstm, qrnn) run on it"}
            raise ValueError(f"engine={engine!r} does not support {cell!r}"
                             + (" with per-step states" if need_states else "")
                             + f" ({type(cell).__qualname__}: {why.get(engine, '')}); use "
                             f"engine='auto' or 'reference'")
        return engine
    if scan_supports(cell):
        return "scan"
    native_ok = supports("native", cell, need_states)
    if native_ok and device.type == "cpu" and batch_size and bptt_supports(cell) \
            and gemm.measuring() and cell.weight_hh.dtype == torch.float32:
        key = f"engine:{type(cell).__qualname__}:{cell.native_mode}:" \
              f"{gemm.size_class(batch_size)}:{cell.input_size}:{cell.hidden_size}"
        return gemm.remembered(key, lambda: _faster_engine(cell, batch_size))
    if native_ok and (device.type != "cpu" or cell.native_mode in _NATIVE_FASTEST_ON_CPU):
        return "native"
    if bptt_supports(cell):
        return "bptt"
    return "native" if native_ok else "reference"


def _faster_engine(cell: RecurrentCell, batch_size: int, steps: int = 16) -> str:
    """``"native"`` or ``"bptt"``, whichever runs ``cell`` forward and backward over ``steps``
    steps of ``batch_size`` faster here (on copies of its weights)."""
    x = torch.randn(steps, batch_size, cell.input_size)
    params = {k: v.detach().clone().requires_grad_() for k, v in cell.params().items()}
    state = tuple(torch.zeros(batch_size, n) for n in cell.state_sizes())

    def timed(engine: str):
        def go() -> None:
            with torch.enable_grad():
                run(engine, cell, params, x, state, None).output.sum().backward()
        return go

    return gemm.fastest({"native": timed("native"), "bptt": timed("bptt")})


def run(engine: str, cell: RecurrentCell, params: Params, x: Tensor,
        state: tuple[Tensor, ...], lengths: Tensor | None, need_states: bool = False
        ) -> EngineResult:
    """Run ``cell`` over ``x`` (T, B, I) from ``state`` with a concrete engine.

    ``lengths`` (B,) on x's device, or ``None`` when every sequence has all T steps.
    """
    if engine == "native":
        out, final = run_native(cell, params, x, state, lengths)
        return EngineResult(out, final, (out,) if need_states else None)
    mask = None
    if lengths is not None:
        steps = torch.arange(x.shape[0], device=x.device)
        mask = (steps[:, None] < lengths[None, :]).unsqueeze(-1)  # (T, B, 1)
    runner = {"bptt": run_bptt, "scan": run_scan}.get(engine, run_reference)
    seqs = runner(cell, params, x, state, mask)
    final = tuple(s[-1] for s in seqs)
    if mask is not None:
        seqs = tuple(s * mask for s in seqs)
    out = seqs[0]
    return EngineResult(out, final, seqs if need_states else None)


__all__ = [
    "ENGINES",
    "EngineResult",
    "StateGradRecord",
    "record_state_grads",
    "resolve_engine",
    "run",
    "supports",
]
