"""Layers: Bidirectional merges, Stacked connections and states, per-step states, learned
initial states, variational dropout and DropConnect."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core_helpers import DT, assert_close, build_layer, flat, perturb_, random_state
from rnnkit.cells import ElmanCell, make_cell
from rnnkit.layers import (
    Bidirectional,
    Recurrent,
    Stacked,
    detach_states,
    map_states,
    stack,
)

B, T, I, H = 3, 5, 4, 4
LENGTHS = torch.tensor([5, 2, 4])


def _x(seed: int = 0, b: int = B, t: int = T, i: int = I) -> torch.Tensor:
    return torch.randn(b, t, i, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _mask() -> torch.Tensor:
    return (torch.arange(T)[None, :] < LENGTHS[:, None]).unsqueeze(-1).to(DT)  # (B, T, 1)


# -- Bidirectional and Stacked compose as documented ------------------------------------------

@pytest.mark.parametrize("merge", ["concat", "sum", "mean"])
def test_bidirectional_merges(merge: str) -> None:
    fwd = build_layer("lstm", "bptt", I, H, seed=0)
    bwd = build_layer("lstm", "bptt", I, H, seed=1, reverse=True)
    layer = Bidirectional(fwd, bwd, merge=merge)
    x = _x()
    sf, sb = random_state(fwd, B, 1), random_state(bwd, B, 2)
    out, (state_f, state_b) = layer(x, (sf, sb), lengths=LENGTHS)
    of, ff = fwd(x, sf, lengths=LENGTHS)
    ob, fb = bwd(x, sb, lengths=LENGTHS)
    expected = {"concat": torch.cat([of, ob], -1), "sum": of + ob, "mean": (of + ob) / 2}[merge]
    assert_close(out, expected, what="output")
    assert_close((state_f, state_b), (ff, fb), what="states")
    assert layer.output_size == (2 * H if merge == "concat" else H)


def _highway(gate: nn.Linear, fx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.sigmoid(gate(x))
    return t * fx + (1 - t) * x


@pytest.mark.parametrize("connection", ["none", "residual", "dense", "highway"])
def test_stacked_connections(connection: str) -> None:
    """Stacked follows its documented rules, layer by layer, with padding zeroed."""
    torch.manual_seed(0)
    model = stack("gru", I, H, 3, connection=connection, engine="bptt").to(DT)
    perturb_(model, 0, 0.3)  # also moves the highway gates' biases off -1
    x = _x(1)
    out, states = model(x, lengths=LENGTHS)
    h, inputs = x, [x]
    for layer, gate in zip(model.layers, model.gates):
        inp = torch.cat(inputs, -1) if connection == "dense" and len(inputs) > 1 else h
        y, s = layer(inp, lengths=LENGTHS)
        assert_close(s, states[len(inputs) - 1], what="layer state")
        if connection == "residual":
            y = (y + inp) * _mask()
        elif connection == "highway":
            y = _highway(gate, y, inp) * _mask()
        inputs.append(y)
        h = y
    assert_close(out, h, what="stack output")
    assert torch.all(out[1, 2:] == 0)
    assert model.output_size == H and model.input_size == I


def test_highway_gate_initialised_to_carry() -> None:
    model = stack("lstm", H, H, 2, connection="highway")
    for gate in model.gates:
        assert torch.all(gate.bias == -1.0)


def test_stacked_skips_only_where_sizes_match() -> None:
    """The first layer changes the size (I=3 -> H=4): no residual there, one after."""
    torch.manual_seed(0)
    model = stack("gru-simple", 3, H, 2, connection="residual", engine="reference").to(DT)
    x = _x(2, i=3)
    y0, _ = model.layers[0](x)
    y1, _ = model.layers[1](y0)
    assert_close(model(x)[0], y1 + y0, what="output")


def test_stacked_given_states_and_dense_sizes() -> None:
    torch.manual_seed(0)
    model = stack("lstm", I, H, 3, connection="dense", bidirectional=True,
                  engine="native").to(DT)
    assert [layer.input_size for layer in model.layers] == [I, I + 2 * H, I + 4 * H]
    states = [(random_state(layer.fwd, B, 3 * k), random_state(layer.bwd, B, 3 * k + 1))
              for k, layer in enumerate(model.layers)]
    x = _x(3)
    out, finals = model(x, states, lengths=LENGTHS)
    inp = x
    for layer, s, final in zip(model.layers, states, finals):
        y, f = layer(inp, s, lengths=LENGTHS)
        assert_close(f, final, what="final")
        inp = torch.cat([inp, y], -1)
    assert_close(out, y, what="dense output is the last layer's")


# -- per-step states ---------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["reference", "bptt"])
@pytest.mark.parametrize("cell_id", ["lstm-ln", "peephole", "gru-before"])
@pytest.mark.parametrize("reverse", [False, True])
def test_return_states_equal_stepping_the_cell(cell_id, engine, reverse) -> None:
    """``return_states=True``: h (and c) after every step, equal to stepping the cell by hand
    over each sequence's own steps (in reverse for a reverse layer), zero past each length."""
    layer = build_layer(cell_id, engine, I, H, reverse=reverse)
    x = _x(4)
    state0 = random_state(layer, B)
    res = layer(x, state0, lengths=LENGTHS, return_states=True)
    seqs = res.states if layer.cell.num_states == 2 else (res.states,)
    assert torch.equal(seqs[0], res.output)
    for b, n in enumerate(LENGTHS.tolist()):
        state = tuple(s[b:b + 1] for s in flat(state0))
        steps = range(n - 1, -1, -1) if reverse else range(n)
        for t in steps:
            _, new = layer.cell.step(x[b:b + 1, t], state if len(state) == 2 else state[0])
            state = new if isinstance(new, tuple) else (new,)
            for k, s in enumerate(state):
                assert_close(seqs[k][b:b + 1, t], s, what=f"state {k} at ({b}, {t})")
        assert_close(flat(res.state)[0][b:b + 1], state[0], what="final state")
        for s in seqs:
            assert torch.all(s[b, n:] == 0)


def test_stacked_per_layer_states() -> None:
    """A Stacked's ``return_states`` gives each layer's per-step states (a pair for a
    bidirectional layer), equal to running the layers one by one."""
    torch.manual_seed(0)
    model = stack("lstm", I, H, 2, bidirectional=True, engine="bptt").to(DT)
    x = _x(5)
    res = model(x, lengths=LENGTHS, return_states=True)
    assert len(res.states) == 2 and len(res.state) == 2
    inp = x
    for layer, trace, final in zip(model.layers, res.states, res.state):
        mine = layer(inp, lengths=LENGTHS, return_states=True)
        assert_close(trace, mine.states, what="per-step states")
        assert_close(final, mine.state, what="final state")
        h_f, c_f = trace[0]
        assert h_f.shape == c_f.shape == (B, T, H)
        inp = mine.output
    assert_close(res.output, inp, what="output")


def test_detach_and_map_states() -> None:
    state = [(torch.ones(2, requires_grad=True) * 2, torch.ones(2)), torch.zeros(3)]
    detached = detach_states(state)
    assert isinstance(detached, list) and isinstance(detached[0], tuple)
    assert not detached[0][0].requires_grad
    doubled = map_states(lambda s: s * 2, state)
    assert torch.equal(doubled[0][0], torch.full((2,), 4.0))
    assert map_states(lambda s: s, None) is None


# -- learned initial state ---------------------------------------------------------------------

@pytest.mark.parametrize(("cell_id", "engine"), [("lstm", "native"), ("lstm-ln", "bptt"),
                                                 ("gru-after", "reference"),
                                                 ("gru-simple", "bptt")])
def test_learn_init(cell_id: str, engine: str) -> None:
    layer = build_layer(cell_id, engine, I, H, learn_init=True)
    assert len(layer.init_states) == layer.cell.num_states
    with torch.no_grad():
        for k, p in enumerate(layer.init_states):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(k)))
    x = _x(6)
    out, state = layer(x, lengths=LENGTHS)
    given = tuple(p.detach().expand(B, -1) for p in layer.init_states)
    given = given if len(given) == 2 else given[0]
    assert_close(layer(x, given, lengths=LENGTHS), (out, state), what="learned state used")
    (out.sum() + sum(s.sum() for s in flat(state))).backward()
    for p in layer.init_states:
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert any(name.startswith("init_states") for name, _ in layer.named_parameters())


def test_learn_init_through_stack() -> None:
    model = stack("gru", I, H, 2, bidirectional=True, learn_init=True).to(DT)
    out, _ = model(_x(7))
    out.sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "init_states" in n]
    assert len(grads) == 4 and all(g is not None and g.abs().sum() > 0 for g in grads)


# -- variational dropout and DropConnect -------------------------------------------------------

def _identity_layer(**opts) -> Recurrent:
    """h_t = relu(x_t): an Elman cell with W_ih = I and everything else zero."""
    cell = ElmanCell(I, I, nonlinearity="relu").to(DT)
    with torch.no_grad():
        for p in cell.parameters():
            p.zero_()
        cell.weight_ih.copy_(torch.eye(I))
    return Recurrent(cell, engine="bptt", **opts)


@pytest.mark.parametrize("where", ["input_dropout", "output_dropout"])
def test_variational_dropout_same_mask_every_step(where: str) -> None:
    torch.manual_seed(0)
    p = 0.5
    layer = _identity_layer(**{where: p})
    x = torch.ones(16, 20, I, dtype=DT)
    out, _ = layer(x)
    mask = out[:, :1]  # (B, 1, I): the first step's mask
    assert torch.all(out == mask), "the mask changes across time steps"
    assert set(out.unique().tolist()) == {0.0, 1 / (1 - p)}
    assert not torch.all(mask == mask[:1]), "every sequence got the same mask"
    out2, _ = layer(x)
    assert not torch.equal(out, out2), "a new mask is drawn every call"
    layer.eval()
    assert torch.equal(layer(x)[0], x) and torch.equal(layer(x)[0], layer(x)[0])


@pytest.mark.parametrize("variational", [True, False])
def test_stacked_dropout_between_layers(variational: bool) -> None:
    torch.manual_seed(0)
    model = Stacked([_identity_layer(), _identity_layer()], dropout=0.5,
                    variational=variational)
    x = torch.ones(16, 20, I, dtype=DT)
    out, _ = model(x)
    assert set(out.unique().tolist()) == {0.0, 2.0}
    constant_in_time = bool(torch.all(out == out[:, :1]))
    assert constant_in_time == variational
    model.eval()
    assert torch.equal(model(x)[0], x)


def _recording_cell(name: str, **opts) -> tuple[Recurrent, list]:
    torch.manual_seed(0)
    cell = make_cell(name, I, H, **opts).to(DT)
    seen = []
    step = cell.step

    def recording_step(x_t, state, params=None):
        seen.append(params["weight_hh"])
        return step(x_t, state, params)

    cell.step = recording_step
    return cell, seen


def test_dropconnect_one_mask_per_call() -> None:
    """DropConnect: every step of one call sees the same dropped recurrent matrix,
    W_hh * mask / (1 - p); a new call draws a new mask; eval uses W_hh itself."""
    p = 0.4
    cell, seen = _recording_cell("lstm")
    layer = Recurrent(cell, engine="reference", dropconnect=p)
    x = _x(8)
    out, _ = layer(x)
    assert len(seen) == T
    first = seen[0]
    assert all(torch.equal(w, first) for w in seen), "the mask changes across time steps"
    kept = first != 0
    assert 0 < kept.float().mean() < 1
    torch.testing.assert_close(first[kept], cell.weight_hh[kept] / (1 - p))
    out.sum().backward()
    assert torch.all(cell.weight_hh.grad[~kept] == 0)
    assert cell.weight_hh.grad[kept].abs().sum() > 0
    seen.clear()
    layer(x)
    assert not torch.equal(seen[0], first)
    layer.eval()
    seen.clear()
    out_eval, _ = layer(x)
    assert torch.equal(seen[0], cell.weight_hh)
    assert torch.equal(out_eval, layer(x)[0])


@pytest.mark.parametrize(("cell_id", "engine"), [("lstm", "native"), ("lstm", "bptt"),
                                                 ("gru-before-ln", "bptt"),
                                                 ("rnn-tanh", "native")])
def test_dropconnect_same_in_every_engine(cell_id: str, engine: str) -> None:
    """With the same random seed every engine draws the same DropConnect and variational
    masks, so the fast engines match the reference under dropout too."""
    results = []
    for eng in ("reference", engine):
        layer = build_layer(cell_id, eng, I, H, dropconnect=0.3, input_dropout=0.2,
                            output_dropout=0.1)
        torch.manual_seed(42)
        out, state = layer(_x(9), lengths=LENGTHS)
        no_drop = build_layer(cell_id, eng, I, H)(_x(9), lengths=LENGTHS)[0]
        assert (out - no_drop).abs().max() > 1e-3
        results.append((out, state))
    assert_close(results[1], results[0], what=engine)
