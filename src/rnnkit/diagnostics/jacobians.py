"""The recurrent Jacobians ds_t/ds_{t-1} along a sequence, their norms and singular values.

Backpropagation through time multiplies the loss's gradient by the transposed Jacobian of one
step for every step it travels back: ``dL/ds_{t-1} = J_t^T dL/ds_t + (direct terms)``. Norms of
``J_t`` below 1 along a sequence make gradients vanish, above 1 explode. For an LSTM the state
is ``s = [h, c]`` and J is (2H, 2H); the ``c -> c`` block is ``diag(Gamma_f)``, the notes' reason
why the cell carries information for many steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import jacrev, vmap

from rnnkit.cells.base import Params, RecurrentCell, from_tuple
from rnnkit.diagnostics.trace import LayerRecord


@dataclass
class JacobianStats:
    """Recurrent Jacobians of one layer along a sequence (processing order).

    Attributes:
        name: the layer's module path.
        spectral: (T, B) the largest singular value of J_t = ds_t/ds_{t-1} per sequence.
        frobenius: (T, B) the Frobenius norm of J_t.
        singular_values: (T, B, N) every singular value (descending), or ``None`` when the
            state is larger than ``max_svd`` features.
        jacobians: (T, B, N, N) the Jacobians themselves when kept, else ``None``.
    """

    name: str
    spectral: Tensor
    frobenius: Tensor
    singular_values: Tensor | None
    jacobians: Tensor | None = None

    def mean_spectral(self) -> Tensor:
        """(T,) the spectral norm per step, averaged over the batch."""
        return self.spectral.mean(1)


def step_jacobians(cell: RecurrentCell, x: Tensor, state0: tuple[Tensor, ...],
                   states: tuple[Tensor, ...], params: Params | None = None) -> Tensor:
    """The Jacobian of every step with respect to the previous state.

    Args:
        x: (T, B, I) time-major input.
        state0: the initial state, a tuple of (B, n).
        states: the state after every step, a tuple of (T, B, n).

    Returns:
        (T, B, N, N) with N the total state size (H, or 2H for ``[h, c]``):
        ``J[t, b] = d s_t / d s_{t-1}`` for sequence b.
    """
    sizes = [s.shape[-1] for s in state0]
    p = cell.params() if params is None else params
    p = {k: v.detach() for k, v in p.items() if v is not None}

    def one(flat: Tensor, x_t: Tensor) -> Tensor:
        parts = tuple(flat.split(sizes)) if len(sizes) > 1 else (flat,)
        state = from_tuple(cell, tuple(s.unsqueeze(0) for s in parts))
        _, new = cell.step(x_t.unsqueeze(0), state, p)
        new = new if isinstance(new, tuple) else (new,)
        return torch.cat([s[0] for s in new])

    jac = vmap(jacrev(one), in_dims=(0, 0))
    prev = [torch.cat(state0, -1).detach()]
    flat_states = torch.cat(states, -1).detach()  # (T, B, N)
    prev += list(flat_states[:-1].unbind(0))
    out = [jac(s, x_t.detach()) for s, x_t in zip(prev, x.unbind(0))]
    return torch.stack(out)


def jacobian_stats(record: LayerRecord, *, max_svd: int = 64, keep: bool = False
                   ) -> JacobianStats:
    """Norms (and, for states up to ``max_svd`` features, singular values) of the recurrent
    Jacobians of one traced layer run (:func:`rnnkit.diagnostics.trace.trace`).

    Steps past a sequence's length carry the state unchanged, so their Jacobian is the
    identity (spectral norm 1)."""
    J = step_jacobians(record.cell, record.x, record.state0, record.states, record.params)
    if record.mask is not None:
        eye = torch.eye(J.shape[-1], dtype=J.dtype, device=J.device)
        J = torch.where(record.mask.unsqueeze(-1), J, eye)
    if J.shape[-1] <= max_svd:
        sv = torch.linalg.svdvals(J)
        spectral = sv[..., 0]
    else:
        sv = None
        spectral = torch.linalg.matrix_norm(J, ord=2)
    frob = torch.linalg.matrix_norm(J)
    return JacobianStats(record.name, spectral, frob, sv, J if keep else None)
