"""Tiny taggers and classifiers learn synthetic tasks to near 100% accuracy."""

import random

import pytest
import torch

from rnnkit.data.padding import length_batches, pad_ids, word_characters
from rnnkit.metrics import span_f1, token_accuracy
from rnnkit.models import Classifier, Encoder, EncoderConfig, Tagger, TaggerBatch, TaggerConfig

LETTERS = "abcdefgh"


def random_word(rng):
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 5)))


def entity_sentences(rng, n):
    """Capitalised runs are entities (BIO); a word ending in 'a' is a NOUN, else OTHER."""
    out = []
    for _ in range(n):
        words, tags = [], []
        while len(words) < rng.randint(3, 9):
            if rng.random() < 0.3:
                k = rng.randint(1, 3)
                for j in range(k):
                    words.append(random_word(rng).capitalize())
                    tags.append("B-E" if j == 0 else "I-E")
                words.append(random_word(rng))  # entities never touch: the task is unambiguous
                tags.append("O")
            else:
                words.append(random_word(rng))
                tags.append("O")
        out.append((words, tags))
    return out


def make_batch(sents, words, chars, tags):
    ids, lengths = pad_ids([[words.get(w, 1) for w in s] for s, _ in sents])
    c, cl, index = word_characters([s for s, _ in sents], chars, unk=1)
    t, _ = pad_ids([[tags[x] for x in ts] for _, ts in sents])
    return TaggerBatch(ids, lengths, c, cl, index, t)


@pytest.mark.parametrize("crf,char_encoder", [(False, "lstm"), (True, "cnn")])
def test_tiny_tagger_learns_entities_of_unseen_words(crf, char_encoder):
    torch.manual_seed(0)
    rng = random.Random(0)
    train, test = entity_sentences(rng, 300), entity_sentences(rng, 60)
    tag_names = ["O", "B-E", "I-E"]
    tags = {t: i for i, t in enumerate(tag_names)}
    chars = {c: i + 2 for i, c in enumerate(sorted(set(LETTERS + LETTERS.upper())))}
    words = {"<pad>": 0, "<unk>": 1}  # no word vocabulary: the characters must do it
    config = TaggerConfig(num_words=2, num_tags=3, num_chars=len(chars) + 2, word_dim=4,
                          char_dim=8, char_hidden=8, char_encoder=char_encoder, hidden_size=16,
                          dropout=0.0, word_dropout=0.0, crf=crf, scheme="bio", tags=tag_names,
                          unk_id=1)
    model = Tagger(config)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        for idx in length_batches([len(s) for s, _ in train], 16, gen):
            loss = model.loss(make_batch([train[i] for i in idx], words, chars, tags))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    guess = model.decode(make_batch(test, words, chars, tags))
    gold = [[tags[t] for t in ts] for _, ts in test]
    assert token_accuracy(gold, guess) > 0.97
    named = [[tag_names[i] for i in g] for g in guess]
    assert span_f1([ts for _, ts in test], named).f1 > 0.95


def sentiment_sentences(rng, n):
    """Label 1 when 'good' occurs more often than 'bad'; filler words around."""
    out = []
    for _ in range(n):
        good, bad = rng.randint(0, 3), rng.randint(0, 3)
        while good == bad:
            good, bad = rng.randint(0, 3), rng.randint(0, 3)
        words = ["good"] * good + ["bad"] * bad + [rng.choice("pqrstuvw") for _ in range(5)]
        rng.shuffle(words)
        out.append((words, int(good > bad)))
    return out


@pytest.mark.parametrize("pooling", ["last", "mean", "max", "attention"])
def test_tiny_classifier_learns_counting(pooling):
    torch.manual_seed(0)
    rng = random.Random(1)
    train, test = sentiment_sentences(rng, 400), sentiment_sentences(rng, 100)
    vocab = {w: i + 1 for i, w in enumerate(["good", "bad", *"pqrstuvw"])}
    config = EncoderConfig(num_words=len(vocab) + 1, num_labels=2, embed_dim=8,
                           hidden_size=16, pooling=pooling, dropout=0.0)
    model = Classifier(config)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    gen = torch.Generator().manual_seed(0)

    def batch(items):
        ids, lengths = pad_ids([[vocab[w] for w in s] for s, _ in items])
        return ids, lengths, torch.tensor([y for _, y in items])

    for _ in range(8):
        for idx in length_batches([len(s) for s, _ in train], 20, gen):
            loss = model.loss(*batch([train[i] for i in idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    ids, lengths, labels = batch(test)
    acc = (model.predict(ids, lengths) == labels).float().mean().item()
    assert acc >= 0.97


def test_encoder_ignores_padding():
    torch.manual_seed(0)
    for pooling in ["last", "mean", "max", "attention"]:
        enc = Encoder(EncoderConfig(num_words=10, embed_dim=4, hidden_size=5, pooling=pooling,
                                    dropout=0.0)).eval()
        words = torch.tensor([[3, 4, 5, 0, 0], [3, 4, 5, 6, 7]])
        noisy = words.clone()
        noisy[0, 3:] = torch.tensor([8, 9])
        lengths = torch.tensor([3, 5])
        a, b = enc(words, lengths), enc(noisy, lengths)
        assert a.shape == (2, enc.output_size) and enc.output_size == 10
        assert torch.allclose(a, b)
        alone = enc(words[:1, :3], lengths[:1])
        assert torch.allclose(alone, a[:1], atol=1e-6)
