"""``Stacked.step``: one time step of a whole stack, as its forward computes it."""

from __future__ import annotations

import pytest
import torch

from rnnkit.layers import stack


@pytest.mark.parametrize("cell,connection,options", [
    ("lstm", "none", {}), ("lstm", "residual", {}), ("lstm", "dense", {}),
    ("lstm", "highway", {"layer_norm": True}), ("gru", "residual", {}),
    ("peephole", "none", {}), ("gru-simple", "dense", {}), ("rnn", "none", {}),
    # the scan cells' inference step (engines.scan.ScanInferenceStep), every window and form
    ("scan-gru", "residual", {}), ("scan-gru", "none", {"positive": True}),
    ("scan-lstm", "dense", {}), ("qrnn", "none", {}), ("qrnn", "residual", {"window": 1}),
    ("qrnn", "dense", {"bias": False}),
])
def test_step_by_step_equals_the_forward(cell, connection, options) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = stack(cell, 6, 6, 3, connection=connection, **options).double().eval()
    x = torch.randn(2, 7, 6, dtype=torch.double)
    with torch.no_grad():
        want, want_states = net(x)
        states, outs = None, []
        for t in range(x.shape[1]):
            y, states = net.step(x[:, t], states)
            outs.append(y)
    torch.testing.assert_close(torch.stack(outs, 1), want, rtol=0, atol=1e-12)
    flat = [s for layer in states for s in (layer if isinstance(layer, tuple) else (layer,))]
    want_flat = [s for layer in want_states
                 for s in (layer if isinstance(layer, tuple) else (layer,))]
    for a, b in zip(flat, want_flat):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_step_follows_a_weight_change_and_keeps_autograd_when_asked() -> None:
    torch.manual_seed(0)
    net = stack("lstm", 4, 4, 2).double().eval()
    x = torch.randn(3, 4, dtype=torch.double)
    with torch.no_grad():
        before, _ = net.step(x)
        net.layers[0].cell.weight_ih.mul_(2.0)  # in place: the prepared weights are stale
        after, _ = net.step(x)
        fresh, _ = net(x.unsqueeze(1))
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh[:, 0], rtol=0, atol=1e-12)
    y, _ = net.step(x.requires_grad_(True))  # autograd on: the layers' own forward
    y.sum().backward()
    assert x.grad is not None and net.layers[0].cell.weight_ih.grad is not None


def test_the_scan_cells_decode_on_their_pre_transposed_weights() -> None:
    from rnnkit.cells import make_cell
    from rnnkit.engines.kernels import inference_step
    from rnnkit.engines.scan import ScanInferenceStep

    for name in ("scan-gru", "scan-lstm", "qrnn"):
        step = inference_step(make_cell(name, 5, 3))
        assert isinstance(step, ScanInferenceStep)
        assert step.w.shape == (5 * step.cell.window, step.cell.blocks * 3)
        assert step.w.is_contiguous()
