"""Vocabulary: specials first, limits, encode/decode, JSON round trip and clear errors."""

import json
from collections import Counter

import pytest
import torch

from rnnkit.data.vocab import EOS, PAD, UNK, Vocabulary
from rnnkit.errors import DataError


def counts() -> Counter:
    return Counter({"the": 5, "cat": 3, "sat": 3, "on": 1, "mat": 2})


def test_build_orders_specials_then_by_count_then_first_appearance():
    v = Vocabulary.build(counts())
    assert v.itos == [UNK, EOS, "the", "cat", "sat", "mat", "on"]
    assert (v.unk_id, v.eos_id, v.pad_id, v.bos_id) == (0, 1, None, None)


def test_size_and_frequency_limits_keep_specials():
    assert Vocabulary.build(counts(), max_size=4).itos == [UNK, EOS, "the", "cat"]
    assert Vocabulary.build(counts(), min_freq=3).itos == [UNK, EOS, "the", "cat", "sat"]
    v = Vocabulary.build(counts(), specials=(PAD, UNK, EOS))
    assert (v.pad_id, v.unk_id, v.eos_id) == (0, 1, 2)
    with pytest.raises(ValueError, match="max_size"):
        Vocabulary.build(counts(), max_size=1)
    with pytest.raises(ValueError, match="min_freq"):
        Vocabulary.build(counts(), min_freq=0)


def test_encode_decode_and_unknown_tokens():
    v = Vocabulary.build(counts())
    ids = v.encode(["the", "dog", "sat"])
    assert ids.dtype == torch.long
    assert ids.tolist() == [2, v.unk_id, 4]
    assert v.decode(ids) == ["the", UNK, "sat"]
    with pytest.raises(DataError, match="'dog' at position 1"):
        v.encode(["the", "dog"], strict=True)
    with pytest.raises(DataError, match="outside the vocabulary"):
        v.decode([99])
    tags = Vocabulary.build(["NOUN", "VERB", "NOUN"], specials=())
    assert tags.itos == ["NOUN", "VERB"]
    with pytest.raises(DataError, match="ADJ"):
        tags.encode(["ADJ"])


def test_save_load_round_trip(tmp_path):
    v = Vocabulary.build(counts(), meta={"level": "word"})
    v.save(tmp_path / "vocab.json")
    w = Vocabulary.load(tmp_path / "vocab.json")
    assert w == v and w.meta == {"level": "word"} and w.eos_id == 1
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temporary file


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        Vocabulary.load(tmp_path / "missing.json")
    with pytest.raises(DataError, match="is a directory"):
        Vocabulary.load(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.json.*not a valid JSON"):
        Vocabulary.load(bad)
    bad.write_text(json.dumps({"tokens": ["a"]}), encoding="utf-8")
    with pytest.raises(DataError, match="not an rnnkit vocabulary"):
        Vocabulary.load(bad)
    data = Vocabulary.build(counts()).to_dict()
    data["tokens"] = ["a", "a"]
    bad.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError, match="appears twice"):
        Vocabulary.load(bad)
