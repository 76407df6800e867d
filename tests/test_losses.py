"""rnnkit.losses.linear_cross_entropy: the chunked decoder + cross-entropy equals
F.cross_entropy(F.linear(...)) (loss and every gradient) in float64 exactly up to summation
order, passes gradcheck, and in float32 equals it to rounding on both GEMM backends, with
ignored rows, a last chunk shorter than the others, both reductions, no bias, and a weight
shared with an embedding (tied decoder). The language model's loss uses it."""

import pytest
import torch
import torch.nn.functional as F

from rnnkit import gemm
from rnnkit.losses import linear_cross_entropy
from rnnkit.models.lm import LanguageModel, LMConfig


def _case(dtype, n=23, d=7, v=31, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    w = torch.randn(v, d, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(v, generator=g, dtype=dtype).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    t[[2, 5, n - 1]] = -100
    return h, w, b, t


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("rows", [None, 1, 5, 23, 40])
def test_float64_equals_the_unfused_loss_and_gradients(reduction, rows):
    h, w, b, t = _case(torch.float64)
    ours = linear_cross_entropy(h, w, b, t, reduction=reduction, chunk_rows=rows)
    ref = F.cross_entropy(F.linear(h, w, b), t, reduction=reduction)
    assert abs(ours.item() - ref.item()) <= 1e-12 * max(1.0, abs(ref.item()))
    g_ours = torch.autograd.grad(2.5 * ours, (h, w, b))
    g_ref = torch.autograd.grad(2.5 * ref, (h, w, b))
    for a, r in zip(g_ours, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_gradcheck_float64():
    h, w, b, t = _case(torch.float64, n=9, d=4, v=6, seed=1)
    assert torch.autograd.gradcheck(
        lambda h, w, b: linear_cross_entropy(h, w, b, t, chunk_rows=4), (h, w, b))
    assert torch.autograd.gradcheck(
        lambda h, w: linear_cross_entropy(h, w, None, t, reduction="sum", chunk_rows=2),
        (h, w))


@pytest.mark.parametrize("backend", ["aten", "onednn"])
def test_float32_equals_the_unfused_loss_on_both_backends(backend):
    h, w, b, t = _case(torch.float32, n=300, d=48, v=1000, seed=2)
    with gemm.forced(backend):
        ours = linear_cross_entropy(h, w, b, t, chunk_rows=64)
        g_ours = torch.autograd.grad(ours, (h, w, b))
    ref = F.cross_entropy(F.linear(h, w, b), t)
    g_ref = torch.autograd.grad(ref, (h, w, b))
    assert abs(ours.item() - ref.item()) <= 2e-6 * ref.item()
    for a, r in zip(g_ours, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-6)


def test_without_autograd_only_the_loss_and_every_row_ignored():
    h, w, b, t = _case(torch.float32)
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, b, t, chunk_rows=4)
        assert not loss.requires_grad
        assert abs(loss.item() - F.cross_entropy(F.linear(h, w, b), t).item()) < 1e-5
    none = torch.full_like(t, -100)
    assert linear_cross_entropy(h, w, b, none).item() == 0.0  # nothing to average
    (g,) = torch.autograd.grad(linear_cross_entropy(h, w, b, none), (h,))
    assert g.abs().max().item() == 0.0


def test_only_the_inputs_that_need_a_gradient_get_one():
    h, w, b, t = _case(torch.float64)
    w.requires_grad_(False)
    (gh,) = torch.autograd.grad(linear_cross_entropy(h, w, b, t), (h,), allow_unused=False)
    ref = torch.autograd.grad(F.cross_entropy(F.linear(h, w, b), t), (h,))[0]
    torch.testing.assert_close(gh, ref, rtol=1e-12, atol=1e-12)


def test_bad_arguments_are_refused():
    h, w, b, t = _case(torch.float32)
    with pytest.raises(ValueError, match="reduction must be"):
        linear_cross_entropy(h, w, b, t, reduction="none")
    with pytest.raises(ValueError, match=r"expected h \(N, D\)"):
        linear_cross_entropy(h, w[:, :3], b, t)
    with pytest.raises(ValueError, match="chunk_rows must be at least 1"):
        linear_cross_entropy(h, w, b, t, chunk_rows=0)


@pytest.mark.parametrize("tied", [False, True])
def test_the_language_models_loss_is_the_cross_entropy_of_its_logits(tied):
    torch.manual_seed(4)
    model = LanguageModel(LMConfig(vocab_size=53, embedding_size=12, hidden_size=12,
                                   num_layers=1, tie_weights=tied)).double().train()
    x = torch.randint(0, 53, (3, 8))
    y = torch.randint(0, 53, (3, 8))
    y[0, :2] = -100
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(5)
    loss, _ = model.loss(x, y)
    grads = torch.autograd.grad(loss, params)
    torch.manual_seed(5)  # the same dropout masks
    logits = model(x).logits
    ref = F.cross_entropy(logits.reshape(-1, 53), y.reshape(-1))
    ref_grads = torch.autograd.grad(ref, params)
    assert abs(loss.item() - ref.item()) <= 1e-12
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)
