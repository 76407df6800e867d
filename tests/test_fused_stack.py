"""A stack that torch's kernel computes in one call gives what layer-by-layer engines give."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from rnnkit.layers import stack


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_fused_stack_equals_layer_by_layer(cell, bidirectional, packed):
    torch.manual_seed(0)
    fused = stack(cell, 3, 4, 2, bidirectional=bidirectional, engine="native").double()
    slow = stack(cell, 3, 4, 2, bidirectional=bidirectional, engine="reference").double()
    slow.load_state_dict(fused.state_dict())
    assert fused.fused_mode(torch.device("cpu")) is not None
    assert slow.fused_mode(torch.device("cpu")) is None
    x = torch.randn(3, 6, 3, dtype=torch.double)
    lengths = torch.tensor([6, 2, 5])
    results = []
    for model in (fused, slow):
        xi = x.clone().requires_grad_()
        if packed:
            out, states = model(pack_padded_sequence(xi, lengths, batch_first=True,
                                                     enforce_sorted=False))
            out = out.data
        else:
            out, states = model(xi, lengths=lengths)
        flat = [t for s in states for t in (s if isinstance(s, tuple) else (s,))]
        flat = [u for t in flat for u in (t if isinstance(t, tuple) else (t,))]
        loss = (out ** 2).sum() + sum((t ** 3).sum() for t in flat)
        grads = torch.autograd.grad(loss, [xi, *model.parameters()])
        results.append((out, flat, grads))
    (o1, s1, g1), (o2, s2, g2) = results
    torch.testing.assert_close(o1, o2, rtol=0, atol=1e-10)
    for a, b in zip(s1 + list(g1), s2 + list(g2)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_initial_states_reach_the_fused_kernel():
    torch.manual_seed(1)
    fused = stack("lstm", 3, 4, 2, engine="native").double()
    slow = stack("lstm", 3, 4, 2, engine="bptt").double()
    slow.load_state_dict(fused.state_dict())
    x = torch.randn(2, 5, 3, dtype=torch.double)
    states = [(torch.randn(2, 4, dtype=torch.double), torch.randn(2, 4, dtype=torch.double)),
              None]
    out1, st1 = fused(x, states)
    out2, st2 = slow(x, states)
    torch.testing.assert_close(out1, out2, rtol=0, atol=1e-12)
    torch.testing.assert_close(st1[1][1], st2[1][1], rtol=0, atol=1e-12)


def test_skip_connections_and_extras_run_layer_by_layer():
    cpu = torch.device("cpu")
    assert stack("lstm", 4, 4, 2, connection="residual", engine="native").fused_mode(cpu) is None
    assert stack("lstm", 4, 4, 2, dropconnect=0.1, engine="native").fused_mode(cpu) is None
    assert stack("lstm", 4, 4, 2, learn_init=True, engine="native").fused_mode(cpu) is None
    assert stack("lstm", 4, 4, 2, engine="native").fused_mode(cpu) == "LSTM"


@pytest.mark.parametrize("packed", [False, True])
def test_uneven_lengths_on_the_cpu_pack_only_the_steps_past_the_shortest(packed, monkeypatch):
    """ATen's packed CPU kernel is quadratic in T in its backward, so a CPU stack over uneven
    lengths runs layer by layer, each direction one fused call over the steps every sequence
    has and a packed call over the rest; the result is torch.nn.LSTM's on the packed input."""
    from rnnkit.engines import native

    torch.manual_seed(2)
    ours = stack("lstm", 3, 4, 2, bidirectional=True, engine="native").double()
    ref = torch.nn.LSTM(3, 4, 2, bidirectional=True, batch_first=True).double()
    for name, p in ref.named_parameters():
        layer, suffix = int(name.split("_l")[1][0]), name.endswith("_reverse")
        rec = ours.layers[layer].bwd if suffix else ours.layers[layer].fwd
        p.data.copy_(getattr(rec.cell, name.split("_l")[0]))
    steps_seen = []
    real = native.call_native

    def spy(mode, x, *args):
        steps_seen.append(len(x.batch_sizes) if hasattr(x, "batch_sizes") else -x.shape[0])
        return real(mode, x, *args)

    monkeypatch.setattr(native, "call_native", spy)
    x = torch.randn(3, 9, 3, dtype=torch.double)
    lengths = torch.tensor([9, 6, 7])
    xs = [x.clone().requires_grad_() for _ in range(2)]
    if packed:
        out, _ = ours(pack_padded_sequence(xs[0], lengths, batch_first=True,
                                           enforce_sorted=False))
        out = out.data
    else:
        out = ours(xs[0], lengths=lengths).output
        out = pack_padded_sequence(out, lengths, batch_first=True, enforce_sorted=False).data
    want, _ = ref(pack_padded_sequence(xs[1], lengths, batch_first=True, enforce_sorted=False))
    torch.testing.assert_close(out, want.data, rtol=0, atol=1e-12)
    grads = [torch.autograd.grad((o ** 2).sum(), [xi, *m.parameters()])
             for o, xi, m in ((out, xs[0], ours), (want.data, xs[1], ref))]
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=1e-12)
    # 2 layers x 2 directions: fused over the 6 shared steps (-6), packed over the 3 after
    assert sorted(steps_seen) == [-6] * 4 + [3] * 4


def test_lengths_given_as_a_list_reach_the_fused_stack():
    torch.manual_seed(3)
    model = stack("lstm", 3, 4, 2, bidirectional=True, engine="native").double()
    x = torch.randn(3, 5, 3, dtype=torch.double)
    for lengths in ([5, 2, 4], [5, 5, 5]):
        want = model(x, lengths=torch.tensor(lengths)).output
        torch.testing.assert_close(model(x, lengths=lengths).output, want, rtol=0, atol=0)
