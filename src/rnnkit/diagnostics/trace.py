"""Tracing the recurrent layers of any rnnkit model: inputs, per-step states and state probes.

Every :class:`rnnkit.layers.Recurrent` layer runs its cell through ``rnnkit.engines.run``.
:func:`trace` temporarily routes those calls for the layers of one model through a step loop
that records, per layer (and direction):

- the time-major input ``x`` (T, B, I) the engine received (after reversal and dropout), the
  parameters and the initial state, so gates and Jacobians can be recomputed afterwards;
- the state after every step, one (T, B, n) tensor per state tensor (h, and c for LSTMs);
- with ``probes=True``, a zero "probe" tensor (T, B, n) per state tensor, *added* to the state
  after each step. Its gradient is the **total** derivative dL/ds_t of the loss with respect to
  the state after step t, through every later step of the recurrence and every layer above;
  the per-step states of ``return_states=True`` only see their direct uses.

Two ways to run the steps (``mode``):

- ``"reference"``: ``cell.step`` in a Python loop (the reference engine, with probes);
- ``"engine"``: the layer's own engine. A ``bptt`` layer runs its whole sequence once and its
  hand-written backward records dL/ds_t for every step (``rnnkit.engines.record_state_grads``;
  a zero probe on the initial state makes the backward pass run). Other engines (``native``)
  are called on one step at a time, the state carried from call to call with the probe added
  in between; that measures the engine's own backward without changing it, at T calls.

Ordinary training never goes through this module: nothing is slowed down when no trace is
active. Stacks that run torch's fused multi-layer kernel in one call (native stacks, the
drop-ins ``rnnkit.LSTM`` ...) are made to run layer by layer during a trace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rnnkit import engines
from rnnkit.cells.base import Params, RecurrentCell, as_tuple, check_choice, from_tuple
from rnnkit.engines import StateGradRecord, record_state_grads
from rnnkit.layers.recurrent import Recurrent
from rnnkit.layers.stacking import Stacked

MODES = ("reference", "engine")


@dataclass
class LayerRecord:
    """What one run of one recurrent layer (one direction) did, time-major.

    Attributes:
        name: the layer's module path in the model (``"stack.layers.1.bwd"``).
        cell: the layer's cell.
        reverse: whether the layer runs backwards in time; every tensor here is in the
            order the cell processed the steps.
        x: (T, B, I) the input the cell read, detached.
        params: the parameters the step read (DropConnect applied), detached.
        state0: the initial state, a tuple of (B, n), detached.
        states: the state after every step, a tuple of (T, B, n), detached.
        mask: (T, B, 1) bool, True inside each sequence, or ``None`` (every step valid).
        probes: the probe tensors (T, B, n) per state tensor, or empty without probes; for a
            ``bptt`` run recorded by the engine, the zero probes (B, n) on the initial state.
        recorded: ``(record, index)`` when the ``bptt`` engine records this run's dL/ds_t in
            ``record.runs[index]``, else ``None``.
    """

    name: str
    cell: RecurrentCell
    reverse: bool
    x: Tensor
    params: Params
    state0: tuple[Tensor, ...]
    states: tuple[Tensor, ...]
    mask: Tensor | None
    probes: tuple[Tensor, ...] = ()
    recorded: tuple[StateGradRecord, int] | None = None

    @property
    def state_names(self) -> tuple[str, ...]:
        """``("h",)`` or ``("h", "c")``."""
        return ("h", "c")[: self.cell.num_states]


@dataclass
class Trace:
    """The records of every traced layer call, in the order the calls happened."""

    records: list[LayerRecord] = field(default_factory=list)
    bptt_record: StateGradRecord | None = None

    def probes(self) -> list[Tensor]:
        """Every probe tensor, flattened in record order."""
        return [p for r in self.records for p in r.probes]


def recurrent_layers(model: nn.Module) -> dict[RecurrentCell, str]:
    """The cells of every :class:`Recurrent` layer in ``model``, with the layer's module path."""
    found = {m.cell: name or "<model>" for name, m in model.named_modules()
             if isinstance(m, Recurrent)}
    if not found:
        raise ValueError(f"model ({type(model).__name__}) has no rnnkit Recurrent layer to trace")
    return found


def _probe_run(original, mode: str, record_to: Trace, name: str, reverse: bool, probes: bool,
               engine: str, cell: RecurrentCell, params: Params, x: Tensor,
               state: tuple[Tensor, ...], lengths: Tensor | None, need_states: bool = False
               ) -> engines.EngineResult:
    """``rnnkit.engines.run`` with probes, one step at a time (see the module docstring)."""
    T, B = x.shape[:2]
    mask = None
    if lengths is not None:
        steps = torch.arange(T, device=x.device)
        mask = (steps[:, None] < lengths[None, :]).unsqueeze(-1)  # (T, B, 1)
    sizes = [s.shape[-1] for s in state]
    recorder = record_to.bptt_record
    if mode == "engine" and engine == "bptt" and recorder is not None:
        probe0 = tuple(torch.zeros_like(s, requires_grad=True) for s in state) if (
            probes and torch.is_grad_enabled()) else ()
        start = tuple(s + p for s, p in zip(state, probe0)) if probe0 else state
        index = len(recorder.runs)
        res = original(engine, cell, params, x, start, lengths, True)
        record_to.records.append(LayerRecord(
            name=name, cell=cell, reverse=reverse, x=x.detach(),
            params={k: v.detach() for k, v in params.items() if v is not None},
            state0=tuple(s.detach() for s in state),
            states=tuple(s.detach() for s in res.states), mask=mask, probes=probe0,
            recorded=(recorder, index) if probe0 else None))
        return res if need_states else engines.EngineResult(res.output, res.state, None)
    probe = tuple(torch.zeros(T, B, n, dtype=x.dtype, device=x.device, requires_grad=True)
                  for n in sizes) if probes and torch.is_grad_enabled() else ()
    probe_steps = [p.unbind(0) for p in probe]
    seqs: list[list[Tensor]] = [[] for _ in state]
    current = state
    for t, x_t in enumerate(x.split(1, dim=0)):
        if mode == "reference":
            _, new = cell.step(x_t[0], from_tuple(cell, current), params)
            new = as_tuple(new)
        else:
            new = tuple(original(engine, cell, params, x_t, current, None, False).state)
        if mask is not None:
            new = tuple(torch.where(mask[t], n, s) for n, s in zip(new, current))
        if probe:
            new = tuple(n + p[t] for n, p in zip(new, probe_steps))
        current = new
        for seq, s in zip(seqs, current):
            seq.append(s)
    stacked = tuple(torch.stack(seq) for seq in seqs)
    final = tuple(s[-1] for s in stacked)
    if mask is not None:
        stacked = tuple(s * mask for s in stacked)
    record_to.records.append(LayerRecord(
        name=name, cell=cell, reverse=reverse, x=x.detach(),
        params={k: v.detach() for k, v in params.items() if v is not None},
        state0=tuple(s.detach() for s in state), states=tuple(s.detach() for s in stacked),
        mask=mask, probes=probe))
    return engines.EngineResult(stacked[0], final, stacked if need_states else None)


def _never_fused(device: torch.device) -> None:
    return None


@contextlib.contextmanager
def trace(model: nn.Module, *, probes: bool = True, mode: str = "reference"
          ) -> Iterator[Trace]:
    """Record every recurrent layer of ``model`` run inside the ``with`` block.

    Args:
        model: any module holding rnnkit :class:`Recurrent` layers (directly, in a
            ``Stacked``/``Bidirectional``, in a drop-in ``rnnkit.LSTM``, in a task model).
        probes: add zero probe tensors to every step's state (see the module docstring).
        mode: ``"reference"`` (``cell.step`` loop) or ``"engine"`` (each layer's own engine,
            one step per call).

    Yields a :class:`Trace` that fills up as the model runs. Not thread-safe: it replaces
    ``rnnkit.engines.run`` for the duration of the block (other models run as usual).
    """
    check_choice("mode", mode, MODES)
    cells = recurrent_layers(model)
    reverse = {m.cell: m.reverse for m in model.modules() if isinstance(m, Recurrent)}
    result = Trace()
    original = engines.run

    def run(engine, cell, params, x, state, lengths, need_states=False):
        if cell not in cells:
            return original(engine, cell, params, x, state, lengths, need_states)
        return _probe_run(original, mode, result, cells[cell], reverse[cell], probes, engine,
                          cell, params, x, state, lengths, need_states)

    # stacks (and the drop-ins built on them) that would run torch's fused multi-layer kernel
    # in one call run layer by layer during the trace
    stacks = [m for m in model.modules() if isinstance(m, Stacked)]
    engines.run = run
    for m in stacks:
        m.fused_mode = _never_fused
    try:
        if mode == "engine":
            with record_state_grads() as record:
                result.bptt_record = record
                yield result
        else:
            yield result
    finally:
        engines.run = original
        for m in stacks:
            del m.fused_mode
