"""Greedy decoding and beam search on the step()/reorder_state() interface."""

import itertools
import math

import pytest
import torch
from torch import nn

from rnnkit.generation import beam_search, greedy
from rnnkit.models import Seq2Seq, Seq2SeqConfig

EOS = 3


class ToyModel(nn.Module):
    """A tiny recurrent next-token model over V=4 tokens (EOS=3) with a (B, 5) state."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.randn(4, 5, generator=g)
        self.rec = torch.randn(5, 5, generator=g)
        self.out = torch.randn(5, 4, generator=g) * 1.5

    def step(self, tokens, state):
        h = torch.tanh(self.emb[tokens] + state @ self.rec)
        return h @ self.out, h

    def reorder_state(self, state, index):
        return state.index_select(0, index)

    def log_prob(self, seq, state):
        """Teacher-forced log-probability of ``seq`` from ``state`` (1, 5), starting at 0."""
        tok, total = torch.tensor([0]), 0.0
        for t in seq:
            logits, state = self.step(tok, state)
            total += float(torch.log_softmax(logits, -1)[0, t])
            tok = torch.tensor([t])
        return total


def enumerate_space(model, state, max_len, alpha):
    """Every hypothesis beam search can return, with (normalised score, log_prob, tokens)."""
    out = []
    for n in range(max_len + 1):
        for body in itertools.product(range(3), repeat=n):
            if n < max_len:
                lp = model.log_prob([*body, EOS], state)
                out.append((lp / (n + 1) ** alpha, lp, list(body)))
            else:
                lp = model.log_prob(list(body), state)
                out.append((lp / n ** alpha, lp, list(body)))
    out.sort(key=lambda x: x[0], reverse=True)
    return out


def start_state(seed, batch=1):
    return torch.randn(batch, 5, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_wide_beam_finds_the_exhaustive_best(alpha):
    model = ToyModel(1)
    for seed in range(3):
        state = start_state(seed)
        space = enumerate_space(model, state, 4, alpha)  # 121 hypotheses
        hyps = beam_search(model, state, torch.tensor([0]), EOS, 4, beam_size=128,
                           length_penalty=alpha, n_best=10)[0]
        assert hyps[0].tokens == space[0][2]
        assert [h.tokens for h in hyps] == [s[2] for s in space[:10]]
        for h, s in zip(hyps, space):
            assert math.isclose(h.score, s[0], rel_tol=1e-5, abs_tol=1e-5)


@pytest.mark.parametrize("beam", [2, 3, 5])
def test_best_hypothesis_scores_highest_among_those_reached(beam):
    model = ToyModel(2)
    for seed in range(4):
        state = start_state(seed)
        space = {tuple(s[2]): s for s in enumerate_space(model, state, 4, 1.0)}
        hyps = beam_search(model, state, torch.tensor([0]), EOS, 4, beam_size=beam,
                           length_penalty=1.0, n_best=beam)[0]
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert hyps[0].score == max(scores)
        for h in hyps:  # scores are the model's own, recomputed by teacher forcing
            assert math.isclose(h.score, space[tuple(h.tokens)][0], rel_tol=1e-5)
        # a beam never beats exhaustive search
        assert hyps[0].score <= max(s[0] for s in space.values()) + 1e-6


def test_beam_of_one_equals_greedy():
    model = ToyModel(3)
    state = start_state(5, batch=6)
    start = torch.zeros(6, dtype=torch.long)
    limits = torch.tensor([1, 2, 3, 5, 8, 13])
    g = greedy(model, state, start, EOS, limits)
    b = beam_search(model, state, start, EOS, limits, beam_size=1, length_penalty=0.0)
    for gh, (bh,) in zip(g, b):
        assert gh.tokens == bh.tokens
        assert math.isclose(gh.log_prob, bh.log_prob, rel_tol=1e-5)
        assert gh.finished == bh.finished


def tiny_seq2seq():
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(15, 9, cell="gru", embedding_size=6, encoder_hidden_size=5,
                        decoder_hidden_size=8, encoder_layers=2, decoder_layers=2,
                        attention="additive", dropout=0.0)
    model = Seq2Seq(cfg).eval()
    with torch.no_grad():
        model.out.bias[3] -= 1.0  # fewer immediate EOS, longer hypotheses
    lengths = torch.tensor([5, 2, 7, 3])
    src = torch.randint(4, 15, (4, 7))
    for b, n in enumerate(lengths.tolist()):
        src[b, n:] = 0
    return model, src, lengths


def test_seq2seq_beam_of_one_equals_greedy():
    model, src, lengths = tiny_seq2seq()
    assert model.translate(src, lengths, beam_size=1) == [
        h[0].tokens for h in beam_search(model, model.encode(src, lengths),
                                         torch.full((4,), 2), 3, (lengths * 1.5).ceil().long()
                                         + 10, beam_size=1)]


@pytest.mark.parametrize("beam", [1, 4])
def test_batched_search_equals_unbatched(beam):
    model, src, lengths = tiny_seq2seq()
    max_len = lengths * 2
    with torch.no_grad():
        batched = beam_search(model, model.encode(src, lengths), torch.full((4,), 2), 3,
                              max_len, beam_size=beam, n_best=beam)
        for b in range(4):
            n = int(lengths[b])
            alone = beam_search(model, model.encode(src[b:b + 1, :n], lengths[b:b + 1]),
                                torch.full((1,), 2), 3, max_len[b:b + 1], beam_size=beam,
                                n_best=beam)[0]
            assert [h.tokens for h in alone] == [h.tokens for h in batched[b]]
            for x, y in zip(alone, batched[b]):
                assert math.isclose(x.score, y.score, rel_tol=1e-4)
    assert len({len(h[0].tokens) for h in batched}) > 1  # rows finish at different steps


def test_max_length_is_respected():
    model, src, lengths = tiny_seq2seq()
    with torch.no_grad():
        model.out.bias[3] = -30.0  # never EOS: every hypothesis is cut at its limit
    limits = torch.tensor([1, 3, 4, 6])
    for beam in (1, 3):
        hyps = beam_search(model, model.encode(src, lengths), torch.full((4,), 2), 3, limits,
                           beam_size=beam)
        assert [len(h[0].tokens) for h in hyps] == limits.tolist()
        assert not any(h[0].finished for h in hyps)


def test_bad_arguments():
    model = ToyModel()
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, start_state(0), torch.tensor([0]), EOS, 3, beam_size=0)
    with pytest.raises(ValueError, match="n_best"):
        beam_search(model, start_state(0), torch.tensor([0]), EOS, 3, beam_size=2, n_best=3)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_search_on_the_language_model(cell):
    from rnnkit.models.lm import LanguageModel, LMConfig
    torch.manual_seed(4)
    lm = LanguageModel(LMConfig(7, embedding_size=6, hidden_size=8, num_layers=2,
                                cell=cell)).eval()
    prompts = torch.tensor([[4, 5], [6, 4], [5, 5]])
    state = None
    for t in range(prompts.shape[1] - 1):
        _, state = lm.step(prompts[:, t], state)
    start = prompts[:, -1]
    g = greedy(lm, state, start, 1, 6)
    b1 = beam_search(lm, state, start, 1, 6, beam_size=1)
    assert [h.tokens for h in g] == [h[0].tokens for h in b1]
    batched = beam_search(lm, state, start, 1, 6, beam_size=3, n_best=3)
    for i in range(3):
        one = beam_search(lm, lm.reorder_state(state, torch.tensor([i])), start[i:i + 1], 1, 6,
                          beam_size=3, n_best=3)[0]
        assert [h.tokens for h in one] == [h.tokens for h in batched[i]]
        for x, y in zip(one, batched[i]):
            assert math.isclose(x.score, y.score, rel_tol=1e-5)
