"""Cells: one ``step`` against the equations of their docstrings written out by hand in the
notes' notation, ``init_state``, initialisation, ``forget_bias`` and parameter layouts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from core_helpers import CELL_CONFIGS, DT, perturb_
from rnnkit.cells import (
    ElmanCell,
    GRUCell,
    LSTMCell,
    MinimalGRUCell,
    PeepholeLSTMCell,
    make_cell,
)

B, I, H = 3, 4, 5
sigma, tanh = torch.sigmoid, torch.tanh


def _inputs(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, I, generator=g, dtype=DT)
    a = torch.randn(B, H, generator=g, dtype=DT)  # a<t-1>
    c = torch.randn(B, H, generator=g, dtype=DT)  # c<t-1>
    return x, a, c


def _ln(v: Tensor) -> Tensor:
    """Layer normalisation written out: (v - mean) / sqrt(var + 1e-5), biased variance."""
    mu = v.mean(-1, keepdim=True)
    var = ((v - mu) ** 2).mean(-1, keepdim=True)
    return (v - mu) / torch.sqrt(var + 1e-5)


def _cell(cls, *args, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return perturb_(cls(*args, **kw).to(DT), seed, 0.3)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_elman_step(nonlinearity: str) -> None:
    cell = _cell(ElmanCell, I, H, nonlinearity=nonlinearity)
    x, a, _ = _inputs()
    W_ax, W_aa = cell.weight_ih, cell.weight_hh
    b_a = cell.bias_ih + cell.bias_hh
    g = torch.tanh if nonlinearity == "tanh" else torch.relu
    expected = g(x @ W_ax.T + a @ W_aa.T + b_a)  # a<t> = g(W_aa a<t-1> + W_ax x<t> + b_a)
    h, state = cell.step(x, a)
    torch.testing.assert_close(h, expected)
    torch.testing.assert_close(state, expected)
    ref = torch.nn.RNNCell(I, H, nonlinearity=nonlinearity).to(DT)
    ref.load_state_dict(cell.state_dict())
    torch.testing.assert_close(h, ref(x, a))


def _lstm_gates(cell, x, a):
    W_u, W_f, W_c, W_o = cell.weight_ih.chunk(4)
    U_u, U_f, U_c, U_o = cell.weight_hh.chunk(4)
    b = (cell.bias_ih + cell.bias_hh).chunk(4)
    return (x @ W_u.T + a @ U_u.T + b[0], x @ W_f.T + a @ U_f.T + b[1],
            x @ W_c.T + a @ U_c.T + b[2], x @ W_o.T + a @ U_o.T + b[3])


def test_lstm_step() -> None:
    cell = _cell(LSTMCell, I, H)
    x, a, c = _inputs()
    z_u, z_f, z_c, z_o = _lstm_gates(cell, x, a)
    G_u, G_f, c_tilde, G_o = sigma(z_u), sigma(z_f), tanh(z_c), sigma(z_o)
    c_new = G_u * c_tilde + G_f * c
    a_new = G_o * tanh(c_new)
    h, (h2, c2) = cell.step(x, (a, c))
    torch.testing.assert_close(h, a_new)
    torch.testing.assert_close(h2, a_new)
    torch.testing.assert_close(c2, c_new)
    ref = torch.nn.LSTMCell(I, H).to(DT)
    ref.load_state_dict(cell.state_dict())
    hr, cr = ref(x, (a, c))
    torch.testing.assert_close((h, c2), (hr, cr))


def test_lstm_layer_norm_step() -> None:
    cell = _cell(LSTMCell, I, H, layer_norm=True)
    x, a, c = _inputs(1)
    gates = (_ln(x @ cell.weight_ih.T) * cell.ln_ih_weight + cell.bias_ih
             + _ln(a @ cell.weight_hh.T) * cell.ln_hh_weight + cell.bias_hh)
    i, f, g, o = gates.chunk(4, -1)
    c_new = sigma(f) * c + sigma(i) * tanh(g)
    a_new = sigma(o) * tanh(_ln(c_new) * cell.ln_c_weight + cell.ln_c_bias)
    h, (_, c2) = cell.step(x, (a, c))
    torch.testing.assert_close(h, a_new)
    torch.testing.assert_close(c2, c_new)


def test_lstm_projection_step() -> None:
    P = 2
    torch.manual_seed(0)
    cell = LSTMCell(I, H, proj_size=P).to(DT)
    assert cell.weight_hh.shape == (4 * H, P) and cell.weight_hr.shape == (P, H)
    x, _, c = _inputs(2)
    a = torch.randn(B, P, dtype=DT)
    h, (_, c2) = cell.step(x, (a, c))
    i, f, g, o = (x @ cell.weight_ih.T + a @ cell.weight_hh.T + cell.bias_ih
                  + cell.bias_hh).chunk(4, -1)
    c_new = sigma(f) * c + sigma(i) * tanh(g)
    torch.testing.assert_close(c2, c_new)
    torch.testing.assert_close(h, (sigma(o) * tanh(c_new)) @ cell.weight_hr.T)
    assert cell.init_state(B)[0].shape == (B, P) and cell.init_state(B)[1].shape == (B, H)


def test_peephole_step() -> None:
    cell = _cell(PeepholeLSTMCell, I, H)
    x, a, c = _inputs(3)
    z_u, z_f, z_c, z_o = _lstm_gates(cell, x, a)
    p_i, p_f, p_o = cell.peephole
    G_u = sigma(z_u + p_i * c)  # input gate reads c<t-1>
    G_f = sigma(z_f + p_f * c)  # forget gate reads c<t-1>
    c_new = G_u * tanh(z_c) + G_f * c
    G_o = sigma(z_o + p_o * c_new)  # output gate reads c<t>
    a_new = G_o * tanh(c_new)
    h, (_, c2) = cell.step(x, (a, c))
    torch.testing.assert_close(h, a_new)
    torch.testing.assert_close(c2, c_new)
    # with zero peepholes it is exactly torch's LSTM cell
    with torch.no_grad():
        cell.peephole.zero_()
    ref = torch.nn.LSTMCell(I, H).to(DT)
    ref.load_state_dict({k: v for k, v in cell.state_dict().items() if k != "peephole"})
    torch.testing.assert_close(cell.step(x, (a, c))[1], ref(x, (a, c)))


def test_gru_after_step_is_torch() -> None:
    cell = _cell(GRUCell, I, H, reset="after")
    x, a, _ = _inputs(4)
    W_r, W_z, W_n = cell.weight_ih.chunk(3)
    U_r, U_z, U_n = cell.weight_hh.chunk(3)
    bi, bh = cell.bias_ih.chunk(3), cell.bias_hh.chunk(3)
    G_r = sigma(x @ W_r.T + bi[0] + a @ U_r.T + bh[0])
    z = sigma(x @ W_z.T + bi[1] + a @ U_z.T + bh[1])
    c_tilde = tanh(x @ W_n.T + bi[2] + G_r * (a @ U_n.T + bh[2]))
    G_u = 1 - z
    expected = G_u * c_tilde + (1 - G_u) * a
    h, _ = cell.step(x, a)
    torch.testing.assert_close(h, expected)
    ref = torch.nn.GRUCell(I, H).to(DT)
    ref.load_state_dict(cell.state_dict())
    torch.testing.assert_close(h, ref(x, a))


def test_gru_before_step_is_the_notes_gru() -> None:
    """c~<t> = tanh(W_c [Gamma_r * c<t-1>, x<t>] + b_c); c<t> = Gamma_u c~ + (1 - Gamma_u) c."""
    cell = _cell(GRUCell, I, H, reset="before")
    x, c_prev, _ = _inputs(5)
    W_ih, W_hh = cell.weight_ih.chunk(3), cell.weight_hh.chunk(3)
    b = (cell.bias_ih + cell.bias_hh).chunk(3)
    W_r = torch.cat([W_hh[0], W_ih[0]], 1)  # acting on [c<t-1>, x<t>]
    W_u = torch.cat([W_hh[1], W_ih[1]], 1)
    W_c = torch.cat([W_hh[2], W_ih[2]], 1)
    G_r = sigma(torch.cat([c_prev, x], 1) @ W_r.T + b[0])
    G_u = 1 - sigma(torch.cat([c_prev, x], 1) @ W_u.T + b[1])
    c_tilde = tanh(torch.cat([G_r * c_prev, x], 1) @ W_c.T + b[2])
    c_new = G_u * c_tilde + (1 - G_u) * c_prev
    h, state = cell.step(x, c_prev)
    torch.testing.assert_close(h, c_new)
    torch.testing.assert_close(state, c_new)
    after = GRUCell(I, H, reset="after").to(DT)
    after.load_state_dict(cell.state_dict())
    assert (after.step(x, c_prev)[0] - h).abs().max() > 1e-3  # they are different cells


@pytest.mark.parametrize("reset", ["after", "before"])
def test_gru_layer_norm_step(reset: str) -> None:
    cell = _cell(GRUCell, I, H, reset=reset, layer_norm=True)
    x, a, _ = _inputs(6)
    xg = _ln(x @ cell.weight_ih.T) * cell.ln_ih_weight + cell.bias_ih
    xr, xz, xn = xg.chunk(3, -1)
    U, g, bh = cell.weight_hh, cell.ln_hh_weight, cell.bias_hh
    if reset == "after":
        hr, hz, hn = (_ln(a @ U.T) * g + bh).chunk(3, -1)
        r, z = sigma(xr + hr), sigma(xz + hz)
        n = tanh(xn + r * hn)
    else:
        hr, hz = (_ln(a @ U[:2 * H].T) * g[:2 * H] + bh[:2 * H]).chunk(2, -1)
        r, z = sigma(xr + hr), sigma(xz + hz)
        n = tanh(xn + _ln((r * a) @ U[2 * H:].T) * g[2 * H:] + bh[2 * H:])
    h, _ = cell.step(x, a)
    torch.testing.assert_close(h, (1 - z) * n + z * a)


def test_minimal_gru_step() -> None:
    """Gamma_u = sigma(W_u [c<t-1>, x<t>] + b_u), c~ = tanh(W_c [c<t-1>, x<t>] + b_c)."""
    cell = _cell(MinimalGRUCell, I, H)
    x, c_prev, _ = _inputs(7)
    W_ih, W_hh = cell.weight_ih.chunk(2), cell.weight_hh.chunk(2)
    b = (cell.bias_ih + cell.bias_hh).chunk(2)
    cx = torch.cat([c_prev, x], 1)
    G_u = sigma(cx @ torch.cat([W_hh[0], W_ih[0]], 1).T + b[0])
    c_tilde = tanh(cx @ torch.cat([W_hh[1], W_ih[1]], 1).T + b[1])
    h, _ = cell.step(x, c_prev)
    torch.testing.assert_close(h, G_u * c_tilde + (1 - G_u) * c_prev)
    assert cell.weight_ih.shape == (2 * H, I) and cell.weight_hh.shape == (2 * H, H)


@pytest.mark.parametrize(("cid", "name", "opts"), CELL_CONFIGS, ids=[c[0] for c in CELL_CONFIGS])
def test_init_state_and_forward(cid: str, name: str, opts: dict) -> None:
    """init_state is zeros of the right shapes and dtype; forward(x) steps from it."""
    torch.manual_seed(0)
    cell = make_cell(name, I, H, **opts).to(DT)
    state = cell.init_state(B)
    states = state if isinstance(state, tuple) else (state,)
    assert len(states) == cell.num_states == (2 if name in ("lstm", "peephole") else 1)
    for s in states:
        assert s.shape == (B, H) and s.dtype == DT
        assert torch.count_nonzero(s) == 0
    s32 = cell.init_state(2, dtype=torch.float32)
    assert all(s.dtype == torch.float32 for s in (s32 if isinstance(s32, tuple) else (s32,)))
    x = torch.randn(B, I, dtype=DT)
    h1, s1 = cell(x)
    h2, s2 = cell.step(x, state)
    torch.testing.assert_close(h1, h2)
    torch.testing.assert_close(s1, s2)


@pytest.mark.parametrize(("cid", "name", "opts"), CELL_CONFIGS, ids=[c[0] for c in CELL_CONFIGS])
def test_initialisation(cid: str, name: str, opts: dict) -> None:
    """Matrices and biases ~ U(-1/sqrt(H), 1/sqrt(H)); layer-norm gains 1, shifts 0."""
    torch.manual_seed(0)
    cell = make_cell(name, I, 16, **opts)
    bound = 1 / math.sqrt(16)
    for pname, p in cell.named_parameters():
        if pname.startswith("ln_"):
            expected = 0.0 if pname.endswith("bias") else 1.0
            assert torch.all(p == expected), pname
        elif "forget_bias" in opts and pname.startswith("bias"):
            continue
        else:
            assert p.abs().max() <= bound, pname
            assert p.std() > bound / 4, pname  # not all zero or constant


@pytest.mark.parametrize("cls", [LSTMCell, PeepholeLSTMCell])
def test_forget_bias(cls) -> None:
    """forget_bias sets the forget gate's total bias and leaves the other gates alone."""
    torch.manual_seed(0)
    cell = cls(I, H, forget_bias=1.0)
    total = cell.bias_ih + cell.bias_hh
    assert torch.all(cell.bias_ih[H:2 * H] == 1.0)
    assert torch.all(cell.bias_hh[H:2 * H] == 0.0)
    assert torch.all(total[H:2 * H] == 1.0)
    others = torch.cat([total[:H], total[2 * H:]])
    assert others.abs().max() <= 2 / math.sqrt(H) and others.std() > 0
    # with zero weights the forget gate is exactly sigma(1)
    with torch.no_grad():
        for p in (cell.weight_ih, cell.weight_hh):
            p.zero_()
        if cls is PeepholeLSTMCell:
            cell.peephole.zero_()
    c_prev = torch.ones(2, H)
    _, (_, c) = cell.step(torch.zeros(2, I), (torch.zeros(2, H), c_prev))
    i, g = torch.sigmoid(cell.bias_ih[:H] + cell.bias_hh[:H]), torch.tanh(total[2 * H:3 * H])
    torch.testing.assert_close(c, torch.sigmoid(torch.tensor(1.0)) * c_prev + i * g)
    default = cls(I, H)
    assert not torch.all(default.bias_ih[H:2 * H] == 1.0)


@pytest.mark.parametrize(("name", "ref"), [
    ("rnn", torch.nn.RNNCell), ("lstm", torch.nn.LSTMCell), ("gru", torch.nn.GRUCell),
])
def test_parameter_names_match_torch(name: str, ref) -> None:
    cell = make_cell(name, I, H)
    theirs = {k: v.shape for k, v in ref(I, H).state_dict().items()}
    assert {k: v.shape for k, v in cell.state_dict().items()} == theirs


def test_bias_false() -> None:
    """bias=False: no bias parameters, and the step is the biased one with zero biases."""
    torch.manual_seed(0)
    for name in ("rnn", "lstm", "peephole", "gru", "gru-before", "gru-simple"):
        cell = make_cell(name, I, H, bias=False).to(DT)
        assert not any(n.startswith("bias") for n, _ in cell.named_parameters())
        biased = make_cell(name, I, H).to(DT)
        with torch.no_grad():
            for n, p in biased.named_parameters():
                p.copy_(getattr(cell, n) if not n.startswith("bias") else torch.zeros_like(p))
        x, a, c = _inputs(8)
        state = (a, c) if cell.num_states == 2 else a
        torch.testing.assert_close(cell.step(x, state), biased.step(x, state))
