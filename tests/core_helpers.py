"""Helpers shared by the core-library tests (cells, engines, layers, drop-ins).

Every cell configuration of issue 2 is listed in :data:`CELL_CONFIGS`; the tests run tiny sizes
(T about 4, B about 3, H about 3) in float64 so that they are fast and exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from rnnkit.cells import make_cell
from rnnkit.layers import Recurrent

# (id, cell name, cell options): every cell and option of issue 2.
CELL_CONFIGS: list[tuple[str, str, dict]] = [
    ("rnn-tanh", "rnn", {}),
    ("rnn-relu", "rnn-relu", {}),
    ("lstm", "lstm", {}),
    ("lstm-forget-bias", "lstm", {"forget_bias": 1.0}),
    ("lstm-ln", "lstm", {"layer_norm": True}),
    ("peephole", "peephole", {}),
    ("gru-after", "gru", {}),
    ("gru-after-ln", "gru", {"layer_norm": True}),
    ("gru-before", "gru-before", {}),
    ("gru-before-ln", "gru-before", {"layer_norm": True}),
    ("gru-simple", "gru-simple", {}),
]
CELL_IDS = [c[0] for c in CELL_CONFIGS]
NATIVE_IDS = {"rnn-tanh", "rnn-relu", "lstm", "lstm-forget-bias", "gru-after"}

DT = torch.float64


def cell_config(cell_id: str) -> tuple[str, dict]:
    """(name, options) of the configuration ``cell_id``."""
    for cid, name, opts in CELL_CONFIGS:
        if cid == cell_id:
            return name, dict(opts)
    raise KeyError(cell_id)


def perturb_(module: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
    """Add noise to every parameter so that layer-norm gains, zero biases and the like are
    not special values that could hide a wrong gradient."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def build_layer(cell_id: str, engine: str, input_size: int = 2, hidden_size: int = 3,
                seed: int = 0, **layer_opts: object) -> Recurrent:
    """A float64 :class:`Recurrent` of the configuration ``cell_id`` with seeded weights."""
    name, opts = cell_config(cell_id)
    torch.manual_seed(seed)
    cell = make_cell(name, input_size, hidden_size, **opts).to(DT)
    if "layer_norm" in opts:
        perturb_(cell, seed)
    return Recurrent(cell, engine=engine, **layer_opts).to(DT)


def random_state(layer: Recurrent, batch: int, seed: int = 1) -> Tensor | tuple[Tensor, ...]:
    """A random initial state (B, n) (a tuple for LSTMs) for ``layer``'s cell."""
    g = torch.Generator().manual_seed(seed)
    states = tuple(0.5 * torch.randn(batch, n, generator=g, dtype=DT)
                   for n in layer.cell.state_sizes())
    return states[0] if len(states) == 1 else states


def flat(out: object) -> list[Tensor]:
    """Every tensor of a nested output (tuples, lists, named tuples), in order."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat(o)]
    if out is None:
        return []
    raise TypeError(type(out).__name__)


class _Call(nn.Module):
    """Wraps ``call(module, tensors)`` as a module, for :func:`torch.func.functional_call`."""

    def __init__(self, module: nn.Module, call: Callable[[nn.Module, list[Tensor]], object]):
        super().__init__()
        self.module, self.call = module, call

    def forward(self, tensors: list[Tensor]) -> tuple[Tensor, ...]:
        return tuple(flat(self.call(self.module, tensors)))


def functional(module: nn.Module, call: Callable[[nn.Module, list[Tensor]], object]
               ) -> tuple[Callable[..., tuple[Tensor, ...]], list[Tensor]]:
    """``(fn, params)``: ``fn(*tensors, *params)`` runs ``call(module, tensors)`` with the
    module's parameters replaced by ``params`` and returns every output tensor (for
    gradient checks with respect to the parameters)."""
    wrapper = _Call(module, call)
    names = [n for n, _ in wrapper.named_parameters()]
    params = [p.detach().clone() for _, p in wrapper.named_parameters()]

    def fn(*args: Tensor) -> tuple[Tensor, ...]:
        n = len(args) - len(names)
        return functional_call(wrapper, dict(zip(names, args[n:])), (list(args[:n]),))

    return fn, params


def numerical_vjp_check(fn: Callable[..., tuple[Tensor, ...]], inputs: Sequence[Tensor],
                        n_vectors: int = 2, eps: float = 1e-6, atol: float = 1e-7,
                        rtol: float = 1e-5, seed: int = 0) -> None:
    """Gradient check that needs only one backward per forward.

    Computes the full Jacobian of ``fn`` by central differences, then for ``n_vectors``
    random output weightings ``v`` compares ``v^T J`` with the gradient autograd gives from a
    fresh forward and one backward. Raises AssertionError naming the input that disagrees.
    """
    base = [i.detach().clone() for i in inputs]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        outs0 = fn(*base)
    vectors = [[torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs0]
               for _ in range(n_vectors)]
    numerical = [[torch.zeros_like(b) for b in base] for _ in vectors]
    with torch.no_grad():
        for j, b in enumerate(base):
            for e in range(b.numel()):
                def at(delta: float, j: int = j, e: int = e) -> tuple[Tensor, ...]:
                    args = [x.clone() for x in base]
                    args[j].view(-1)[e] += delta
                    return fn(*args)
                plus, minus = at(eps), at(-eps)
                for k, v in enumerate(vectors):
                    d = sum(((p - m) * w).sum() for p, m, w in zip(plus, minus, v))
                    numerical[k][j].view(-1)[e] = d / (2 * eps)
    for k, v in enumerate(vectors):
        leaves = [b.clone().requires_grad_() for b in base]
        outs = fn(*leaves)
        total = sum((o * w).sum() for o, w in zip(outs, v))
        grads = torch.autograd.grad(total, leaves, allow_unused=True)
        for j, (ga, gn) in enumerate(zip(grads, numerical[k])):
            ga = torch.zeros_like(gn) if ga is None else ga
            if not torch.allclose(ga, gn, atol=atol, rtol=rtol):
                raise AssertionError(f"input {j}: analytical gradient differs from numerical "
                                     f"by {(ga - gn).abs().max().item():.3g}\n{ga}\n{gn}")


def grads_of(outputs: Sequence[Tensor], leaves: Sequence[Tensor], seed: int = 3
             ) -> list[Tensor]:
    """Gradients of a fixed random weighting of ``outputs`` w.r.t. ``leaves`` (zeros when
    unused)."""
    g = torch.Generator().manual_seed(seed)
    total = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outputs)
    grads = torch.autograd.grad(total, list(leaves), allow_unused=True)
    return [torch.zeros_like(x) if d is None else d for x, d in zip(leaves, grads)]


def assert_close(a: Sequence[Tensor] | Tensor, b: Sequence[Tensor] | Tensor,
                 atol: float = 1e-10, rtol: float = 1e-9, what: str = "") -> None:
    """Every tensor of ``a`` equals the one of ``b`` to float64 precision."""
    a, b = flat(a), flat(b)
    assert len(a) == len(b), f"{what}: {len(a)} tensors against {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.shape == y.shape, f"{what}[{i}]: shape {tuple(x.shape)} != {tuple(y.shape)}"
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol,
                                   msg=lambda m, i=i: f"{what}[{i}]: {m}")
