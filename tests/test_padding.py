"""Padding invariance, reversal within each length and PackedSequence input.

A batch padded with garbage (large random numbers) must give every sequence exactly what it
gets alone: outputs, final states and gradients (input and parameters); padded outputs are
exactly zero and padded input positions get exactly zero gradient.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from core_helpers import (
    CELL_IDS,
    DT,
    NATIVE_IDS,
    assert_close,
    build_layer,
    cell_config,
    flat,
    perturb_,
)
from rnnkit.layers import Recurrent, stack

LENGTHS = [3, 5, 1, 4]  # unsorted, one of length 1
T_PAD = 7
I = 3


def _weights(seed: int, shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _loss(output: torch.Tensor, state: object, seed: int) -> torch.Tensor:
    """A fixed random weighting of the output and of every final-state tensor."""
    total = (output * _weights(seed, output.shape)).sum()
    for k, s in enumerate(flat(state)):
        total = total + (s * _weights(seed + 1 + k, s.shape)).sum()
    return total


def _select_state(state: object, b: int) -> object:
    """Sequence ``b``'s part of a (nested) final state, keeping a batch of one."""
    if isinstance(state, torch.Tensor):
        return state[b:b + 1]
    return type(state)(_select_state(s, b) for s in state)


def check_padding_invariance(model: nn.Module, seed: int = 0) -> None:
    """Run ``model`` (batch-first) on each sequence alone and on a garbage-padded batch."""
    torch.manual_seed(seed)
    B, T = len(LENGTHS), T_PAD
    lengths = torch.tensor(LENGTHS)
    x = 1e3 * torch.randn(B, T, I, dtype=DT)  # garbage everywhere ...
    for b, n in enumerate(LENGTHS):  # ... except inside each sequence
        x[b, :n] = torch.randn(n, I, dtype=DT)
    params = list(model.parameters())

    # each sequence alone, no padding
    alone_out, alone_state, alone_gx = [], [], []
    alone_gp = [torch.zeros_like(p) for p in params]
    for b, n in enumerate(LENGTHS):
        xb = x[b:b + 1, :n].clone().requires_grad_()
        out, state = model(xb)
        w_out = _weights(100 + b, (1, T, out.shape[-1]))[:, :n]
        loss = (out * w_out).sum() + sum(
            (s * _weights(200 + b + 10 * k, s.shape)).sum() for k, s in enumerate(flat(state)))
        grads = torch.autograd.grad(loss, [xb, *params], allow_unused=True)
        alone_out.append(out.detach())
        alone_state.append([s.detach() for s in flat(state)])
        alone_gx.append(grads[0])
        for acc, g in zip(alone_gp, grads[1:]):
            if g is not None:
                acc += g

    # the padded batch
    xp = x.clone().requires_grad_()
    out, state = model(xp, lengths=lengths)
    w_out = torch.cat([_weights(100 + b, (1, T, out.shape[-1])) for b in range(B)])
    loss = (out * w_out).sum()
    for b in range(B):
        for k, s in enumerate(flat(_select_state(state, b))):
            loss = loss + (s * _weights(200 + b + 10 * k, s.shape)).sum()
    grads = torch.autograd.grad(loss, [xp, *params], allow_unused=True)
    gx, gp = grads[0], [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads[1:])]

    for b, n in enumerate(LENGTHS):
        assert_close(out[b:b + 1, :n], alone_out[b], what=f"output of sequence {b}")
        assert torch.all(out[b, n:] == 0), f"padded output of sequence {b} is not zero"
        assert_close(flat(_select_state(state, b)), alone_state[b], what=f"state of {b}")
        assert_close(gx[b:b + 1, :n], alone_gx[b], what=f"input gradient of {b}")
        assert torch.all(gx[b, n:] == 0), f"padded input of sequence {b} got a gradient"
    assert_close(gp, alone_gp, atol=1e-9, what="parameter gradients")


def _engines(cell_id: str) -> list[str]:
    return ["reference", "bptt"] + (["native"] if cell_id in NATIVE_IDS else [])


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize(("cell_id", "engine"),
                         [(c, e) for c in CELL_IDS for e in _engines(c)])
def test_recurrent_padding_invariance(cell_id: str, engine: str, reverse: bool) -> None:
    check_padding_invariance(build_layer(cell_id, engine, I, 4, reverse=reverse))


@pytest.mark.parametrize("connection", ["none", "residual", "dense", "highway"])
@pytest.mark.parametrize(("bidirectional", "merge"),
                         [(False, "concat"), (True, "concat"), (True, "sum"), (True, "mean")])
@pytest.mark.parametrize(("cell_id", "engine"), [("lstm", "bptt"), ("gru-after", "native"),
                                                 ("gru-before-ln", "reference")])
def test_stacked_padding_invariance(cell_id, engine, connection, bidirectional, merge) -> None:
    name, opts = cell_config(cell_id)
    torch.manual_seed(3)
    hidden = I if not bidirectional or merge != "concat" else 4
    model = stack(name, I, hidden, 3, bidirectional=bidirectional, merge=merge,
                  connection=connection, engine=engine, **opts).to(DT)
    perturb_(model, 3, 0.3)
    check_padding_invariance(model)


@pytest.mark.parametrize(("cell_id", "engine"),
                         [(c, e) for c in CELL_IDS for e in _engines(c)])
def test_reverse_within_each_length(cell_id: str, engine: str) -> None:
    """A reverse layer equals a forward one (same cell) run on each sequence reversed within
    its own length, with the outputs reversed back; padding stays where it is."""
    torch.manual_seed(0)
    fwd = build_layer(cell_id, engine, I, 4)
    rev = Recurrent(fwd.cell, reverse=True, engine=engine)
    lengths = torch.tensor(LENGTHS)
    x = torch.randn(len(LENGTHS), T_PAD, I, dtype=DT)
    x_rev = x.clone()
    for b, n in enumerate(LENGTHS):
        x_rev[b, :n] = x[b, :n].flip(0)
    out_r, state_r = rev(x, lengths=lengths)
    out_f, state_f = fwd(x_rev, lengths=lengths)
    for b, n in enumerate(LENGTHS):
        out_f[b, :n] = out_f[b, :n].flip(0).clone()
    assert_close(out_r, out_f, what="output")
    assert_close(state_r, state_f, what="final state")


@pytest.mark.parametrize(("cell_id", "engine", "kind"), [
    ("lstm", "native", "recurrent"), ("lstm", "bptt", "recurrent"),
    ("gru-before", "bptt", "recurrent"), ("rnn-tanh", "reference", "bidirectional"),
    ("lstm-ln", "bptt", "stacked"), ("gru-after", "native", "stacked"),
])
def test_packed_input_equals_lengths(cell_id: str, engine: str, kind: str) -> None:
    """A PackedSequence (unsorted) gives the same output, packed in the same order, and the
    same final state as the padded tensor with ``lengths``."""
    name, opts = cell_config(cell_id)
    torch.manual_seed(0)
    if kind == "recurrent":
        model = build_layer(cell_id, engine, I, 4, reverse=True)
    else:
        model = stack(name, I, 4, 2, bidirectional=True, engine=engine, **opts).to(DT)
        if kind == "bidirectional":
            model = model.layers[0]
    lengths = torch.tensor(LENGTHS)
    x = torch.randn(len(LENGTHS), T_PAD, I, dtype=DT)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out_p, state_p = model(packed)
    out_l, state_l = model(x, lengths=lengths)
    assert torch.equal(out_p.sorted_indices, packed.sorted_indices)
    assert torch.equal(out_p.batch_sizes, packed.batch_sizes)
    padded, got_lengths = pad_packed_sequence(out_p, batch_first=True, total_length=T_PAD)
    assert got_lengths.tolist() == LENGTHS
    assert_close(padded, out_l, what="output")
    assert_close(flat(state_p), flat(state_l), what="final state")


def test_lengths_in_any_form() -> None:
    """lengths as a list, an int32 tensor or all equal to T give the same results."""
    layer = build_layer("gru-before", "bptt", I, 4)
    x = torch.randn(4, T_PAD, I, dtype=DT)
    out, state = layer(x, lengths=torch.tensor(LENGTHS))
    for form in (LENGTHS, torch.tensor(LENGTHS, dtype=torch.int32)):
        assert_close(layer(x, lengths=form), (out, state), what=str(type(form)))
    assert_close(layer(x, lengths=torch.full((4,), T_PAD)), layer(x), what="full lengths")
