"""The bptt engine's record of per-step state gradients equals autograd through cell.step."""

import pytest
import torch

from rnnkit.cells import make_cell
from rnnkit.engines import record_state_grads
from rnnkit.layers import Recurrent


def _reference_grads(cell, x, w, lengths):
    """dL/ds_t by retain_grad on a Python loop over cell.step (the oracle)."""
    B, T, _ = x.shape
    state = cell.init_state(B)
    per_step = []
    loss = 0
    for t in range(T):
        _, new = cell.step(x[:, t], state)
        inside = (t < lengths).unsqueeze(-1)
        new = tuple(torch.where(inside, n, s) for n, s in
                    zip(new if isinstance(new, tuple) else (new,),
                        state if isinstance(state, tuple) else (state,)))
        for s in new:
            s.retain_grad()
        per_step.append(new)
        loss = loss + (new[0] * inside * w[:, t]).sum()
        state = new if len(new) > 1 else new[0]
    loss.backward()
    def grad(s):
        return torch.zeros_like(s) if s.grad is None else s.grad

    return [torch.stack([grad(s[j]) for s in per_step]) for j in range(len(per_step[0]))]


@pytest.mark.parametrize("name", ["rnn", "lstm", "peephole", "gru", "gru-before", "gru-simple"])
@pytest.mark.parametrize("uneven", [False, True])
def test_recorded_state_grads_equal_autograd(name, uneven):
    torch.manual_seed(0)
    cell = make_cell(name, 3, 4).double()
    x = torch.randn(3, 6, 3, dtype=torch.double)
    w = torch.randn(3, 6, 4, dtype=torch.double)
    lengths = torch.tensor([6, 2, 4]) if uneven else torch.tensor([6, 6, 6])
    expected = _reference_grads(cell, x, w, lengths)
    layer = Recurrent(cell, engine="bptt")
    with record_state_grads() as rec:
        out, _ = layer(x, lengths=lengths if uneven else None)
        (out * w).sum().backward()
    assert len(rec.runs) == 1
    got = rec.runs[0]
    assert len(got) == cell.num_states
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)


def test_recording_is_off_outside_the_block():
    cell = make_cell("lstm", 3, 4)
    layer = Recurrent(cell, engine="bptt")
    with record_state_grads() as rec:
        pass
    layer(torch.randn(2, 5, 3))[0].sum().backward()
    assert rec.runs == []
