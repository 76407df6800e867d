"""The scan cells (minGRU, minLSTM, QRNN) and the scan engine: float64 gradient checks of the
linear scan, equality with the reference engine (padding, initial states, reverse,
bidirectional, every window), step() equal to the scan, and the cells in a task."""

import pytest
import torch

from rnnkit.cells import make_cell
from rnnkit.cells.base import as_tuple
from rnnkit.cli import main
from rnnkit.engines import resolve_engine
from rnnkit.engines.scan import linear_scan
from rnnkit.layers import Bidirectional
from rnnkit.layers.recurrent import Recurrent

CASES = [("scan-gru", {}), ("scan-gru", {"positive": True}), ("scan-lstm", {}),
         ("scan-lstm", {"positive": True}), ("qrnn", {}), ("qrnn", {"window": 1})]


def test_linear_scan_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(6, 3, 4, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(6, 3, 4, generator=g, dtype=torch.float64).requires_grad_()
    c0 = torch.randn(3, 4, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(linear_scan, (a, b, c0))
    # and it is the recurrence
    c, prev = linear_scan(a, b, c0), c0
    for t in range(6):
        prev = a[t] * prev + b[t]
        assert torch.allclose(c[t], prev)


def test_the_qrnn_window_equals_the_concatenation_and_its_gradient():
    """[x<t-1>, x<t>] in one autograd node: the values and gradients of the plain
    concatenation of a shifted copy, gradcheck in float64 (the last input too), T = 1 too."""
    from rnnkit.cells.scan import _Window

    g = torch.Generator().manual_seed(4)
    for T in (5, 1):
        x = torch.randn(T, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
        last = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
        got = _Window.apply(x, last)
        want = torch.cat([torch.cat([last.unsqueeze(0), x[:-1]]), x], dim=-1)
        assert torch.equal(got, want)
        weight = torch.randn(got.shape, generator=g, dtype=torch.float64)
        for a, b in zip(torch.autograd.grad((got * weight).sum(), [x, last]),
                        torch.autograd.grad((want * weight).sum(), [x, last])):
            assert torch.equal(a, b)
        assert torch.autograd.gradcheck(_Window.apply, (x, last))
        assert torch.autograd.gradgradcheck(_Window.apply, (x, last))


def _offset(state, by=0.3):
    return tuple(s + by for s in state) if isinstance(state, tuple) else state + by


@pytest.mark.parametrize("name,opts", CASES)
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_engine_equals_reference(name, opts, reverse):
    """Outputs, final states and every gradient, with padding and a non-zero initial state."""
    torch.manual_seed(1)
    cell = make_cell(name, 5, 7, **opts).double()
    x = torch.randn(3, 6, 5, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 4, 1])
    state = _offset(cell.init_state(3, dtype=torch.float64))
    got = {}
    for engine in ("reference", "scan"):
        layer = Recurrent(cell, engine=engine, reverse=reverse)
        out, final = layer(x, state, lengths=lengths)
        weight = torch.arange(out.numel(), dtype=torch.float64).view_as(out).sin()
        loss = (out * weight).sum() + sum(f.square().sum() for f in as_tuple(final))
        grads = torch.autograd.grad(loss, [x, *cell.parameters()])
        got[engine] = (out, as_tuple(final), grads)
    ref, scan = got["reference"], got["scan"]
    assert torch.allclose(ref[0], scan[0], atol=1e-12)
    for a, b in zip(ref[1], scan[1]):
        assert torch.allclose(a, b, atol=1e-12)
    for a, b in zip(ref[2], scan[2]):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("name,opts", CASES)
def test_gradcheck_through_the_scan_engine(name, opts):
    torch.manual_seed(2)
    cell = make_cell(name, 3, 4, **opts).double()
    layer = Recurrent(cell, engine="scan")
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 3])
    assert torch.autograd.gradcheck(lambda x: layer(x, lengths=lengths)[0], (x,))


@pytest.mark.parametrize("name,opts", CASES)
def test_step_continues_the_scan(name, opts):
    """Token by token from a state equals the scan over the whole sequence (decoding)."""
    torch.manual_seed(3)
    cell = make_cell(name, 4, 6, **opts)
    x = torch.randn(2, 9, 4)
    layer = Recurrent(cell, engine="scan")
    out, final = layer(x)
    state = cell.init_state(2)
    steps = []
    for t in range(9):
        h, state = cell.step(x[:, t], state)
        steps.append(h)
    assert torch.allclose(torch.stack(steps, 1), out, atol=1e-6)
    for a, b in zip(as_tuple(state), as_tuple(final)):
        assert torch.allclose(a, b, atol=1e-6)
    # a sequence split in two, the second half from the first's final state
    first, mid = layer(x[:, :4])
    second, _ = layer(x[:, 4:], mid)
    assert torch.allclose(torch.cat([first, second], 1), out, atol=1e-6)


def test_bidirectional_scan_equals_reference():
    torch.manual_seed(4)
    cells = [make_cell("scan-lstm", 5, 6), make_cell("scan-lstm", 5, 6)]
    x = torch.randn(3, 7, 5)
    lengths = torch.tensor([7, 2, 5])
    outs = []
    for engine in ("reference", "scan"):
        layer = Bidirectional(Recurrent(cells[0], engine=engine),
                              Recurrent(cells[1], engine=engine, reverse=True))
        outs.append(layer(x, lengths=lengths)[0])
    assert torch.allclose(outs[0], outs[1], atol=1e-6)


def test_auto_picks_scan_and_other_engines_refuse():
    cell = make_cell("qrnn", 4, 4)
    assert resolve_engine("auto", cell, torch.device("cpu")) == "scan"
    with pytest.raises(ValueError, match="scan-gru, scan-lstm, qrnn"):
        resolve_engine("scan", make_cell("lstm", 4, 4), torch.device("cpu"))
    with pytest.raises(ValueError, match="bptt"):
        resolve_engine("bptt", cell, torch.device("cpu"))
    with pytest.raises(ValueError, match="window must be 1 or 2"):
        make_cell("qrnn", 4, 4, window=3)


@pytest.mark.parametrize("cell", ["scan-gru", "scan-lstm", "qrnn"])
def test_a_language_model_of_scan_cells_trains_and_generates(cell, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat.\n" * 200)
    out = tmp_path / cell
    assert main(["train", "lm", "--train", str(text), "--cell", cell, "--num-layers", "2",
                 "--hidden-size", "32", "--embedding-size", "16", "--max-steps", "40",
                 "--batch-size", "8", "--bptt", "32", "--lr", "0.01", "--out", str(out),
                 "--no-progress", "--sample-length", "30"]) == 0
    log = [line for line in (out / "log.jsonl").read_text().splitlines() if '"train"' in line]
    assert log
    capsys.readouterr()
    assert main(["generate", str(out), "--max-new-tokens", "20", "--seed", "1"]) == 0
    assert capsys.readouterr().out


def test_the_notes_simplified_gru_is_renamed_and_old_runs_load(tmp_path, capsys):
    """``mingru`` (the notes' simplified GRU) is now ``gru-simple``, not Feng et al.'s minGRU
    (``scan-gru``): the old name still builds the same cell, with a DeprecationWarning, and a
    run directory written before the rename (config format 1) loads as that cell."""
    import json

    from rnnkit.cells import MinimalGRUCell

    with pytest.warns(DeprecationWarning, match="now called 'gru-simple'"):
        cell = make_cell("mingru", 3, 4)
    assert type(cell) is MinimalGRUCell
    text = tmp_path / "t.txt"
    text.write_text("abc abd abe\n" * 50)
    run = tmp_path / "run"
    with pytest.warns(DeprecationWarning):
        assert main(["train", "lm", "--train", str(text), "--cell", "mingru", "--num-layers",
                     "1", "--hidden-size", "8", "--embedding-size", "4", "--max-steps", "2",
                     "--batch-size", "2", "--bptt", "8", "--out", str(run), "--no-progress",
                     "--sample-length", "0"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["format"] == 2 and config["model"]["cell"] == "gru-simple"
    config["format"], config["model"]["cell"] = 1, "mingru"  # as the release before wrote it
    (run / "config.json").write_text(json.dumps(config))
    from rnnkit.tasks.lm import load_lm

    model, _, loaded = load_lm(run)
    assert loaded["model"]["cell"] == "gru-simple"
    assert type(model.rnn.layers[0].cell) is MinimalGRUCell
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(text), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] > 0


@pytest.mark.parametrize("name,opts", CASES)
def test_the_compiled_scan_is_used_and_equals_the_torch_op_loop(monkeypatch, name, opts):
    """On the CPU the scan cells' gates and recurrence run in the compiled loops, one pass each
    way (where a C++ compiler is, they must build: CI fails rather than fall back silently),
    and give the values and gradients of the torch-op path (the cell's coefficients by
    autograd and the linear scan), with padding and non-zero initial states."""
    import contextlib
    import os
    import shutil

    from rnnkit.engines import compiled

    if compiled.loops() is None:
        if shutil.which(os.environ.get("CXX", "c++")) and not os.environ.get("RNNKIT_NO_COMPILED"):
            pytest.fail("a C++ compiler is here but the compiled loops were not built")
        pytest.skip("no compiled loops here (no C++ compiler, or RNNKIT_NO_COMPILED)")
    called = []
    module = compiled.loops()

    class Spy:
        def __getattr__(self, attr):
            called.append(attr)
            return getattr(module, attr)

    for dtype in (torch.float64, torch.float32):
        torch.manual_seed(7)
        cell = make_cell(name, 6, 40, **opts).to(dtype)
        x = torch.randn(5, 30, 6, dtype=dtype, requires_grad=True)  # batch first
        lengths = torch.tensor([30, 17, 1, 2, 29])
        state = _offset(cell.init_state(5, dtype=dtype))
        weight = torch.randn(5, 30, 40, dtype=dtype)
        results = []
        for use_compiled in (True, False):
            monkeypatch.setitem(compiled._state, "module", Spy() if use_compiled else module)
            with contextlib.nullcontext() if use_compiled else compiled.disabled():
                out, final = Recurrent(cell, engine="scan")(x, state, lengths=lengths)
                loss = (out * weight).sum() + sum(f.sin().sum() for f in as_tuple(final))
                results.append((out, *as_tuple(final),
                                *torch.autograd.grad(loss, [x, *cell.parameters()])))
        tol = 1e-12 if dtype == torch.float64 else 2e-5
        for a, b in zip(*results):
            assert torch.allclose(a, b, atol=tol, rtol=tol)
    assert "gated_scan_forward" in called and "gated_scan_backward" in called


@pytest.mark.parametrize("name,opts", CASES)
def test_the_compiled_scan_gradcheck_float64(name, opts):
    """float64 gradcheck of the compiled kernels, through every input: x and the initial state
    (h and c for the QRNN), with padding."""
    from rnnkit.engines import compiled

    if compiled.loops() is None:
        pytest.skip("no compiled loops here")
    torch.manual_seed(8)
    cell = make_cell(name, 3, 4, **opts).double()
    layer = Recurrent(cell, engine="scan")
    x = torch.randn(3, 5, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 1])
    state = tuple(s.requires_grad_() for s in as_tuple(_offset(
        cell.init_state(3, dtype=torch.float64))))

    def run(x, *state):
        out, final = layer(x, state if len(state) > 1 else state[0], lengths=lengths)
        return (out, *as_tuple(final))

    assert torch.autograd.gradcheck(run, (x, *state))
