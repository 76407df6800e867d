"""Attention: weights are a distribution over the source, zero at padding, and padding never
changes what the model computes."""

import pytest
import torch

from rnnkit.layers.attention import Attention, length_mask
from rnnkit.models import Seq2Seq, Seq2SeqConfig


@pytest.mark.parametrize("kind", ["additive", "dot", "general"])
def test_weights_are_a_distribution_that_ignores_padding(kind):
    torch.manual_seed(0)
    att = Attention(kind, 6, 6)
    memory = torch.randn(3, 5, 6)
    lengths = torch.tensor([5, 2, 3])
    mask = length_mask(lengths, 5)
    query = torch.randn(3, 6)
    ctx, w = att(query, memory, mask)
    assert torch.allclose(w.sum(-1), torch.ones(3))
    assert (w >= 0).all()
    assert w[1, 2:].abs().max() == 0 and w[2, 3:].abs().max() == 0
    # garbage in the padded positions changes nothing
    noisy = memory.clone()
    noisy[1, 2:] = 1e3
    noisy[2, 3:] = -7.0
    ctx2, w2 = att(query, noisy, mask)
    assert torch.allclose(ctx, ctx2) and torch.allclose(w, w2)
    # each row equals that sentence attended alone, without padding
    c1, w1 = att(query[1:2], memory[1:2, :2])
    assert torch.allclose(c1, ctx[1:2], atol=1e-6) and torch.allclose(w1, w[1:2, :2], atol=1e-6)


@pytest.mark.parametrize("kind", ["additive", "dot", "general"])
def test_many_queries_at_once_equal_one_at_a_time(kind):
    torch.manual_seed(1)
    att = Attention(kind, 4, 4)
    memory, query = torch.randn(2, 5, 4), torch.randn(2, 3, 4)
    mask = length_mask(torch.tensor([5, 4]), 5)
    ctx, w = att(query, memory, mask)
    for t in range(3):
        c, wt = att(query[:, t], memory, mask)
        assert torch.allclose(c, ctx[:, t], atol=1e-6) and torch.allclose(wt, w[:, t], atol=1e-6)


def test_dot_attention_rejects_unequal_sizes():
    with pytest.raises(ValueError, match="dot attention needs query_size == memory_size"):
        Attention("dot", 4, 6)


@pytest.mark.parametrize("feed", [True, False])
@pytest.mark.parametrize("cell,kind", [("lstm", "general"), ("gru", "additive"),
                                       ("rnn", "dot")])
def test_seq2seq_attention_over_padded_batch(cell, kind, feed):
    torch.manual_seed(2)
    cfg = Seq2SeqConfig(12, 11, cell=cell, embedding_size=8, encoder_hidden_size=5,
                        decoder_hidden_size=10, encoder_layers=2, decoder_layers=2,
                        attention=kind, input_feeding=feed, dropout=0.0)
    model = Seq2Seq(cfg).eval()
    src = torch.randint(4, 12, (3, 6))
    lengths = torch.tensor([6, 2, 4])
    for b, n in enumerate(lengths.tolist()):
        src[b, n:] = 0
    tgt = torch.randint(4, 11, (3, 4))
    out = model(src, lengths, tgt)
    assert torch.allclose(out.attention.sum(-1), torch.ones(3, 4), atol=1e-6)
    assert out.attention[1, :, 2:].abs().max() == 0
    assert out.attention[2, :, 4:].abs().max() == 0
    # sentence 1 alone (no padding) gives the same logits and attention
    alone = model(src[1:2, :2], lengths[1:2], tgt[1:2])
    assert torch.allclose(alone.logits, out.logits[1:2], atol=1e-5)
    assert torch.allclose(alone.attention, out.attention[1:2, :, :2], atol=1e-6)
    # the step-by-step decoder gives the same attention as the training pass
    state = model.encode(src, lengths)
    for t in range(4):
        logits, state = model.step(tgt[:, t], state)
        assert torch.allclose(state.weights, out.attention[:, t], atol=1e-5)
        assert torch.allclose(logits, out.logits[:, t], atol=1e-5)
