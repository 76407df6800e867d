"""The cross-entropy of a decoder without its logits: ``linear_cross_entropy`` (a full
softmax) and ``adaptive_cross_entropy`` (an adaptive softmax, Grave et al. 2017).

A word-level language model's decoder turns N = batch x steps rows of D features into N x V
logits (2,048 x 33,278 floats, 272 MB, for WikiText-2 at 32 x 64 tokens), then log-softmax
and cross-entropy read them and autograd writes their gradient of the same size: passes
over memory that took a third of the decoder's time beside its three GEMMs (measured in
benchmarks/RESULTS.md, "The LM's full-softmax loss in chunks"). Here the rows go through in
chunks of about :data:`CHUNK_ELEMENTS` logits; each chunk's logits are made (on the
machine's fastest GEMM, :mod:`rnnkit.gemm`), reduced to its loss, turned in place into the
gradient of the loss with respect to them (softmax minus the one-hot target) and multiplied
out into the gradients of the features, weight and bias at once, so the backward pass only
scales them. The logits of the whole batch never exist. Without autograd (evaluation) only
the loss is computed, chunk by chunk.

    loss = linear_cross_entropy(h, decoder.weight, decoder.bias, targets)
    # == F.cross_entropy(F.linear(h, decoder.weight, decoder.bias), targets), to fp32 rounding

An adaptive softmax's loss is a sum of such cross-entropies: the head's over every row (the
shortlist's words and one class per tail cluster) and each cluster's over its rows, after the
cluster's projection; ``adaptive_cross_entropy`` computes it so, with the weights of a
``torch.nn.AdaptiveLogSoftmaxWithLoss``, whose own forward makes every cluster's log-softmax
whole and reads and writes it again in the backward pass (a third of a WikiText-2 model's
step: benchmarks/RESULTS.md, thirteenth session).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from rnnkit import gemm

#: logits per chunk (16 MB of float32): a chunk's rows are CHUNK_ELEMENTS // V
CHUNK_ELEMENTS = 1 << 22


def _chunks(n: int, vocab: int, rows: int | None) -> tuple[range, int]:
    """The first row of every chunk, and the rows of a chunk."""
    step = rows if rows is not None else max(1, CHUNK_ELEMENTS // max(1, vocab))
    return range(0, n, step), step


def _decoder(weight: Tensor, chunks: int, rows: int) -> gemm.StepWeight | None:
    """The decoder's weight in oneDNN's layout, reordered once for every chunk, where oneDNN
    multiplies chunks of ``rows`` rows by it and there is more than one chunk (at 126 x 384
    -> 33,278, 215 GFLOP/s packed against 145-190 as it is; the reorder costs one product's
    time); else None (each chunk through :func:`rnnkit.gemm.mm`)."""
    if chunks < 2:
        return None
    packed = gemm.StepWeight.of_transpose(weight, rows)
    return packed if packed.packed is not None else None


def _chunk_logits(h: Tensor, weight: Tensor, bias: Tensor | None,
                  decoder: gemm.StepWeight | None) -> Tensor:
    """Logits (n, V) in float32 or float64 of rows ``h`` (n, D)."""
    logits = (decoder.addmm(None, h, bias=bias) if decoder is not None
              else gemm.mm(h, weight.t(), bias=bias, kind="linear"))
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def _loss_and_grads(h: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                    ignore_index: int, rows: int | None, need: tuple[bool, bool, bool]
                    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """The summed cross-entropy of ``h W^T + b`` against ``targets``, the number of rows not
    ignored, and the gradients of the sum with respect to h, W and b that ``need`` asks for
    (None for the others), chunk by chunk."""
    n, vocab = h.shape[0], weight.shape[0]
    keep = targets != ignore_index
    total = torch.zeros((), dtype=torch.float64 if h.dtype == torch.float64 else
                        torch.float32, device=h.device)
    dh = torch.empty_like(h) if need[0] else None
    dw = torch.zeros_like(weight) if need[1] else None
    db = torch.zeros_like(bias) if need[2] and bias is not None else None
    starts, step = _chunks(n, vocab, rows)
    decoder = _decoder(weight, len(starts), step)
    for s in starts:
        hc, tc, kc = h[s:s + step], targets[s:s + step], keep[s:s + step]
        logits = _chunk_logits(hc, weight, bias, decoder)  # (m, V)
        safe = torch.where(kc, tc, 0).unsqueeze(1)
        picked = logits.gather(1, safe).squeeze(1)
        top = logits.amax(1)
        # one fused pass makes the softmax (torch.exp alone is slower on some CPUs: MKL's
        # vector maths); the log-sum-exp comes from its largest entry, exp(top - lse) >= 1/V,
        # which never underflows
        grad = torch.softmax(logits, 1)
        lse = top - grad.amax(1).log()
        total += torch.where(kc, lse - picked, 0).sum()
        if not any(need):
            continue
        grad.scatter_add_(1, safe, torch.full_like(picked, -1.0).unsqueeze(1))
        if not bool(kc.all()):
            grad.mul_(kc.unsqueeze(1))  # ignored rows give no gradient
        grad = grad.to(h.dtype)
        if dh is not None:
            gemm.mm(grad, weight, kind="dgrad", out=dh[s:s + step])
        if dw is not None:  # accumulated in place, on the backend measured for the shape
            # (oneDNN reads grad^T in place: 12.7 against ATen's 22.5 ms for an adaptive
            # softmax head's 2,095 x 2,002 -> 512; equal for a full softmax's 126-row chunks)
            gemm.mm(grad.t(), hc, base=dw, out=dw, kind="wgrad")
        if db is not None:
            db += grad.sum(0)
    return total, keep.sum(), dh, dw, db


def _scale(total: Tensor, count: Tensor, divide: bool) -> Tensor | None:
    """The factor of the mean over the rows not ignored (None for a sum)."""
    return 1.0 / count.clamp(min=1).to(total.dtype) if divide else None


class _LinearCrossEntropy(torch.autograd.Function):
    """:func:`_loss_and_grads` under autograd: the gradients are made in the forward pass
    and only scaled in the backward."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                ignore_index: int, rows: int | None, divide: bool) -> Tensor:
        total, count, dh, dw, db = _loss_and_grads(h, weight, bias, targets, ignore_index,
                                                   rows, ctx.needs_input_grad[:3])
        ctx.scale = _scale(total, count, divide)
        ctx.save_for_backward(dh, dw, db)
        return total if ctx.scale is None else total * ctx.scale

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        factor = grad_out if ctx.scale is None else grad_out * ctx.scale
        dh, dw, db = (None if t is None else t * factor.to(t.dtype) for t in ctx.saved_tensors)
        return dh, dw, db, None, None, None, None


def linear_cross_entropy(h: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, *,
                         ignore_index: int = -100, reduction: str = "mean",
                         chunk_rows: int | None = None) -> Tensor:
    """``F.cross_entropy(F.linear(h, weight, bias), targets, ignore_index=..., reduction=...)``
    without the (N, V) logits of the whole batch.

    Args:
        h: features (N, D).
        weight: the decoder's weight (V, D); bias (V,) or None.
        targets: (N,) class ids; ``ignore_index`` rows add nothing.
        reduction: ``"mean"`` over the rows not ignored (0 when every row is) or ``"sum"``.
        chunk_rows: rows per chunk (default: :data:`CHUNK_ELEMENTS` // V).

    Returns the loss, a scalar in float32 (float64 for float64 inputs). Differentiable once
    in ``h``, ``weight`` and ``bias`` (its gradients are computed while the loss is, when
    autograd records and an input requires them)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if h.dim() != 2 or targets.shape != h.shape[:1] or weight.shape[1] != h.shape[1]:
        raise ValueError(f"expected h (N, D), weight (V, D), targets (N,); got "
                         f"{tuple(h.shape)}, {tuple(weight.shape)}, {tuple(targets.shape)}")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    divide = reduction == "mean"
    if torch.is_grad_enabled():
        return _LinearCrossEntropy.apply(h, weight, bias, targets, ignore_index, chunk_rows,
                                         divide)
    total, count, *_ = _loss_and_grads(h, weight, bias, targets, ignore_index, chunk_rows,
                                       (False, False, False))  # the loss only
    scale = _scale(total, count, divide)
    return total if scale is None else total * scale


def adaptive_cross_entropy(h: Tensor, adaptive: nn.AdaptiveLogSoftmaxWithLoss, targets: Tensor,
                           *, ignore_index: int = -100, reduction: str = "mean",
                           chunk_rows: int | None = None) -> Tensor:
    """``adaptive(h, targets).loss`` (for ``reduction="mean"``) of an
    ``nn.AdaptiveLogSoftmaxWithLoss`` without the log-softmax of its head or any cluster:
    the head's and each cluster's cross-entropy by :func:`linear_cross_entropy`.

    Args:
        h: features (N, D), D = ``adaptive.in_features``.
        adaptive: the module whose head and tail weights are used (its forward is not).
        targets: (N,) word ids in [0, ``adaptive.n_classes``); ``ignore_index`` rows add
            nothing.
        reduction: ``"mean"`` over the rows not ignored (0 when every row is) or ``"sum"``.
        chunk_rows: rows per chunk of every cross-entropy (default: as there).

    Returns the loss, a scalar (float32; float64 for float64 inputs), to rounding that of
    the module's forward; differentiable once in ``h`` and the module's weights."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if h.dim() != 2 or targets.shape != h.shape[:1] or h.shape[1] != adaptive.in_features:
        raise ValueError(f"expected h (N, {adaptive.in_features}) and targets (N,); got "
                         f"{tuple(h.shape)}, {tuple(targets.shape)}")
    keep = targets != ignore_index
    bad = keep & ((targets < 0) | (targets >= adaptive.n_classes))
    if bad.any():
        raise ValueError(f"targets must lie in [0, {adaptive.n_classes - 1}] (or be "
                         f"ignore_index={ignore_index}); got {targets[bad][0].item()}")
    head_targets = targets.clone()
    cutoffs = adaptive.cutoffs  # the shortlist's end, every cluster's, n_classes
    total: Tensor | int = 0
    for i, (low, high) in enumerate(itertools.pairwise(cutoffs)):
        rows = (keep & (targets >= low) & (targets < high)).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        head_targets[rows] = adaptive.shortlist_size + i  # the cluster's class in the head
        project, out = adaptive.tail[i]
        total = total + linear_cross_entropy(project(h.index_select(0, rows)), out.weight,
                                             out.bias, targets[rows] - low, reduction="sum",
                                             chunk_rows=chunk_rows)
    head = adaptive.head
    total = linear_cross_entropy(h, head.weight, head.bias, head_targets,
                                 ignore_index=ignore_index, reduction="sum",
                                 chunk_rows=chunk_rows) + total
    if reduction == "sum":
        return total
    return total / keep.sum().clamp(min=1).to(total.dtype)


__all__ = ["CHUNK_ELEMENTS", "adaptive_cross_entropy", "linear_cross_entropy"]
