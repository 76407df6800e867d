"""Diagnostics: gradient flow against autograd and a known answer, Jacobians, gates, logs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.cells.base import RecurrentCell
from rnnkit.diagnostics import (
    gate_stats,
    gate_values,
    gradient_flow,
    jacobian_stats,
    read_training_log,
    trace,
)
from rnnkit.errors import DataError
from rnnkit.layers import Recurrent, stack


class LinearCell(RecurrentCell):
    """h_t = W h_{t-1} + U x_t: the Elman cell with the identity as its nonlinearity."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.randn(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.randn(hidden_size, hidden_size))

    def step(self, x_t, state, params=None):
        p = self.params() if params is None else params
        h = F.linear(x_t, p["weight_ih"]) + F.linear(state, p["weight_hh"])
        return h, h


def _linear_setup(scale: float, T: int = 12, H: int = 4, symmetric: bool = False):
    torch.manual_seed(0)
    cell = LinearCell(3, H).double()
    q, _ = torch.linalg.qr(torch.randn(H, H, dtype=torch.float64))
    d = torch.diag(torch.tensor([1.0, 0.5, 0.4, 0.3], dtype=torch.float64)[:H])
    # symmetric: W = scale Q D Q^T, eigenvalues scale * (1, .5, .4, .3); else scale Q D
    W = scale * (q @ d @ q.T if symmetric else q @ d)
    with torch.no_grad():
        cell.weight_hh.copy_(W)
    layer = Recurrent(cell, engine="reference")
    x = torch.randn(1, T, 3, dtype=torch.float64)
    c = torch.randn(H, dtype=torch.float64)

    def losses():
        out, _ = layer(x)  # (1, T, H)
        step = torch.zeros(1, T, dtype=torch.float64)
        return step + F.pad((out[:, -1] @ c).unsqueeze(-1), (T - 1, 0))

    return layer, W, c, losses


def test_linear_rnn_gradient_decays_as_powers_of_w():
    T = 12
    layer, W, c, losses = _linear_setup(1.0, T)
    flow = gradient_flow(layer, losses).layers[0]
    # L_T = c . h_T, so dL_T/dh_{T-1-k} = (W^T)^k c exactly
    expected = torch.stack([torch.linalg.vector_norm(torch.linalg.matrix_power(W.T, k) @ c)
                            for k in range(T)])
    torch.testing.assert_close(flow.by_distance(), expected)
    # the whole loss is L_T / T here: same vectors, scaled
    grads = flow.total_grads[0][:, 0]  # (T, H)
    for t in range(T):
        want = torch.linalg.matrix_power(W.T, T - 1 - t) @ c / T
        torch.testing.assert_close(grads[t], want)


def test_linear_rnn_decay_rate_is_the_scale_of_w():
    # W = 0.8 Q D Q^T: the gradient's component on the leading eigenvector decays as 0.8^k
    # and the others faster, so ||dL_T/dh_{T-1-k}|| / ||dL_T/dh_{T-1}|| <= 0.8^k -> rate 0.8
    layer, W, c, losses = _linear_setup(0.8, T=30, symmetric=True)
    flow = gradient_flow(layer, losses).layers[0]
    curve = flow.by_distance()
    ratios = curve / curve[0]
    assert bool((ratios <= 0.8 ** torch.arange(30.0, dtype=torch.float64) + 1e-12).all())
    lead = torch.linalg.eigh(W).eigenvectors[:, -1]
    assert float(curve[29]) == pytest.approx(0.8 ** 29 * abs(float(lead @ c)), rel=1e-6)
    assert flow.decay_per_step(skip=10) == pytest.approx(0.8, rel=1e-3)
    stats = jacobian_stats(_trace_record(layer, torch.randn(1, 5, 3, dtype=torch.float64)))
    torch.testing.assert_close(stats.spectral, torch.full((5, 1), 0.8, dtype=torch.float64))


def _trace_record(model, x):
    with trace(model, probes=False) as tr:
        model(x)
    return tr.records[0]


def _norm(g):
    return torch.zeros((), dtype=torch.float64) if g is None else torch.linalg.vector_norm(g)


def _manual_flow(model, x, y, head):
    """dL/ds_t of every layer by autograd on an explicit cell.step loop (retain_grad).

    s_t is the state carried to the next step, (h_t, c_t) for an LSTM: dL/dc_t counts c_t's
    uses by later steps (the gradient BPTT carries), h_t's own dependence on c_t is in
    dL/dh_t."""
    states_per_layer = []
    inp = x.transpose(0, 1)  # (T, B, I)
    for layer in model.layers:
        cell = layer.cell
        state = cell.init_state(x.shape[0], dtype=x.dtype)
        kept, outs = [], []
        for x_t in inp.unbind(0):
            _, state = cell.step(x_t, state)
            carried = tuple(s.clone() for s in (state if isinstance(state, tuple) else (state,)))
            for s in carried:
                s.retain_grad()
            state = carried if isinstance(state, tuple) else carried[0]
            kept.append(carried)
            outs.append(carried[0])
        states_per_layer.append(kept)
        inp = torch.stack(outs)
    logits = head(inp.transpose(0, 1))
    loss = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean()
    loss.backward()
    return [torch.stack([torch.stack([_norm(s.grad) for s in step])
                         for step in kept]).T for kept in states_per_layer]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("engine", ["reference", "bptt", "auto"])
def test_gradient_flow_equals_autograd_on_reference(cell, engine):
    torch.manual_seed(1)
    model = stack(cell, 3, 5, num_layers=2, engine=engine).double()
    head = nn.Linear(5, 4).double()
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    y = torch.randint(0, 4, (2, 9))

    def losses():
        out, _ = model(x)
        return F.cross_entropy(head(out).transpose(1, 2), y, reduction="none")

    expected = _manual_flow(model, x, y, head)
    for mode in ("reference", "engine"):
        flow = gradient_flow(model, losses, mode=mode)
        assert [f.name for f in flow.layers] == ["layers.0", "layers.1"]
        for got, want in zip(flow.layers, expected):
            torch.testing.assert_close(got.total, want)


@pytest.mark.parametrize("cell", ["lstm", "gru-before"])
def test_engine_mode_uses_the_bptt_record_and_matches_reference(cell):
    """In "engine" mode a bptt layer runs its whole sequence once and its own backward
    records dL/ds_t (rnnkit.engines.record_state_grads); padding included."""
    torch.manual_seed(2)
    model = stack(cell, 3, 4, num_layers=2, engine="bptt").double()
    x = torch.randn(3, 8, 3, dtype=torch.float64)
    lengths = torch.tensor([8, 3, 5])
    w = torch.randn(3, 8, 4, dtype=torch.float64)

    def losses():
        out, _ = model(x, lengths=lengths)
        return (out * w).sum(-1)

    with trace(model, mode="engine") as tr:
        losses()
    assert all(r.recorded is not None for r in tr.records)
    ref = gradient_flow(model, losses, mode="reference")
    got = gradient_flow(model, losses, mode="engine")
    for a, b in zip(got.layers, ref.layers):
        for ga, gb in zip(a.total_grads, b.total_grads):
            torch.testing.assert_close(ga, gb)
        torch.testing.assert_close(a.last, b.last)


def test_lstm_jacobian_matches_autograd_and_forget_gate():
    torch.manual_seed(3)
    layer = stack("lstm", 3, 4).layers[0]
    x = torch.randn(2, 5, 3)
    rec = _trace_record(layer, x)
    stats = jacobian_stats(rec, keep=True)
    cell = layer.cell
    t, b = 3, 1
    h_prev, c_prev = rec.states[0][t - 1, b], rec.states[1][t - 1, b]

    def step(flat):
        _, (h, c) = cell.step(rec.x[t, b:b + 1], (flat[None, :4], flat[None, 4:]))
        return torch.cat([h[0], c[0]])

    want = torch.autograd.functional.jacobian(step, torch.cat([h_prev, c_prev]))
    torch.testing.assert_close(stats.jacobians[t, b], want)
    forget = gate_values(rec)["forget"][t, b]
    torch.testing.assert_close(stats.jacobians[t, b, 4:, 4:].diagonal(), forget)
    torch.testing.assert_close(stats.spectral[t, b], torch.linalg.matrix_norm(want, ord=2))


def test_gates_reproduce_the_cell_and_saturate_with_a_large_forget_bias():
    torch.manual_seed(4)
    layer = stack("lstm", 3, 6, forget_bias=8.0).layers[0]
    rec = _trace_record(layer, 0.1 * torch.randn(3, 10, 3))
    g = gate_values(rec)
    c_prev = torch.cat([rec.state0[1][None], rec.states[1][:-1]])
    torch.testing.assert_close(g["forget"] * c_prev + g["input"] * g["cell"], rec.states[1])
    torch.testing.assert_close(g["output"] * torch.tanh(rec.states[1]), rec.states[0])
    stats = gate_stats(rec, eps=0.05)
    assert stats.saturated["forget"] == 1.0
    assert stats.high["forget"] == 1.0
    assert stats.saturated["input"] == 0.0


def test_gru_gates_reproduce_the_cell():
    torch.manual_seed(5)
    for reset in ("after", "before"):
        layer = stack("gru" if reset == "after" else "gru-before", 3, 4).layers[0]
        rec = _trace_record(layer, torch.randn(2, 6, 3))
        g = gate_values(rec)
        h_prev = torch.cat([rec.state0[0][None], rec.states[0][:-1]])
        torch.testing.assert_close((1 - g["update"]) * g["candidate"] + g["update"] * h_prev,
                                   rec.states[0])


def test_training_log_reader(tmp_path):
    path = tmp_path / "log.jsonl"
    rows = [{"step": i, "loss": 2.0 - 0.01 * i, "grad_norm": 1.0 + i, "clipped": i >= 4}
            for i in range(1, 8)]
    rows[4]["loss"] = 9.0
    rows.insert(2, {"kind": "eval", "step": 2, "loss": 1.5})
    rows.append({"step": 8, "loss": "nan", "grad_norm": "inf", "clipped": True})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    log = read_training_log(path)
    assert log.steps == list(range(1, 9))
    assert log.clip_steps() == [4, 5, 6, 7, 8]
    assert log.clip_fraction() == pytest.approx(5 / 8)
    assert log.loss_spikes(factor=2.0) == [5, 8]
    assert log.nonfinite_steps() == [8]
    s = log.summary()
    assert s["max_grad_norm"] == 8.0 and s["clip_events"] == 5
    assert math.isnan(log.loss[-1])


def test_training_log_reader_infers_clipping_from_the_threshold(tmp_path):
    path = tmp_path / "log.jsonl"
    rows = [{"kind": "train", "step": 10 * i, "loss": 1.0, "grad_norm": g, "lr": 1e-3}
            for i, g in enumerate([0.5, 1.5, 0.9, 3.0], start=1)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_training_log(path, clip=1.0).clip_steps() == [20, 40]
    assert read_training_log(path).clip_steps() == []
    assert read_training_log(path, clip=0.0).clip_steps() == []


def test_training_log_reader_names_the_bad_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\nnot json\n')
    with pytest.raises(DataError, match=r"log.jsonl:2:"):
        read_training_log(path)
    path.write_text('{"step": 1, "loss": "high"}\n')
    with pytest.raises(DataError, match=r"log.jsonl:1: 'loss' must be a number"):
        read_training_log(path)


def test_drop_in_bidirectional_lstm_is_traced_and_restored():
    import rnnkit

    torch.manual_seed(6)
    model = rnnkit.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)

    def losses():
        return model(x)[0].pow(2).sum(-1)

    ref = gradient_flow(model, losses)
    eng = gradient_flow(model, losses, mode="engine")
    assert [f.reverse for f in ref.layers] == [False, True, False, True]
    for a, b in zip(ref.layers, eng.layers):
        torch.testing.assert_close(a.total, b.total)
    # the last layer's backward direction: its last processed step is position 0, whose
    # state reaches the loss only directly (L is the mean over 2 x 6 steps)
    out = model(x)[0]
    (g,) = torch.autograd.grad(out.pow(2).sum(), out)
    torch.testing.assert_close(ref.layers[3].total[0][-1] * 12, g[:, 0, 4:].norm())
    # the one-call fused path is back after the trace
    assert model.stack.fused_mode(torch.device("cpu")) == "LSTM"
    assert "fused_mode" not in vars(model.stack)
