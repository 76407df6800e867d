"""rnnkit.losses.linear_cross_entropy: the chunked decoder + cross-entropy equals
F.cross_entropy(F.linear(...)) (loss and every gradient) in float64 exactly up to summation
order, passes gradcheck, and in float32 equals it to rounding on both GEMM backends, with
ignored rows, a last chunk shorter than the others, both reductions, no bias, and a weight
shared with an embedding (tied decoder). adaptive_cross_entropy equals the loss of
nn.AdaptiveLogSoftmaxWithLoss and its gradients the same way, with a cluster no row reaches.
The language model's loss uses both."""

import pytest
import torch
import torch.nn.functional as F

from rnnkit import gemm
from rnnkit.losses import adaptive_cross_entropy, linear_cross_entropy
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


def _adaptive_case(dtype, n=40, d=8, seed=3, head_bias=True):
    torch.manual_seed(seed)
    module = torch.nn.AdaptiveLogSoftmaxWithLoss(d, 30, [5, 12, 20], div_value=2.0,
                                                 head_bias=head_bias).to(dtype)
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    t = torch.randint(0, 30, (n,), generator=g)
    t[(t >= 12) & (t < 20)] = 3  # the second cluster gets no row
    t[[1, 7]] = -100
    return module, h, t


def _module_loss(module, h, t, reduction):
    keep = t != -100
    loss = module(h[keep], t[keep]).loss
    return loss if reduction == "mean" else loss * keep.sum()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("rows", [None, 1, 7])
@pytest.mark.parametrize("head_bias", [False, True])
def test_adaptive_float64_equals_the_modules_loss_and_gradients(reduction, rows, head_bias):
    module, h, t = _adaptive_case(torch.float64, head_bias=head_bias)
    params = [h, *module.parameters()]
    ours = adaptive_cross_entropy(h, module, t, reduction=reduction, chunk_rows=rows)
    ref = _module_loss(module, h, t, reduction)
    assert abs(ours.item() - ref.item()) <= 1e-12 * max(1.0, abs(ref.item()))
    g_ours = torch.autograd.grad(1.5 * ours, params, allow_unused=True)
    g_ref = torch.autograd.grad(1.5 * ref, params, allow_unused=True)
    unused = [i for i, g in enumerate(g_ref) if g is None]
    assert len(unused) == 2  # the empty cluster's two weights: no gradient in either
    for a, r in zip(g_ours, g_ref):
        assert (a is None) == (r is None)
        if r is not None:
            torch.testing.assert_close(a, r, rtol=1e-11, atol=1e-12)


def test_adaptive_gradcheck_float64():
    module, h, t = _adaptive_case(torch.float64, n=12, d=8, seed=4)

    class Loss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.adaptive = module

        def forward(self, h):
            return adaptive_cross_entropy(h, self.adaptive, t, chunk_rows=4)

    loss = Loss()
    names = [name for name, _ in loss.named_parameters()]
    assert len(names) == 8  # the head's weight and bias, three clusters' two weights each
    weights = [p.detach().clone().requires_grad_() for p in loss.parameters()]
    assert torch.autograd.gradcheck(
        lambda h, *ws: torch.func.functional_call(loss, dict(zip(names, ws)), (h,)),
        (h, *weights))


@pytest.mark.parametrize("backend", ["aten", "onednn"])
def test_adaptive_float32_equals_the_module_on_both_backends(backend):
    torch.manual_seed(5)
    module = torch.nn.AdaptiveLogSoftmaxWithLoss(64, 3000, [200, 1000])
    h = torch.randn(500, 64, requires_grad=True)
    t = torch.randint(0, 3000, (500,))
    params = [h, *module.parameters()]
    with gemm.forced(backend):
        ours = adaptive_cross_entropy(h, module, t, chunk_rows=100)
        g_ours = torch.autograd.grad(ours, params)
    ref = module(h, t).loss
    g_ref = torch.autograd.grad(ref, params)
    assert abs(ours.item() - ref.item()) <= 2e-6 * ref.item()
    for a, r in zip(g_ours, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-6)


def test_adaptive_without_autograd_every_row_ignored_and_bad_targets():
    module, h, t = _adaptive_case(torch.float32)
    with torch.no_grad():
        loss = adaptive_cross_entropy(h, module, t)
        assert not loss.requires_grad
        assert abs(loss.item() - _module_loss(module, h, t, "mean").item()) < 1e-5
    none = torch.full_like(t, -100)
    assert adaptive_cross_entropy(h, module, none).item() == 0.0
    bad = t.clone()
    bad[4] = 30
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 29\].*got 30"):
        adaptive_cross_entropy(h, module, bad)
    with pytest.raises(ValueError, match=r"expected h \(N, 8\)"):
        adaptive_cross_entropy(h[:, :3], module, t)
    with pytest.raises(ValueError, match="reduction must be"):
        adaptive_cross_entropy(h, module, t, reduction="none")


def test_the_adaptive_language_models_loss_is_its_modules():
    torch.manual_seed(6)
    model = LanguageModel(LMConfig(vocab_size=40, embedding_size=16, hidden_size=16,
                                   num_layers=1, adaptive_cutoffs=[8, 20])).double().train()
    x = torch.randint(0, 40, (3, 7))
    y = torch.randint(0, 40, (3, 7))
    y[1, 3:] = -100
    params = [p for p in model.parameters() if p.requires_grad]
    for reduction in ("mean", "sum"):
        torch.manual_seed(7)
        loss, _ = model.loss(x, y, reduction=reduction)
        grads = torch.autograd.grad(loss, params)
        torch.manual_seed(7)  # the same dropout masks
        h, _ = model.features(x)
        ref = _module_loss(model.adaptive, h.reshape(-1, 16), y.reshape(-1), reduction)
        ref_grads = torch.autograd.grad(ref, params)
        assert abs(loss.item() - ref.item()) <= 1e-12 * max(1.0, abs(ref.item()))
        for a, r in zip(grads, ref_grads):
            torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)
