"""Entity spans, scheme conversion and span F1 on hand-made cases with known answers."""

import pytest

from rnnkit.data.schemes import convert_tags, detect_scheme, spans
from rnnkit.metrics import classification_scores, span_f1, token_accuracy


def test_spans_bio_iob1_bioes_give_the_same_entities():
    bio = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "O", "B-ORG"]
    iob1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "O", "I-ORG"]
    bioes = ["B-PER", "E-PER", "O", "S-LOC", "B-LOC", "E-LOC", "O", "S-ORG"]
    want = [(0, 2, "PER"), (3, 4, "LOC"), (4, 6, "LOC"), (7, 8, "ORG")]
    assert spans(bio) == spans(iob1) == spans(bioes) == want
    assert convert_tags(bio, "iob1") == iob1
    assert convert_tags(iob1, "bioes") == bioes
    assert convert_tags(bioes, "bio") == bio
    assert detect_scheme([bio]) == "bio"
    assert detect_scheme([iob1]) == "iob1"
    assert detect_scheme([bioes]) == "bioes"
    assert detect_scheme([["NOUN", "VERB"]]) == "none"


def test_conlleval_reading_of_ill_formed_tags():
    # I- after O starts a span; a type change ends one; a span open at the end is kept
    assert spans(["O", "I-PER", "I-LOC", "O", "B-MISC", "I-MISC"]) == [
        (1, 2, "PER"), (2, 3, "LOC"), (4, 6, "MISC")]
    assert spans(["B-PER", "I-PER", "I-PER"]) == [(0, 3, "PER")]   # cut off at sentence end
    assert spans(["E-PER", "E-PER"]) == [(0, 1, "PER"), (1, 2, "PER")]


def test_span_f1_known_answer_bio():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "I-ORG"]]
    guess = [["B-PER", "I-PER", "O", "B-PER"], ["O", "B-ORG", "I-ORG", "O"]]
    s = span_f1(gold, guess)
    # gold: PER(0,2) LOC(3,4) | ORG(1,4); guess: PER(0,2) PER(3,4) | ORG(1,3): 1 right of 3 / 3
    assert (s.correct, s.guessed, s.gold) == (1, 3, 3)
    assert s.precision == pytest.approx(1 / 3) and s.recall == pytest.approx(1 / 3)
    assert s.f1 == pytest.approx(1 / 3)
    assert s.per_type["PER"]["precision"] == pytest.approx(0.5)
    assert s.per_type["PER"]["recall"] == pytest.approx(1.0)
    assert s.per_type["PER"]["f1"] == pytest.approx(2 / 3)
    assert s.per_type["LOC"]["f1"] == 0.0 and s.per_type["ORG"]["f1"] == 0.0


def test_span_f1_iob1_and_bioes_inputs():
    gold_iob1 = [["I-PER", "I-PER", "B-PER", "O", "I-LOC"]]   # PER(0,2) PER(2,3) LOC(4,5)
    guess_iob1 = [["I-PER", "I-PER", "I-PER", "O", "I-LOC"]]  # PER(0,3) LOC(4,5)
    s = span_f1(gold_iob1, guess_iob1)
    assert (s.correct, s.guessed, s.gold) == (1, 2, 3)
    assert s.f1 == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    gold_bioes = [["S-PER", "O", "B-LOC", "I-LOC", "E-LOC"]]
    guess_bioes = [["S-PER", "O", "B-LOC", "E-LOC", "S-LOC"]]
    s = span_f1(gold_bioes, guess_bioes)
    assert (s.correct, s.guessed, s.gold) == (1, 3, 2)
    assert s.precision == pytest.approx(1 / 3) and s.recall == pytest.approx(0.5)


def test_span_cut_off_at_sentence_end():
    # the gold entity runs to the last token; a guess stopping one short is wrong
    gold = [["O", "B-PER", "I-PER"], ["B-LOC"]]
    right = [["O", "B-PER", "I-PER"], ["B-LOC"]]
    short = [["O", "B-PER", "O"], ["O"]]
    assert span_f1(gold, right).f1 == 1.0
    s = span_f1(gold, short)
    assert (s.correct, s.guessed, s.gold) == (0, 1, 2) and s.f1 == 0.0
    # sentences are scored separately: an entity at one sentence's end does not run on
    assert span_f1([["B-PER"], ["I-PER"]], [["B-PER"], ["B-PER"]]).f1 == 1.0


def test_no_entities_gives_zero_not_error():
    s = span_f1([["O", "O"]], [["O", "O"]])
    assert (s.precision, s.recall, s.f1) == (0.0, 0.0, 0.0)


def test_token_accuracy_and_classification():
    assert token_accuracy([["A", "B"], ["C"]], [["A", "X"], ["C"]]) == pytest.approx(2 / 3)
    c = classification_scores(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    assert c.accuracy == 0.75
    # a: P 1, R .5, F 2/3; b: P 2/3, R 1, F .8
    assert c.macro_f1 == pytest.approx((2 / 3 + 0.8) / 2)
    with pytest.raises(ValueError, match="gold has 2"):
        token_accuracy([["A"], ["B"]], [["A"]])


def test_random_spans_survive_every_scheme():
    import random

    from rnnkit.data.schemes import spans_to_tags

    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 12)
        spans_, i = [], 0
        while i < n:
            if rng.random() < 0.5:
                end = rng.randint(i + 1, n)
                spans_.append((i, end, rng.choice(["A", "B"])))
                i = end
            else:
                i += 1
        for scheme in ("iob1", "bio", "bioes"):
            tags = spans_to_tags(spans_, n, scheme)
            assert spans(tags) == spans_
            assert detect_scheme([tags]) in (scheme, "bio" if scheme == "iob1" else scheme,
                                             "none" if not spans_ else scheme)
