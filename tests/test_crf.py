"""CRF: log-partition and Viterbi against brute-force enumeration; gradcheck; constraints."""

import itertools

import pytest
import torch

from rnnkit.layers import CRF, scheme_constraints


def brute_force(crf: CRF, emissions: torch.Tensor, length: int):
    """All K^n scores of one sequence (emissions (T, K)), as {path: score}."""
    trans, start, end = crf._scores(emissions.dtype)
    out = {}
    for path in itertools.product(range(crf.num_tags), repeat=length):
        s = start[path[0]] + end[path[-1]]
        s = s + sum(emissions[t, y] for t, y in enumerate(path))
        s = s + sum(trans[a, b] for a, b in itertools.pairwise(path))
        out[path] = s
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_partition_and_viterbi_match_enumeration(seed):
    torch.manual_seed(seed)
    k, t = 3, 4
    crf = CRF(k).double()
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    emissions = torch.randn(3, t, k, dtype=torch.float64)
    lengths = torch.tensor([4, 1, 3])
    log_z = crf.log_partition(emissions, lengths)
    best = crf.viterbi(emissions, lengths)
    for b in range(3):
        n = int(lengths[b])
        table = brute_force(crf, emissions[b], n)
        scores = torch.stack(list(table.values()))
        assert torch.allclose(log_z[b], torch.logsumexp(scores, 0), atol=1e-10)
        path = max(table, key=lambda p: float(table[p].detach()))
        assert best.tags[b, :n].tolist() == list(path)
        assert best.tags[b, n:].tolist() == [-1] * (t - n)
        assert best.scores[b].item() == pytest.approx(float(table[path].detach()), abs=1e-10)
        tags = torch.tensor(list(path) + [0] * (t - n))[None]
        score = crf.score(emissions[b:b + 1], tags, lengths[b:b + 1])
        assert score.item() == pytest.approx(float(table[path].detach()), abs=1e-10)


def test_padding_changes_nothing():
    torch.manual_seed(3)
    crf = CRF(4).double()
    e = torch.randn(2, 5, 4, dtype=torch.float64)
    lengths = torch.tensor([2, 5])
    tags = torch.randint(0, 4, (2, 5))
    e2, tags2 = e.clone(), tags.clone()
    e2[0, 2:] = 100.0 * torch.randn(3, 4, dtype=torch.float64)
    tags2[0, 2:] = 3
    assert torch.allclose(crf.nll(e, tags, lengths, "none"), crf.nll(e2, tags2, lengths, "none"))
    assert torch.equal(crf.viterbi(e, lengths).tags, crf.viterbi(e2, lengths).tags)
    e.requires_grad_(True)
    crf.nll(e, tags, lengths, "sum").backward()
    assert torch.count_nonzero(e.grad[0, 2:]) == 0


def test_nll_gradcheck_float64():
    torch.manual_seed(4)
    crf = CRF(3).double()
    e = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    tags = torch.randint(0, 3, (2, 4))
    lengths = torch.tensor([4, 2])
    params = (crf.transitions, crf.start, crf.end)
    inputs = (e, *(p.detach().clone().requires_grad_(True) for p in params))
    assert torch.autograd.gradcheck(lambda *x: CRF_nll(crf, tags, lengths, *x), inputs)


def CRF_nll(crf, tags, lengths, e, trans, start, end):
    """The CRF NLL as a function of emissions and parameters (for gradcheck)."""
    saved = crf.transitions, crf.start, crf.end
    try:
        del crf.transitions, crf.start, crf.end
        crf.transitions, crf.start, crf.end = trans, start, end
        return crf.nll(e, tags, lengths, "none")
    finally:
        del crf.transitions, crf.start, crf.end
        crf.transitions, crf.start, crf.end = saved


def test_bio_constraints_forbid_ill_formed_paths():
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    allowed, start, end = scheme_constraints(tags, "bio")
    assert not allowed[0, 2] and not allowed[1, 4] and allowed[1, 2] and allowed[2, 3]
    assert start.tolist() == [True, True, False, True, False]
    assert end.all()
    crf = CRF(5, allowed, start, end)
    # emissions that alone would pick O, I-PER, I-LOC
    e = torch.full((1, 3, 5), -5.0)
    e[0, 0, 0] = e[0, 1, 2] = e[0, 2, 4] = 5.0
    path = crf.viterbi(e).tags[0].tolist()
    for a, b in itertools.pairwise(path):
        assert allowed[a, b]
    assert start[path[0]]
    assert path == [0, 3, 4]
    unconstrained = CRF(5)
    for name in ("transitions", "start", "end"):
        getattr(unconstrained, name).data.copy_(getattr(crf, name).data)
    assert unconstrained.viterbi(e).tags[0].tolist() == [0, 2, 4]


def test_bioes_constraints():
    tags = ["O", "B-X", "I-X", "E-X", "S-X"]
    allowed, start, end = scheme_constraints(tags, "bioes")
    ok = {(a, b) for a in range(5) for b in range(5) if allowed[a, b]}
    assert ok == {(0, 0), (0, 1), (0, 4), (1, 2), (1, 3), (2, 2), (2, 3),
                  (3, 0), (3, 1), (3, 4), (4, 0), (4, 1), (4, 4)}
    assert start.tolist() == [True, True, False, False, True]
    assert end.tolist() == [True, False, False, True, True]


def test_bad_lengths_named():
    crf = CRF(2)
    with pytest.raises(ValueError, match="lengths"):
        crf.log_partition(torch.zeros(2, 3, 2), torch.tensor([0, 3]))


@pytest.mark.parametrize("scheme", ["iob1", "bio", "bioes"])
def test_constraints_allow_every_well_formed_sequence(scheme):
    import random

    from rnnkit.data.schemes import spans_to_tags

    names = ["O"] + [f"{p}-{t}" for t in "AB" for p in "BIES"]
    index = {n: i for i, n in enumerate(names)}
    allowed, start, end = scheme_constraints(names, scheme)
    rng = random.Random(1)
    for _ in range(200):
        n = rng.randint(1, 8)
        spans, i = [], 0
        while i < n:
            if rng.random() < 0.6:
                e = rng.randint(i + 1, n)
                spans.append((i, e, rng.choice("AB")))
                i = e
            else:
                i += 1
        ids = [index[t] for t in spans_to_tags(spans, n, scheme)]
        assert start[ids[0]] and end[ids[-1]]
        assert all(allowed[a, b] for a, b in itertools.pairwise(ids))
