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
    shared = x.shape[0] if lengths is None else int(lengths.min())
    head, final = call_native(mode, x[:shared], hx, weights, has_biases, 1, 0.0,
                              cell.training, False)
    if shared == x.shape[0]:
        return head, tuple(s.squeeze(0) for s in final)
    # The steps past the shortest sequence, packed. Packing the whole sequence would be exact
    # too, but ATen's packed kernel slices its input step by step and the backward of each
    # slice writes a zero tensor the size of the whole packed input: quadratic in T, 2.4x the
    # fused time at (84, 16, 256, bidirectional) and worse as T grows.
    longer = (lengths > shared).nonzero().squeeze(1)
    packed = pack_padded_sequence(x[shared:].index_select(1, longer),
                                  (lengths.index_select(0, longer) - shared).cpu(),
                                  enforce_sorted=False)
    tail_hx = tuple(h.index_select(1, longer).index_select(1, packed.sorted_indices)
                    for h in final)
    data, tail_final = call_native(mode, packed, tail_hx, weights, has_biases, 1, 0.0,
                                   cell.training, False)
    tail, _ = pad_packed_sequence(
        PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices),
        total_length=x.shape[0] - shared)
    out = torch.cat([head, tail.new_zeros(tail.shape[0], x.shape[1], tail.shape[2])
                     .index_copy(1, longer, tail)])
    final = tuple(f.squeeze(0).index_copy(0, longer, t.squeeze(0).index_select(
        0, packed.unsorted_indices)) for f, t in zip(final, tail_final))
    return out, final
