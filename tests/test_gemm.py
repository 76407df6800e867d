"""rnnkit's GEMM layer (rnnkit.gemm): every backend computes the product ATen computes, to
float32 rounding; the differentiable linear passes gradcheck in float64; the choice is cached
per machine; oneDNN is present and used where it applies (CI asserts the fast path, as it does
for the C++ loops). Nothing here times anything: the measuring function is replaced."""

import json

import pytest
import torch
import torch.nn.functional as F

from rnnkit import gemm
from rnnkit.cells import make_cell
from rnnkit.layers.recurrent import Recurrent
from rnnkit.models.lm import LanguageModel, LMConfig

BACKENDS = ["aten", "onednn"]


def close(a, b, rtol=2e-5):
    scale = b.abs().max().clamp_min(1.0)
    return (a - b).abs().max().item() <= rtol * scale.item()


def test_onednn_is_present_and_used():
    """The fast path cannot fall away silently: this torch has oneDNN's dense linear, and a
    language model's training step runs products on it when it is chosen."""
    assert gemm.onednn_available()
    model = LanguageModel(LMConfig(vocab_size=50, embedding_size=16, hidden_size=32,
                                   num_layers=1))
    before = gemm.usage()["onednn"]
    with gemm.forced("onednn"):
        tokens = torch.randint(0, 50, (4, 10))
        loss, _ = model.loss(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
    assert gemm.usage()["onednn"] > before


@pytest.mark.parametrize("backend", BACKENDS)
def test_mm_layouts_bias_base_and_out(backend):
    torch.manual_seed(0)
    with gemm.forced(backend):
        for a, b in [(torch.randn(7, 33), torch.randn(33, 21)),
                     (torch.randn(33, 7).t(), torch.randn(21, 33).t()),
                     (torch.randn(33, 7).t(), torch.randn(33, 21)),
                     (torch.randn(33, 7).t(), torch.randn(33, 5))]:  # the transposed form
            base, bias = torch.randn(7, b.shape[1]), torch.randn(b.shape[1])
            assert close(gemm.mm(a, b), a @ b)
            assert close(gemm.mm(a, b, base), base + a @ b)
            assert close(gemm.mm(a, b, bias=bias), a @ b + bias)
            assert close(gemm.mm(a, b, base, bias=bias), base + a @ b + bias)
            out = torch.empty(7, b.shape[1])
            y = gemm.mm(a, b, base, out=out)
            assert y.data_ptr() == out.data_ptr() and close(out, base + a @ b)
            acc = base.clone()  # accumulate in place, as the weight gradients do
            gemm.mm(a, b, acc, out=acc)
            assert close(acc, base + a @ b)


def test_a_weight_gradient_reads_dy_transposed_as_onednns_weight(monkeypatch):
    """dY^T X (dY (rows, out) and X (rows, in) contiguous, in <= out) goes to oneDNN as
    (X^T dY)^T: the transposed dY^T is oneDNN's weight, read as it lies, and the copy into
    rows is of X^T, the smaller operand; otherwise the product goes in as it is."""
    calls = []
    real = gemm._onednn
    monkeypatch.setattr(gemm, "_onednn", lambda a, w, base, bias=None: (
        calls.append((tuple(a.shape), tuple(w.shape))), real(a, w, base, bias))[1])
    dy, x = torch.randn(40, 12), torch.randn(40, 5)
    with gemm.forced("onednn"):
        assert close(gemm.mm(dy.t(), x, kind="wgrad"), dy.t() @ x)
        assert calls == [((5, 40), (12, 40))]  # a = X^T, w = dY^T: (X^T dY) = (dY^T X)^T
        calls.clear()
        wide = torch.randn(40, 20)  # in > out: as it is
        assert close(gemm.mm(dy.t(), wide, kind="wgrad"), dy.t() @ wide)
        assert calls == [((12, 40), (20, 40))]
        calls.clear()
        w = torch.randn(12, 5, requires_grad=True)  # through the differentiable linear
        xl = torch.randn(40, 5, requires_grad=True)
        gemm.linear(xl, w).backward(dy)
    assert close(w.grad, dy.t() @ xl.detach()) and close(xl.grad, dy @ w.detach())
    assert ((5, 40), (12, 40)) in calls


@pytest.mark.skipif(not gemm.onednn_available(), reason="torch was built without oneDNN")
@pytest.mark.parametrize("form", ["aten", "onednn", "onednn-t"])
def test_a_weight_gradient_is_measured_in_both_onednn_forms_and_aten(tmp_path, monkeypatch,
                                                                      form):
    """dY^T X, measured: ATen, oneDNN with dY^T copied into rows, and the transposed form are
    all three timed on the product's operands (under their own key), and the one measured
    fastest makes the product, accumulated into ``out`` as ``base``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setitem(gemm._state, "choices", None)
    offered = []

    def fake_measure(run_aten, run_onednn, **forms):
        offered.append(sorted(forms))
        for run in (run_aten, run_onednn, *forms.values()):
            run()
        return form

    monkeypatch.setattr(gemm, "measure", fake_measure)
    calls = []
    real = gemm._onednn
    monkeypatch.setattr(gemm, "_onednn", lambda a, w, base, bias=None: (
        calls.append((tuple(a.shape), tuple(w.shape))), real(a, w, base, bias))[1])
    dy, x, base = torch.randn(256, 96), torch.randn(256, 64), torch.randn(96, 64)
    with gemm.forced(None):
        gemm.mm(dy.t(), x, kind="wgrad")  # measured here
        assert offered == [["onednn-t"]]
        calls.clear()
        before = dict(gemm.usage())
        acc = base.clone()
        gemm.mm(dy.t(), x, acc, out=acc)
        assert close(acc, base + dy.t() @ x)
    assert len(offered) == 1  # the choice is remembered
    assert calls == {"aten": [], "onednn": [((96, 256), (64, 256))],
                     "onednn-t": [((64, 256), (96, 256))]}[form]
    used = "aten" if form == "aten" else "onednn"
    assert gemm.usage()[used] == before[used] + 1
    saved = json.loads(next((tmp_path / "rnnkit").glob("gemm-*.json")).read_text())
    assert saved["choices"] == {"wgrad-forms:96:256:64": form}


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_weight(backend):
    torch.manual_seed(1)
    w = torch.randn(40, 24)  # (n, k): b = w^T
    with gemm.forced(backend):
        step = gemm.StepWeight(w.t().contiguous(), 6, w)
        assert step.backend == backend
        for _ in range(3):  # the packed weight serves every step
            a, base, bias = torch.randn(6, 24), torch.randn(6, 40), torch.randn(40)
            out = torch.empty(6, 40)
            assert step.addmm(base, a, out=out).data_ptr() == out.data_ptr()
            assert close(out, base + a @ w.t())
            assert close(step.addmm(None, a, bias=bias), a @ w.t() + bias)


def test_linear_gradcheck_float64():
    """The hand-written backward of the differentiable linear, in float64 (where every
    product is ATen's: oneDNN has no float64)."""
    torch.manual_seed(2)
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gemm._Linear.apply, (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: gemm._Linear.apply(x, w, None), (x, w))


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_float32_equals_f_linear(backend):
    torch.manual_seed(3)
    x = torch.randn(5, 9, 48, requires_grad=True)
    w = torch.randn(70, 48, requires_grad=True)
    b = torch.randn(70, requires_grad=True)
    g = torch.randn(5, 9, 70)
    with gemm.forced(backend):
        y = gemm.linear(x, w, b)
        ours = torch.autograd.grad(y, (x, w, b), g)
    ref_y = F.linear(x, w, b)
    ref = torch.autograd.grad(ref_y, (x, w, b), g)
    assert y.shape == ref_y.shape and close(y, ref_y)
    for a, r in zip(ours, ref):
        assert close(a, r)


def test_linear_second_derivative():
    """create_graph=True: the backward is made of tracked ATen ops, so a second derivative
    exists and equals F.linear's."""
    torch.manual_seed(4)
    x = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(5, 8, requires_grad=True)
    with gemm.forced("onednn"):
        (gx,) = torch.autograd.grad(gemm.linear(x, w).tanh().sum(), x, create_graph=True)
        (gw,) = torch.autograd.grad(gx.square().sum(), w)
    (rx,) = torch.autograd.grad(F.linear(x, w).tanh().sum(), x, create_graph=True)
    (rw,) = torch.autograd.grad(rx.square().sum(), w)
    assert close(gw, rw, 1e-4)


def test_float64_and_forced_aten_never_use_onednn(monkeypatch):
    before = gemm.usage()["onednn"]
    x, w = torch.randn(64, 64, dtype=torch.float64), torch.randn(64, 64, dtype=torch.float64)
    with gemm.forced("onednn"):
        gemm.mm(x, w)
        gemm.linear(x, w)
    monkeypatch.setenv(gemm.ENV, "aten")
    gemm.mm(x.float(), w.float())
    gemm.StepWeight(w.float(), 64).addmm(None, x.float())
    assert gemm.usage()["onednn"] == before
    monkeypatch.setenv(gemm.ENV, "banana")
    with pytest.raises(ValueError, match="RNNKIT_GEMM='banana'"):
        gemm.mm(x.float(), w.float())


def test_traced_models_see_plain_linear():
    lin = gemm.Linear(8, 4)
    with gemm.forced("onednn"):
        traced = torch.jit.trace(lin, torch.randn(2, 8))
    graph = str(traced.graph)
    assert "aten::linear" in graph and "mkldnn" not in graph


def test_the_choice_is_measured_once_per_machine_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setitem(gemm._state, "choices", None)
    calls = []

    def fake_measure(run_aten, run_onednn):
        calls.append(1)
        run_aten(), run_onednn()  # both ways run on the product's operands
        return "onednn"

    monkeypatch.setattr(gemm, "measure", fake_measure)
    a, b = torch.randn(64, 128), torch.randn(128, 96)
    with gemm.forced(None):
        assert close(gemm.mm(a, b, kind="wgrad"), a @ b)
        gemm.mm(a, b, kind="wgrad")
        assert len(calls) == 1  # measured once, then remembered
        gemm.mm(a, b, kind="linear")
        assert len(calls) == 2  # another kind is another entry
        gemm.mm(torch.randn(2, 4), torch.randn(4, 3))  # too small to measure: ATen
        assert len(calls) == 2
        for rows in range(97, 129):  # one size class: one measurement
            gemm.mm(torch.randn(rows, 128), b, kind="dgrad")
        assert len(calls) == 3
        gemm.mm(torch.randn(129, 128), b, kind="dgrad")  # the next class
        assert len(calls) == 4
    files = list((tmp_path / "rnnkit").glob("gemm-*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert saved["machine"] == gemm.machine()
    assert saved["choices"] == {"wgrad:64:128:96": "onednn", "linear:64:128:96": "onednn",
                                "dgrad:128:128:96": "onednn", "dgrad:192:128:96": "onednn"}
    assert saved["confirmed"] == []
    monkeypatch.setitem(gemm._state, "choices", None)  # a new process reads the file
    with gemm.forced(None):
        gemm.mm(a, b, kind="wgrad")
        gemm.mm(a, b, kind="wgrad")
    assert len(calls) == 5  # measured once more, and the two agree: confirmed
    assert json.loads(files[0].read_text())["confirmed"] == ["wgrad:64:128:96"]
    monkeypatch.setitem(gemm._state, "choices", None)  # a third process
    with gemm.forced(None):
        gemm.mm(a, b, kind="wgrad")
    assert len(calls) == 5  # a confirmed choice is never measured again
    files[0].write_text("{not json")  # a corrupt cache is measured again, not an error
    monkeypatch.setitem(gemm._state, "choices", None)
    with gemm.forced(None):
        gemm.mm(a, b, kind="wgrad")
    assert len(calls) == 6


def test_a_choice_two_measurements_disagree_on_is_measured_until_they_agree(tmp_path,
                                                                            monkeypatch):
    """One measurement in a bad moment (ATen) does not stay: the next process measures
    again, stores what it finds, and only two agreeing measurements confirm a choice. A cache
    written before confirmations (no "confirmed") is measured once more."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    outcomes = iter(["aten", "onednn", "onednn"])
    monkeypatch.setattr(gemm, "measure", lambda run_aten, run_onednn: next(outcomes))
    a, b = torch.randn(64, 128), torch.randn(128, 96)

    def new_process_uses() -> str:
        monkeypatch.setitem(gemm._state, "choices", None)
        before = gemm.usage()["onednn"]
        with gemm.forced(None):
            gemm.mm(a, b, kind="wgrad")
        return "onednn" if gemm.usage()["onednn"] > before else "aten"

    assert new_process_uses() == "aten"  # the first, wrong measurement
    assert new_process_uses() == "onednn"  # disagrees: stored, not confirmed
    assert new_process_uses() == "onednn"  # agrees: confirmed
    assert new_process_uses() == "onednn"  # and never measured again
    path = next((tmp_path / "rnnkit").glob("gemm-*.json"))
    saved = json.loads(path.read_text())
    assert saved["confirmed"] == ["wgrad:64:128:96"]
    del saved["confirmed"]  # as written before confirmations
    path.write_text(json.dumps(saved))
    monkeypatch.setattr(gemm, "measure", lambda run_aten, run_onednn: "aten")
    assert new_process_uses() == "aten"  # measured once more


def test_a_measurement_leaves_the_random_state_as_it_was(tmp_path, monkeypatch):
    """The first run on a machine measures its products (random operands) and a later run
    reads the cache: both must draw the same dropout masks. A StepWeight's measurement on an
    empty cache leaves torch's random stream where it was."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setitem(gemm._state, "choices", None)
    measured = []

    def fake_measure(run_aten, run_onednn):
        measured.append(1)
        run_aten(), run_onednn()  # both make their random operands
        return "aten"

    monkeypatch.setattr(gemm, "measure", fake_measure)
    torch.manual_seed(7)
    expected = torch.rand(5)
    torch.manual_seed(7)
    with gemm.forced(None):
        gemm.StepWeight(torch.randn(256, 1024, generator=torch.Generator().manual_seed(1)), 32)
    assert measured == [1]
    torch.testing.assert_close(torch.rand(5), expected, rtol=0, atol=0)


def test_size_classes():
    assert [gemm.size_class(x) for x in (1, 2, 3, 4, 5, 6, 7, 8, 9, 100, 129, 2240, 23278)] \
        == [1, 2, 3, 4, 6, 6, 8, 8, 12, 128, 192, 3072, 24576]
    assert len({gemm.size_class(x) for x in range(1, 100_001)}) <= 34


def test_adopt_keeps_parameters_and_state_dict():
    config = LMConfig(vocab_size=300, embedding_size=16, hidden_size=32, num_layers=1,
                      adaptive_cutoffs=[50, 150])
    model = LanguageModel(config)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is gemm.Linear for m in linears)  # the adaptive softmax's
    with gemm.forced("aten"):
        plain = LanguageModel(config)
    assert list(model.state_dict()) == list(plain.state_dict())


@pytest.mark.parametrize("cell,ln", [("lstm", False), ("lstm", True), ("peephole", False),
                                     ("gru", False), ("gru", True), ("gru-before", False),
                                     ("gru-before", True), ("gru-simple", False), ("rnn", False),
                                     ("rnn-relu", False)])
def test_bptt_engine_on_both_backends(cell, ln):
    """Every bptt kernel's per-step products, input projection and weight gradients through
    oneDNN give ATen's outputs and gradients to float32 rounding, with padding and reverse;
    batch x hidden above the compiled loops' limit, so the Python loops make the products."""
    results = {}
    for backend in BACKENDS:
        torch.manual_seed(5)
        layer = Recurrent(make_cell(cell, 24, 48, **({"layer_norm": True} if ln else {})),
                          engine="bptt", reverse=True)
        x = torch.randn(16, 7, 24, requires_grad=True)
        lengths = torch.tensor([7, 5] * 8)
        with gemm.forced(backend):
            out, _ = layer(x, lengths=lengths)
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results[backend] = [out.detach(), x.grad, *(p.grad for p in layer.parameters())]
    for a, r in zip(results["onednn"], results["aten"]):
        assert close(a, r, 1e-4)
