"""rnnkit's dropout (layers/dropout.py): the keep rate and scale it promises, unbiased output,
independent elements, autograd through it, torch.nn.Dropout's behaviour as a module, and the
models built on it."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.layers import dropout as dropout_module
from rnnkit.layers.dropout import BITS, Dropout, dropout, keep_mask, use_backend
from rnnkit.layers.recurrent import variational_mask
from rnnkit.models.lm import LanguageModel, LMConfig


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_keep_rate_and_scale(p):
    torch.manual_seed(0)
    n = 1 << 20
    mask, scale = keep_mask((n,), p)
    keep = round((1 - p) * 2 ** BITS)
    assert mask.dtype == torch.bool and mask.shape == (n,)
    assert scale == 1 / (1 - p)
    sd = ((1 - p) * p / (n / 2)) ** 0.5  # each half of the elements on its own
    for half in (mask[0::2], mask[1::2]):  # the low and the high 16 bits of every word
        assert abs(half.double().mean().item() - keep / 2 ** BITS) < 5 * sd
    # unbiased to 2**-16 / (1 - p): E[mask * scale] = 1
    assert abs(keep / 2 ** BITS * scale - 1) <= 2 ** -16 / (1 - p)
    assert abs((mask.double() * scale).mean().item() - 1.0) < 5 * sd * scale * 2 ** -0.5


def test_neighbours_are_independent():
    torch.manual_seed(1)
    mask, _ = keep_mask((1 << 20,), 0.5)
    a, b = mask[0::2].double(), mask[1::2].double()  # the two elements of one word
    c, d = mask[0:-1].double(), mask[1:].double()
    for u, v in ((a, b), (c, d)):
        corr = ((u - u.mean()) * (v - v.mean())).mean() / (u.std() * v.std())
        assert abs(corr.item()) < 5 / len(u) ** 0.5


def test_output_is_input_times_mask_and_scale():
    x = torch.randn(3, 5, 7, dtype=torch.float64)  # an odd number of elements
    torch.manual_seed(3)
    y = dropout(x, 0.4)
    torch.manual_seed(3)
    mask, scale = keep_mask(x.shape, 0.4)
    assert torch.equal(y, torch.where(mask, x * scale, torch.zeros(())))
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.4), y)  # the seed decides the mask
    assert not torch.equal(dropout(x, 0.4), y)


def test_gradients_float64():
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)

    def f(a):
        torch.manual_seed(5)
        return dropout(a, 0.4)

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))
    y = f(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.manual_seed(5)
    mask, scale = keep_mask(x.shape, 0.4)
    assert torch.equal(g, mask.double() * scale)


def test_edge_cases():
    x = torch.randn(8, 9)
    assert dropout(x, 0.0) is x
    assert dropout(x, 0.7, training=False) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    assert dropout(torch.empty(0, 4), 0.5).shape == (0, 4)
    with pytest.raises(ValueError, match="between 0 and 1"):
        dropout(x, 1.5)
    m = variational_mask(0.25, 6, 10, x)
    assert m.dtype == x.dtype and m.shape == (6, 10)
    scale = torch.tensor(1 / 0.75, dtype=x.dtype).item()
    assert set(m.unique().tolist()) <= {0.0, scale}


def test_module_is_torch_dropout():
    drop = Dropout(0.3)
    assert isinstance(drop, nn.Dropout) and drop.p == 0.3
    assert repr(drop) == repr(nn.Dropout(0.3)) and drop.state_dict() == {}
    x = torch.randn(50, 40)
    assert drop.eval()(x) is x
    y = drop.train()(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.7)
    # inplace keeps torch's implementation (its mask, its in-place write)
    torch.manual_seed(2)
    want = F.dropout(x.clone(), 0.3, training=True)
    torch.manual_seed(2)
    z = x.clone()
    Dropout(0.3, inplace=True)(z)
    assert torch.equal(z, want)


def test_models_use_it():
    model = LanguageModel(LMConfig(vocab_size=20, embedding_size=8, hidden_size=8,
                                   num_layers=2, dropout=0.3, embedding_dropout=0.1,
                                   output_dropout=0.2))
    assert isinstance(model.emb_drop, Dropout) and isinstance(model.out_drop, Dropout)
    x = torch.randint(0, 20, (3, 6))
    model.train()
    torch.manual_seed(4)
    a, _ = model.loss(x, x, None)
    torch.manual_seed(4)
    b, _ = model.loss(x, x, None)
    assert torch.equal(a, b)  # reproducible under the seed
    model.eval()
    with torch.no_grad():
        c, _ = model.loss(x, x, None)
        d, _ = model.loss(x, x, None)
    assert torch.equal(c, d) and not torch.equal(a, c)


def test_torch_backend(monkeypatch):
    x = torch.randn(40, 30)
    torch.manual_seed(6)
    want = F.dropout(x, 0.3, training=True)
    with use_backend("torch"):
        torch.manual_seed(6)
        assert torch.equal(dropout(x, 0.3), want)  # the masks of a run made before
    torch.manual_seed(6)
    assert not torch.equal(dropout(x, 0.3), want)
    with pytest.raises(ValueError, match="backend must be one of"), use_backend("fast"):
        pass
    monkeypatch.setattr(dropout_module, "_backend", "nope")
    with pytest.raises(ValueError, match="RNNKIT_DROPOUT='nope'"):
        dropout(x, 0.3)
