"""Seq2Seq learns: a tiny model reverses short symbol sequences; scheduled sampling trains;
tied embeddings share one tensor; the config round-trips."""

import random

import pytest
import torch

from rnnkit.data.parallel import make_batch
from rnnkit.models import Seq2Seq, Seq2SeqConfig
from rnnkit.models.seq2seq import sequence_loss


def reverse_data(n, rng):
    out = []
    for _ in range(n):
        s = [rng.randrange(4, 10) for _ in range(rng.randint(2, 6))]
        out.append((s, s[::-1]))
    return out


def train_reverse(cell, attention, steps, sampling_rate=0.0, input_feeding=True):
    torch.manual_seed(0)
    rng = random.Random(0)
    cfg = Seq2SeqConfig(10, 10, cell=cell, embedding_size=16, encoder_hidden_size=32,
                        decoder_hidden_size=32, attention=attention, encoder_layers=1,
                        decoder_layers=1, dropout=0.0, input_feeding=input_feeding)
    model = Seq2Seq(cfg)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(steps):
        b = make_batch(reverse_data(64, rng), range(64))
        out = model(b.src, b.src_lengths, b.tgt_in, sampling_rate=sampling_rate)
        loss = sequence_loss(out.logits, b.tgt_out)
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = reverse_data(200, random.Random(1))
    b = make_batch(test, range(200))
    return model, test, b


@pytest.mark.parametrize("cell,attention,feed", [("gru", "general", True),
                                                 ("lstm", "additive", False)])
def test_tiny_seq2seq_learns_to_reverse(cell, attention, feed):
    model, test, b = train_reverse(cell, attention, 200, input_feeding=feed)
    for beam in (1, 3):
        out = model.translate(b.src, b.src_lengths, beam_size=beam)
        exact = sum(o == t for o, (_, t) in zip(out, test)) / len(test)
        assert exact >= 0.97, (beam, exact)
    # reversing: the last target token attends most to the first source token
    with torch.no_grad():
        att = model.eval()(b.src, b.src_lengths, b.tgt_in).attention
    last = (b.src_lengths - 1)
    rows = torch.arange(len(test))
    top = att[rows, last].argmax(-1)  # the step emitting the last token (source's first)
    assert (top == 0).float().mean() >= 0.9


def test_scheduled_sampling_trains():
    model, test, b = train_reverse("gru", "general", 120, sampling_rate=0.25)
    out = model.translate(b.src, b.src_lengths)
    assert sum(o == t for o, (_, t) in zip(out, test)) / len(test) >= 0.8


def test_tied_embeddings_share_one_tensor_and_config_round_trips():
    cfg = Seq2SeqConfig(20, 30, embedding_size=8, encoder_hidden_size=4,
                        decoder_hidden_size=6, cell_options={"layer_norm": True})
    model = Seq2Seq(cfg)
    assert model.out.weight is model.tgt_embed.weight
    assert model.combine.out_features == 8
    again = Seq2Seq(Seq2SeqConfig.from_dict(cfg.to_dict()))
    assert {k: v.shape for k, v in again.state_dict().items()} == \
           {k: v.shape for k, v in model.state_dict().items()}
    untied = Seq2Seq(Seq2SeqConfig(20, 30, embedding_size=8, encoder_hidden_size=4,
                                   decoder_hidden_size=6, tie_embeddings=False))
    assert untied.out.weight is not untied.tgt_embed.weight
    assert untied.out.weight.shape == (30, 6)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="attention must be one of"):
        Seq2Seq(Seq2SeqConfig(5, 5, attention="cosine"))
    with pytest.raises(ValueError, match=r"attention='dot' needs decoder_hidden_size \(6\)"):
        Seq2Seq(Seq2SeqConfig(5, 5, attention="dot", encoder_hidden_size=4,
                              decoder_hidden_size=6))
    with pytest.raises(ValueError, match="sampling_rate"):
        Seq2Seq(Seq2SeqConfig(5, 5, embedding_size=4, encoder_hidden_size=2,
                              decoder_hidden_size=4))(torch.ones(1, 2, dtype=torch.long),
                                                      torch.tensor([2]),
                                                      torch.ones(1, 2, dtype=torch.long), 1.5)
