"""Engines: float64 gradient checks of every cell under ``reference`` and ``bptt``, and all
engines agreeing on outputs, final states, per-step states and gradients."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from core_helpers import (
    CELL_CONFIGS,
    CELL_IDS,
    DT,
    NATIVE_IDS,
    assert_close,
    build_layer,
    cell_config,
    flat,
    functional,
    grads_of,
    numerical_vjp_check,
    perturb_,
    random_state,
)
from rnnkit.cells import LSTMCell, make_cell
from rnnkit.engines import resolve_engine
from rnnkit.layers import Bidirectional, Recurrent

T, B, I, H = 4, 3, 2, 3
def _split_states(layer: Recurrent, tensors: list[torch.Tensor]) -> object:
    return tensors[0] if layer.cell.num_states == 1 else tuple(tensors)


def _single(cell_id: str, engine: str, reverse: bool = False):
    """(fn, inputs) of one layer over uneven lengths from a given state."""
    layer = build_layer(cell_id, engine, I, H, reverse=reverse)
    x = torch.randn(B, T, I, dtype=DT)
    lengths = torch.tensor([4, 2, 3])
    state = flat(random_state(layer, B))

    def call(m, t):
        return m(t[0], _split_states(m, t[1:]), lengths=lengths)

    fn, params = functional(layer, call)
    return fn, [x, *state, *params]


def _bidirectional(cell_id: str, engine: str):
    """(fn, inputs) of a bidirectional layer (concat) over uneven lengths from given states."""
    fwd = build_layer(cell_id, engine, I, H, seed=0)
    bwd = build_layer(cell_id, engine, I, H, seed=1, reverse=True)
    layer = Bidirectional(fwd, bwd)
    x = torch.randn(B, T, I, dtype=DT)
    lengths = torch.tensor([3, 4, 1])
    sf, sb = flat(random_state(fwd, B, 1)), flat(random_state(bwd, B, 2))
    n = len(sf)

    def call(m, t):
        state = (_split_states(fwd, t[1:1 + n]), _split_states(bwd, t[1 + n:1 + 2 * n]))
        return m(t[0], state, lengths=lengths)

    fn, params = functional(layer, call)
    return fn, [x, *sf, *sb, *params]


def _reverse(cell_id: str, engine: str):
    return _single(cell_id, engine, reverse=True)


SCENARIOS = {"lengths": _single, "reverse": _reverse, "bidirectional": _bidirectional}


def _gradcheck_cases():
    for cell_id in CELL_IDS:
        for scenario in SCENARIOS:
            yield pytest.param(cell_id, "reference", scenario, id=f"{cell_id}-reference-{scenario}")
            yield pytest.param(cell_id, "bptt", scenario, id=f"{cell_id}-bptt-{scenario}")


@pytest.mark.parametrize(("cell_id", "engine", "scenario"), _gradcheck_cases())
def test_gradcheck(cell_id: str, engine: str, scenario: str) -> None:
    """torch.autograd.gradcheck w.r.t. the input, the initial states and every parameter."""
    torch.manual_seed(0)
    fn, inputs = SCENARIOS[scenario](cell_id, engine)
    inputs = [t.requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("cell_id", CELL_IDS)
def test_bptt_numerical_gradient(cell_id: str, scenario: str) -> None:
    """The bptt engine's gradients w.r.t. the input, the initial states and every parameter
    against central differences, one backward per forward (a second check beside gradcheck)."""
    torch.manual_seed(0)
    fn, inputs = SCENARIOS[scenario](cell_id, "bptt")
    numerical_vjp_check(fn, inputs)


# -- engines agree ------------------------------------------------------------------------------

def _run_layer(layer: Recurrent, x: torch.Tensor, state, lengths, return_states=False):
    x = x.clone().requires_grad_()
    state_leaves = [s.clone().requires_grad_() for s in flat(state)]
    st = None if state is None else _split_states(layer, state_leaves)
    res = layer(x, st, lengths=lengths, return_states=return_states)
    outs = flat(res)
    grads = grads_of(outs, [x, *state_leaves, *layer.parameters()])
    return outs, grads


def _engines_for(cell_id: str) -> list[str]:
    return ["reference", "bptt"] + (["native"] if cell_id in NATIVE_IDS else [])


@pytest.mark.parametrize("cell_id", CELL_IDS)
@pytest.mark.parametrize(("reverse", "with_lengths", "with_state", "batch_first"), [
    (False, False, False, True),
    (False, True, True, True),
    (True, True, True, False),
    (True, False, True, True),
])
def test_engines_agree(cell_id, reverse, with_lengths, with_state, batch_first) -> None:
    """Outputs, final states and gradients (input, initial state, parameters) are the same
    under every engine that supports the cell."""
    Tn, Bn, In, Hn = 5, 4, 3, 4
    torch.manual_seed(1)
    x = torch.randn(Bn, Tn, In, dtype=DT)
    if not batch_first:
        x = x.transpose(0, 1).contiguous()
    lengths = torch.tensor([2, 5, 1, 4]) if with_lengths else None
    results = {}
    for engine in _engines_for(cell_id):
        layer = build_layer(cell_id, engine, In, Hn, seed=5, reverse=reverse,
                            batch_first=batch_first)
        state = random_state(layer, Bn) if with_state else None
        results[engine] = _run_layer(layer, x, state, lengths)
    ref_out, ref_grads = results["reference"]
    for engine, (outs, grads) in results.items():
        assert_close(outs, ref_out, what=f"{engine} outputs")
        assert_close(grads, ref_grads, what=f"{engine} gradients")


@pytest.mark.parametrize("cell_id", CELL_IDS)
@pytest.mark.parametrize("steps", [8, 19])
def test_engines_agree_over_many_steps(cell_id: str, steps: int) -> None:
    """bptt works on chunks of steps in its backward pass (an eighth of T, the last one
    shorter when 8 does not divide T): over 8 and 19 steps, with uneven lengths and a
    batch-first input (a non-contiguous time-major view), it agrees with the reference."""
    torch.manual_seed(2)
    x = torch.randn(3, steps, 2, dtype=DT)
    lengths = torch.tensor([steps, steps - 5, 3])
    results = {}
    for engine in ("reference", "bptt"):
        layer = build_layer(cell_id, engine, 2, 3, seed=6, batch_first=True)
        results[engine] = _run_layer(layer, x, random_state(layer, 3), lengths)
    assert_close(results["bptt"][0], results["reference"][0], what="bptt outputs")
    assert_close(results["bptt"][1], results["reference"][1], what="bptt gradients")


@pytest.mark.parametrize("cell_id", CELL_IDS)
def test_engines_agree_on_per_step_states(cell_id: str) -> None:
    """``return_states=True``: the per-step states and their gradients agree across engines
    (native only for single-state cells: torch's kernels do not return c per step)."""
    torch.manual_seed(2)
    x = torch.randn(3, 4, 2, dtype=DT)
    lengths = torch.tensor([4, 1, 3])
    engines = ["reference", "bptt"]
    if cell_id in NATIVE_IDS and not cell_id.startswith("lstm"):
        engines.append("native")
    results = {}
    for engine in engines:
        layer = build_layer(cell_id, engine, 2, 3, seed=3, reverse=True)
        results[engine] = _run_layer(layer, x, random_state(layer, 3), lengths, True)
    for engine in engines[1:]:
        assert_close(results[engine][0], results["reference"][0], what=f"{engine} states")
        assert_close(results[engine][1], results["reference"][1], what=f"{engine} gradients")


def test_lstm_projection_native_matches_reference() -> None:
    """LSTM with proj_size: native and reference agree (bptt does not support it)."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, dtype=DT)
    lengths = torch.tensor([5, 2, 4])
    results = []
    for engine in ("reference", "native"):
        torch.manual_seed(7)
        cell = make_cell("lstm", 4, 5, proj_size=2).to(DT)
        layer = Recurrent(cell, engine=engine, reverse=True)
        state = (torch.randn(3, 2, dtype=DT), torch.randn(3, 5, dtype=DT))
        results.append(_run_layer(layer, x, state, lengths))
    assert results[0][0][1].shape == (3, 2) and results[0][0][2].shape == (3, 5)
    assert_close(results[1][0], results[0][0], what="outputs")
    assert_close(results[1][1], results[0][1], what="gradients")
    with pytest.raises(ValueError, match="engine='bptt'"):
        Recurrent(make_cell("lstm", 4, 5, proj_size=2), engine="bptt")


@pytest.mark.parametrize(("cell_id", "cpu_engine"), [
    ("lstm", "native"), ("rnn-tanh", "bptt"), ("rnn-relu", "bptt"), ("gru-after", "bptt"),
    ("gru-before", "bptt"), ("lstm-ln", "bptt"), ("gru-after-ln", "bptt"), ("peephole", "bptt"),
    ("gru-simple", "bptt"),
])
def test_auto_engine(cell_id: str, cpu_engine: str) -> None:
    """``auto`` picks native where torch's CPU kernel is faster (LSTM), bptt otherwise, and a
    supporting engine when per-step states are wanted."""
    layer = build_layer(cell_id, "auto")
    assert layer.engine_for(torch.device("cpu")) == cpu_engine
    need = resolve_engine("auto", layer.cell, torch.device("cpu"), need_states=True)
    assert need == ("bptt" if layer.cell.num_states == 2 else cpu_engine)


def test_every_configuration_listed() -> None:
    """Every cell name has at least one configuration under test (the scan cells, which no
    bptt kernel runs, in tests/test_scan.py)."""
    from rnnkit.cells import CELLS
    from rnnkit.engines.scan import SCAN_CELLS
    scan = {name for name, spec in CELLS.items() if spec.cls in SCAN_CELLS}
    assert scan == {"scan-gru", "scan-lstm", "qrnn"}
    assert {name for _, name, _ in CELL_CONFIGS} == set(CELLS) - scan


@pytest.mark.parametrize("cell_id", CELL_IDS)
def test_engines_agree_without_bias(cell_id: str) -> None:
    """bias=False: every engine agrees (the bias folding of bptt has nothing to fold)."""
    name, opts = cell_config(cell_id)
    torch.manual_seed(4)
    x = torch.randn(3, 5, 2, dtype=DT)
    lengths = torch.tensor([5, 1, 3])
    results = {}
    for engine in _engines_for(cell_id):
        torch.manual_seed(4)
        cell = perturb_(make_cell(name, 2, 3, bias=False, **opts).to(DT), 4, 0.3)
        layer = Recurrent(cell, engine=engine, reverse=True)
        results[engine] = _run_layer(layer, x, random_state(layer, 3), lengths)
    for engine, (outs, grads) in results.items():
        assert_close(outs, results["reference"][0], what=f"{engine} outputs")
        assert_close(grads, results["reference"][1], what=f"{engine} gradients")


@pytest.mark.parametrize("cell_id", CELL_IDS)
def test_bptt_backward_twice_with_retain_graph(cell_id: str) -> None:
    """The backward pass turns the forward's buffers into gradients in place; with
    retain_graph=True it works on copies, so a second pass gives the same gradients, and both
    equal those of the in-place pass of a fresh graph."""
    name, opts = cell_config(cell_id)
    torch.manual_seed(0)
    layer = Recurrent(make_cell(name, 3, 4, **opts), engine="bptt").double()
    x = torch.randn(2, 5, 3, dtype=torch.double, requires_grad=True)
    weights = [x, *layer.parameters()]
    out, _ = layer(x)
    g1 = torch.autograd.grad(out.sum(), weights, retain_graph=True)
    g2 = torch.autograd.grad(out.sum(), weights)
    g3 = torch.autograd.grad(layer(x)[0].sum(), weights)
    for a, b, c in zip(g1, g2, g3):
        assert torch.equal(a, b)
        assert torch.equal(a, c)


def test_bptt_second_backward_without_retain_graph_is_refused() -> None:
    layer = Recurrent(make_cell("lstm", 3, 4), engine="bptt").double()
    x = torch.randn(2, 5, 3, dtype=torch.double, requires_grad=True)
    out, _ = layer(x)
    out.sum().backward()
    with pytest.raises(RuntimeError, match=r"second time.*retain_graph=True"):
        out.sum().backward()


def test_bptt_double_backward_is_refused() -> None:
    layer = Recurrent(make_cell("gru", 3, 4), engine="bptt").double()
    x = torch.randn(2, 5, 3, dtype=torch.double, requires_grad=True)
    with pytest.raises(RuntimeError, match="differentiated twice"):
        torch.autograd.grad(layer(x)[0].sum(), x, create_graph=True)


def _compiler() -> str | None:
    """The C++ compiler torch's extension builder would use, if there is one."""
    return shutil.which(os.environ.get("CXX", "c++"))


@pytest.fixture(scope="module")
def compiled_loops():
    """The bptt engine's C++ step loops; the tests that need them skip, saying why, where
    they cannot be built (no C++ compiler)."""
    from rnnkit.engines import compiled

    if compiled.loops() is None:
        if _compiler() and not os.environ.get("RNNKIT_NO_COMPILED"):
            pytest.fail(f"a C++ compiler ({_compiler()}) is here but the bptt engine's C++ "
                        f"step loops were not built: the fast path would fall back silently")
        pytest.skip("the bptt engine's C++ step loops could not be built here (no C++ "
                    "compiler?) or are disabled (RNNKIT_NO_COMPILED); the Python loops ran")
    return compiled


@pytest.mark.parametrize("cell_id", ["lstm", "lstm-forget-bias", "lstm-ln", "peephole",
                                     "gru-after", "gru-after-ln", "gru-before",
                                     "gru-simple"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("with_lengths", "with_state"), [(False, False), (True, True)])
def test_compiled_loops_equal_python_loops(compiled_loops, cell_id, dtype, with_lengths,
                                           with_state) -> None:
    """The C++ loops compute what the Python ones compute: outputs, final states and every
    gradient agree (to rounding: the fused loops sum in another order), with and without
    padding, in float64 and float32, over more steps than a chunk."""
    torch.manual_seed(3)
    x = torch.randn(3, 11, 2, dtype=dtype)
    lengths = torch.tensor([11, 4, 7]) if with_lengths else None
    layer = build_layer(cell_id, "bptt", 2, 5, seed=4, batch_first=True).to(dtype)
    state = random_state(layer, 3) if with_state else None
    if state is not None:
        state = _split_states(layer, [s.to(dtype) for s in flat(state)])
    fast = _run_layer(layer, x, state, lengths)
    with compiled_loops.disabled():
        slow = _run_layer(layer, x, state, lengths)
    tol = {"rtol": 1e-11, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4,
                                                                           "atol": 1e-5}
    for a, b in zip(fast[0] + fast[1], slow[0] + slow[1]):
        torch.testing.assert_close(a, b, **tol)



@pytest.mark.parametrize("cell_id", ["lstm", "lstm-ln", "peephole", "gru-after",
                                     "gru-after-ln", "gru-before", "gru-simple"])
@pytest.mark.parametrize("backend", ["onednn", "aten"])
def test_compiled_loops_at_large_batches_equal_python_loops(compiled_loops, cell_id, backend,
                                                            monkeypatch) -> None:
    """Past small_mm's rows (24 > 16) the compiled loops' step products are oneDNN's on the
    kernels' packed weights, or ATen's: outputs and gradients as the Python loops make them,
    with padding and initial states, in float32 (their activations are their own
    vectorised ones)."""
    from rnnkit import gemm
    from rnnkit.engines.kernels import base

    if backend == "onednn" and not gemm.onednn_available():
        pytest.skip("this torch has no oneDNN")
    torch.manual_seed(5)
    for name in ("FUSED_FORWARD_MAX", "FUSED_MAX", "FUSED_LN_MAX"):  # compiled at any size
        monkeypatch.setattr(base, name, 10 ** 6)
    x = torch.randn(24, 9, 3)
    lengths = torch.randint(1, 10, (24,))
    layer = build_layer(cell_id, "bptt", 3, 6, seed=4, batch_first=True).float()
    state = _split_states(layer, [s.float() for s in flat(random_state(layer, 24))])
    spy = _Spy(compiled_loops.loops())
    with gemm.forced(backend):
        monkeypatch.setitem(compiled_loops._state, "module", spy)
        fast = _run_layer(layer, x, state, lengths)
        monkeypatch.setitem(compiled_loops._state, "module", spy.module)
        with compiled_loops.disabled():
            slow = _run_layer(layer, x, state, lengths)
    assert any(name.endswith("_forward") for name in spy.called), spy.called
    assert any(name.endswith("_backward") for name in spy.called), spy.called
    for a, b in zip(fast[0] + fast[1], slow[0] + slow[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell_id", ["lstm", "lstm-ln", "peephole", "gru-after",
                                     "gru-after-ln", "gru-before", "gru-simple"])
def test_compiled_loops_over_two_threads_equal_one(compiled_loops, cell_id, monkeypatch
                                                    ) -> None:
    """Past row_grain rows a step's elementwise work is split over the threads, the layer
    norms' gain and shift gradients summed a partial row per thread: outputs and every
    gradient on two threads as on one (float64, padding, initial states). The one test
    that runs two threads: it checks the split, and times nothing."""
    from rnnkit.engines.kernels import base

    for name in ("FUSED_FORWARD_MAX", "FUSED_MAX", "FUSED_LN_MAX"):  # compiled at any size
        monkeypatch.setattr(base, name, 10 ** 6)
    H = 16
    batch = 2 * compiled_loops.loops().row_grain(2 * H) + 3  # two shares at every width
    torch.manual_seed(6)
    x = torch.randn(batch, 5, 3, dtype=torch.float64)
    lengths = torch.randint(1, 6, (batch,))
    layer = build_layer(cell_id, "bptt", 3, H, seed=4, batch_first=True).double()
    state = _split_states(layer, [s.double() for s in flat(random_state(layer, batch))])
    spy = _Spy(compiled_loops.loops())
    monkeypatch.setitem(compiled_loops._state, "module", spy)
    one = _run_layer(layer, x, state, lengths)
    torch.set_num_threads(2)
    try:
        two = _run_layer(layer, x, state, lengths)
    finally:
        torch.set_num_threads(1)
    kind = _loops_name(cell_id)
    assert f"{kind}_forward" in spy.called and f"{kind}_backward" in spy.called, spy.called
    for a, b in zip(two[0] + two[1], one[0] + one[1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


# -- dispatch by exact type: a subclass that changes step is never run by its parent's kernel --
class _ScaledLSTMCell(LSTMCell):
    """An LSTM whose output is halved: a changed step that no fast engine knows."""

    def step(self, x_t, state, params=None):
        h, (_, c) = super().step(x_t, state, params)
        return 0.5 * h, (0.5 * h, c)


@pytest.mark.parametrize("engine", ["auto", "reference", "bptt", "native"])
def test_subclass_that_overrides_step_is_honoured(engine) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cell = _ScaledLSTMCell(3, 4).double()
    x = torch.randn(5, 6, 3, dtype=torch.double)
    if engine in ("bptt", "native"):
        with pytest.raises(ValueError, match="_ScaledLSTMCell"):
            Recurrent(cell, engine=engine)
        return
    out, _ = Recurrent(cell, engine=engine)(x)
    state = (torch.zeros(5, 4, dtype=torch.double),) * 2
    expected = []
    for x_t in x.unbind(1):
        h, state = cell.step(x_t, state)
        expected.append(h)
    torch.testing.assert_close(out, torch.stack(expected, 1), rtol=0, atol=1e-12)
    plain = LSTMCell(3, 4).double()
    plain.load_state_dict(cell.state_dict())
    assert not torch.allclose(out, Recurrent(plain, engine=engine)(x)[0])
    assert cell.native_mode is None and plain.native_mode == "LSTM"


class _Spy:
    """The compiled loops module, noting the name of every loop called."""

    def __init__(self, module) -> None:
        self.module, self.called = module, []

    def __getattr__(self, name: str):
        if name.endswith(("_forward", "_backward")):  # the loops, not their helpers
            self.called.append(name)
        return getattr(self.module, name)


@pytest.mark.parametrize("cell_id", ["lstm", "gru-after", "lstm-ln", "peephole", "gru-before",
                                     "gru-simple"])
def test_the_compiled_loops_are_used_forward_and_backward(compiled_loops, cell_id,
                                                           monkeypatch) -> None:
    """Where the loops are built, the bptt engine runs its forward and backward in them (at
    a small batch): a silent fall-back to the Python loops fails here."""
    spy = _Spy(compiled_loops.loops())
    monkeypatch.setitem(compiled_loops._state, "module", spy)
    layer = build_layer(cell_id, "bptt", 3, 4, seed=1).float()
    out, _ = layer(torch.randn(5, 2, 3, requires_grad=True))
    out.sum().backward()
    kind = _loops_name(cell_id)
    assert f"{kind}_forward" in spy.called and f"{kind}_backward" in spy.called, spy.called


def _loops_name(cell_id: str) -> str:
    """The prefix of a cell's compiled loops (``lstm`` for lstm_forward / lstm_backward)."""
    return {"peephole": "lstm", "gru-before": "gru_before",
            "gru-simple": "minimal_gru"}.get(cell_id, cell_id.split("-")[0])


@pytest.mark.parametrize("cell_id", ["lstm", "lstm-ln", "peephole", "gru-after",
                                     "gru-after-ln", "gru-before", "gru-simple"])
@pytest.mark.parametrize("mixed", ["compiled forward, python backward (recording)",
                                   "python forward, compiled backward"])
def test_mixed_compiled_and_python_paths(compiled_loops, cell_id, mixed, monkeypatch) -> None:
    """A cell whose forward ran in the C++ loops and whose backward runs in Python (under
    record_state_grads, or at a batch past FUSED_MAX and within FUSED_FORWARD_MAX), or the
    reverse, gets the reference engine's gradients: reversed, with padding, in float64."""
    from rnnkit.engines import record_state_grads

    torch.manual_seed(5)
    x = torch.randn(3, 9, 2, dtype=torch.float64)
    lengths = torch.tensor([9, 4, 6])
    want = _run_layer(build_layer(cell_id, "reference", 2, 4, seed=6, batch_first=True,
                                  reverse=True), x, None, lengths)
    layer = build_layer(cell_id, "bptt", 2, 4, seed=6, batch_first=True, reverse=True)
    xs = x.clone().requires_grad_()
    spy = _Spy(compiled_loops.loops())
    monkeypatch.setitem(compiled_loops._state, "module", spy)
    kind = _loops_name(cell_id)
    if mixed.startswith("compiled forward"):
        with record_state_grads() as rec:
            outs = flat(layer(xs, lengths=lengths))
            grads = grads_of(outs, [xs, *layer.parameters()])
        assert rec.runs and rec.runs[0] is not None
    else:
        with compiled_loops.disabled():
            outs = flat(layer(xs, lengths=lengths))
        grads = grads_of(outs, [xs, *layer.parameters()])
    ran = ([f"{kind}_forward"] if mixed.startswith("compiled forward")
           else [f"{kind}_backward"])
    assert spy.called == ran  # the one half in C++, the other in Python
    for a, b in zip(outs + list(grads), want[0] + list(want[1])):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
