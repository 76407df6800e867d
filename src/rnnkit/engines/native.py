"""The native engine: torch's fused kernels (oneDNN on CPU, cuDNN on GPU) called with a cell's
own parameters, for the cells that are exactly torch's (tanh/relu RNN, LSTM, reset-after GRU)."""

from __future__ import annotations

import torch
from torch import _VF, Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit.cells.base import Params, RecurrentCell

_FUNCTIONS = {
    "LSTM": _VF.lstm,
    "GRU": _VF.gru,
    "RNN_TANH": _VF.rnn_tanh,
    "RNN_RELU": _VF.rnn_relu,
}


def flat_weights(cell: RecurrentCell, params: Params) -> list[Tensor]:
    """The cell's parameters in the order torch's kernels take them."""
    names = ["weight_ih", "weight_hh"]
    if getattr(cell, "bias", True):
        names += ["bias_ih", "bias_hh"]
    if getattr(cell, "proj_size", 0):
        names.append("weight_hr")
    return [params[n] for n in names]


def call_native(mode: str, x: Tensor | PackedSequence, hx: tuple[Tensor, ...],
                weights: list[Tensor], has_biases: bool, num_layers: int, dropout: float,
                training: bool, bidirectional: bool) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One call of torch's fused kernel; ``x`` time-major (T, B, I) or packed; ``hx`` entries
    (L * D, B, n). Returns the output (data of the packed sequence when packed) and states."""
    fn = _FUNCTIONS[mode]
    h = hx if mode == "LSTM" else hx[0]
    if isinstance(x, PackedSequence):
        out = fn(x.data, x.batch_sizes, h, weights, has_biases, num_layers, dropout, training,
                 bidirectional)
    else:
        out = fn(x, h, weights, has_biases, num_layers, dropout, training, bidirectional, False)
    return out[0], tuple(out[1:])


def run_native(
    cell: RecurrentCell,
    params: Params,
    x: Tensor,
    state: tuple[Tensor, ...],
    lengths: Tensor | None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run ``cell`` over ``x`` (T, B, I) with torch's fused kernel.

    Returns the output (T, B, H_out), zero past each sequence's length, and the final state
    (each sequence's state after its last step) as a tuple of (B, n).
    """
    mode = cell.native_mode
    if mode is None:
        raise ValueError(f"engine='native' does not support {cell!r}")
    weights = flat_weights(cell, params)
    has_biases = bool(getattr(cell, "bias", True))
    hx = tuple(s.unsqueeze(0) for s in state)
    if lengths is None:
        out, final = call_native(mode, x, hx, weights, has_biases, 1, 0.0, cell.training, False)
        return out, tuple(s.squeeze(0) for s in final)
    if torch.jit.is_tracing():  # a graph for any lengths (export): all of it packed
        return _run_packed(mode, x, hx, weights, has_biases, cell.training, lengths)
    shared = int(lengths.min())
    head, final = call_native(mode, x[:shared], hx, weights, has_biases, 1, 0.0,
                              cell.training, False)
    # The steps past the shortest sequence, packed. Packing all of it would be exact too, but
    # ATen's packed CPU kernel slices its input step by step, and the backward of each slice
    # writes zeros the size of the whole input: quadratic in T (benchmarks/bench_uneven.py).
    longer = (lengths > shared).nonzero().squeeze(1)
    tail, tail_final = _run_packed(
        mode, x[shared:].index_select(1, longer), tuple(h.index_select(1, longer) for h in final),
        weights, has_biases, cell.training, lengths.index_select(0, longer) - shared)
    out = torch.cat([head, tail.new_zeros(tail.shape[0], x.shape[1], tail.shape[2])
                     .index_copy(1, longer, tail)])
    return out, tuple(f.squeeze(0).index_copy(0, longer, t) for f, t in zip(final, tail_final))


def _run_packed(mode: str, x: Tensor, hx: tuple[Tensor, ...], weights: list[Tensor],
                has_biases: bool, training: bool, lengths: Tensor
                ) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One packed call of torch's kernel over ``x`` (T, B, I) from ``hx`` ((1, B, n) each):
    the output (T, B, H_out), zero past each length, and the final states (B, n)."""
    packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
    hx = tuple(h.index_select(1, packed.sorted_indices) for h in hx)
    data, final = call_native(mode, packed, hx, weights, has_biases, 1, 0.0, training, False)
    out, _ = pad_packed_sequence(
        PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices),
        total_length=x.shape[0])
    return out, tuple(s.squeeze(0).index_select(0, packed.unsorted_indices) for s in final)
