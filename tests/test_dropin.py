"""Drop-ins: rnnkit.RNN / LSTM / GRU against torch.nn with the weights copied.

Randomised configurations (hypothesis): the outputs, final states and parameter gradients are
equal in float64 to 1e-10; state_dict names and shapes are torch's, and load both ways.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkit
from core_helpers import DT, assert_close

I, H, P = 3, 4, 2
KINDS = {"RNN": (nn.RNN, rnnkit.RNN), "LSTM": (nn.LSTM, rnnkit.LSTM),
         "GRU": (nn.GRU, rnnkit.GRU)}


def _pair(kind: str, seed: int, **kw) -> tuple[nn.Module, nn.Module]:
    """A float64 torch.nn module and the rnnkit drop-in with its weights copied."""
    theirs_cls, ours_cls = KINDS[kind]
    kw = dict(kw)
    extra = {k: kw.pop(k) for k in ("engine",) if k in kw}
    torch.manual_seed(seed)
    theirs = theirs_cls(I, H, **kw).to(DT)
    ours = ours_cls(I, H, **kw, **extra).to(DT)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _loss(output, state, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    data = output.data if isinstance(output, PackedSequence) else output
    tensors = [data, *(state if isinstance(state, tuple) else (state,))]
    return sum((t * torch.randn(t.shape, generator=g, dtype=DT)).sum() for t in tensors)


def _compare(theirs: nn.Module, ours: nn.Module, x, hx, seed: int = 0) -> None:
    """Same outputs, states and gradients (parameters by torch's names, input, hx)."""
    results = []
    for module in (theirs, ours):
        module.zero_grad()
        hx_leaf = None
        if hx is not None:
            hx_leaf = tuple(h.clone().requires_grad_() for h in hx)
        xin = x
        if isinstance(x, torch.Tensor):
            xin = x.clone().requires_grad_()
        arg = None if hx_leaf is None else (hx_leaf if len(hx_leaf) == 2 else hx_leaf[0])
        out, state = module(xin, arg)
        _loss(out, state, seed).backward()
        grads = {n: p.grad for n, p in module.named_parameters()}
        extra = [xin.grad] if isinstance(xin, torch.Tensor) else []
        extra += [h.grad for h in hx_leaf] if hx_leaf is not None else []
        results.append((out, state, grads, extra))
    (o1, s1, g1, e1), (o2, s2, g2, e2) = results
    assert type(o1) is type(o2)
    if isinstance(o1, PackedSequence):
        assert torch.equal(o1.batch_sizes, o2.batch_sizes)
        assert torch.equal(o1.sorted_indices, o2.sorted_indices)
        assert torch.equal(o1.unsorted_indices, o2.unsorted_indices)
        o1, o2 = o1.data, o2.data
    assert_close(o2, o1, what="output")
    assert_close(s2, s1, what="final state")
    assert set(g1) == set(g2)
    assert_close([g2[n] for n in g1], [g1[n] for n in g1], what="parameter gradients")
    assert_close(e2, e1, what="input and hx gradients")


@st.composite
def configurations(draw):
    kind = draw(st.sampled_from(["RNN", "LSTM", "GRU"]))
    kw = {
        "num_layers": draw(st.integers(1, 3)),
        "bidirectional": draw(st.booleans()),
        "batch_first": draw(st.booleans()),
        "bias": draw(st.booleans()),
    }
    proj = kind == "LSTM" and draw(st.booleans())
    if proj:
        kw["proj_size"] = P
    engines = ["native", "reference"] if proj else ["native", "bptt", "reference", "auto"]
    kw["engine"] = draw(st.sampled_from(engines))
    if kind == "RNN":
        kw["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    B = draw(st.integers(1, 4))
    T = draw(st.integers(1, 5))
    packed = draw(st.booleans())
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B)) if packed else None
    return kind, kw, B, T, lengths, draw(st.booleans()), draw(st.integers(0, 2**16))


@settings(max_examples=80, deadline=None)
@given(configurations())
def test_dropin_equals_torch(config) -> None:
    kind, kw, B, T, lengths, with_hx, seed = config
    theirs, ours = _pair(kind, seed, **kw)
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, I) if kw["batch_first"] else (T, B, I)
    x = torch.randn(shape, generator=g, dtype=DT)
    if lengths is not None:
        x = pack_padded_sequence(x, torch.tensor(lengths), batch_first=kw["batch_first"],
                                 enforce_sorted=False)
    hx = None
    if with_hx:
        n = kw["num_layers"] * (2 if kw["bidirectional"] else 1)
        hx = (torch.randn(n, B, P if kw.get("proj_size") else H, generator=g, dtype=DT),)
        if kind == "LSTM":
            hx = (*hx, torch.randn(n, B, H, generator=g, dtype=DT))
    _compare(theirs, ours, x, hx, seed)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("engine", ["native", "bptt", "reference"])
@pytest.mark.parametrize("with_hx", [False, True])
def test_unbatched_input(kind: str, engine: str, with_hx: bool) -> None:
    """2-D input (T, I) and 2-D states (L * D, H), as torch.nn."""
    theirs, ours = _pair(kind, 1, num_layers=2, bidirectional=True, engine=engine)
    x = torch.randn(5, I, dtype=DT)
    hx = None
    if with_hx:
        hx = (torch.randn(4, H, dtype=DT),) * (2 if kind == "LSTM" else 1)
    _compare(theirs, ours, x, hx)
    out, state = ours(x)
    assert out.shape == (5, 2 * H)
    for s in state if kind == "LSTM" else (state,):
        assert s.shape == (4, H)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("kw", [{}, {"num_layers": 3, "bidirectional": True},
                                {"num_layers": 2, "bias": False},
                                {"num_layers": 2, "bidirectional": True, "proj_size": P}],
                         ids=["one-layer", "deep-bidirectional", "no-bias", "proj"])
def test_state_dict_names_and_loading_both_ways(kind: str, kw: dict) -> None:
    if "proj_size" in kw and kind != "LSTM":
        pytest.skip("proj_size is LSTM's")
    theirs_cls, ours_cls = KINDS[kind]
    torch.manual_seed(0)
    theirs, ours = theirs_cls(I, H, **kw), ours_cls(I, H, **kw)
    their_sd, our_sd = theirs.state_dict(), ours.state_dict()
    assert [(k, v.shape) for k, v in our_sd.items()] == [(k, v.shape) for k, v in
                                                         their_sd.items()]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    # rnnkit -> torch.nn
    theirs.load_state_dict(our_sd)
    for k, v in theirs.state_dict().items():
        assert torch.equal(v, our_sd[k])
    # torch.nn -> rnnkit
    fresh = theirs_cls(I, H, **kw)
    ours.load_state_dict(fresh.state_dict())
    for k, v in ours.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k])
    assert torch.equal(ours.weight_ih_l0, fresh.weight_ih_l0)  # torch's attribute names


def test_state_shapes_and_errors_like_torch() -> None:
    ours = rnnkit.LSTM(I, H, num_layers=2, batch_first=True, proj_size=P)
    out, (h, c) = ours(torch.randn(3, 5, I))
    assert out.shape == (3, 5, P) and h.shape == (2, 3, P) and c.shape == (2, 3, H)
    with pytest.raises(ValueError, match=r"hx \(c_0\) must have shape \(2, 3, 4\), got"):
        ours(torch.randn(3, 5, I), (torch.zeros(2, 3, P), torch.zeros(2, 3, P)))


@pytest.mark.parametrize(("cls", "options", "name"), [
    (rnnkit.LSTM, {"cell": "peephole"}, "peephole"),
    (rnnkit.LSTM, {"layer_norm": True}, "lstm"),
    (rnnkit.GRU, {"cell": "gru-before", "layer_norm": True}, "gru-before"),
    (rnnkit.GRU, {"cell": "gru-simple"}, "gru-simple"),
    (rnnkit.LSTM, {"connection": "highway", "forget_bias": 1.0}, "lstm"),
])
def test_extra_options_reach_the_stack(cls, options: dict, name: str) -> None:
    """Extra keyword arguments pick the cell and stack options; the drop-in then computes
    what the equivalent ``stack`` computes (time-major, torch's state layout)."""
    torch.manual_seed(0)
    ours = cls(H, H, num_layers=2, bidirectional=True, **options).to(DT)
    stack_opts = {k: v for k, v in options.items() if k != "cell"}
    ref = rnnkit.stack(name, H, H, 2, bidirectional=True, batch_first=False, **stack_opts).to(DT)
    ref.load_state_dict(ours.stack.state_dict())
    x = torch.randn(5, 3, H, dtype=DT)
    out, state = ours(x)
    ref_out, ref_states = ref(x)
    assert_close(out, ref_out, what="output")
    h = state[0] if isinstance(state, tuple) else state
    first = ref_states[0][0]
    assert_close(h[0], first[0] if isinstance(first, tuple) else first, what="h_n[0]")
    keys = ours.state_dict().keys()
    if name == "peephole":
        assert "peephole_l1_reverse" in keys
    if options.get("layer_norm"):
        assert "ln_hh_weight_l0" in keys
    if options.get("connection") == "highway":
        assert any(k.startswith("stack.gates.1") for k in keys)
        assert torch.all(ours.bias_ih_l0[H:2 * H] == 1.0)
