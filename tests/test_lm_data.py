"""Text files as ids, and language-model batching into streams and truncated-BPTT windows."""

import itertools

import pytest
import torch

from rnnkit.data.lm import IGNORE, LMStreams
from rnnkit.data.text import build_vocab, decode, encode, read_text
from rnnkit.data.vocab import EOS, UNK
from rnnkit.errors import DataError


def test_read_text_errors_name_file_and_line(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="is a directory"):
        read_text(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.txt: is empty"):
        read_text(empty)
    empty.write_bytes(b" \n\n")
    with pytest.raises(DataError, match="only whitespace"):
        read_text(empty)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("first line\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        read_text(latin)
    assert err.value.line == 2
    assert "latin1.txt:2:" in str(err.value) and "byte offset 14" in str(err.value)
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffhello".encode())
    assert read_text(bom) == "hello"


def test_char_level_round_trip_and_unknown_characters():
    text = "hello world\nhi\n"
    v = build_vocab(text, "char")
    assert v.itos[:2] == [UNK, EOS] and v.meta == {"level": "char"}
    assert v.itos[2] == "l"  # the most frequent character
    ids = encode(text, v, "char")
    assert ids.dtype == torch.long and ids.shape == (len(text),)
    assert decode(ids, v, "char") == text
    assert encode("hz", v, "char").tolist() == [v.stoi["h"], v.unk_id]
    with pytest.raises(DataError, match=r"'z' \(U\+007A\) at position 1"):
        encode("hz", v, "char", strict=True)


def test_word_level_adds_eos_per_line_and_maps_unknowns():
    text = "the cat sat\nthe dog\n"
    v = build_vocab(text, "word")
    ids = encode(text, v, "word")
    assert v.decode(ids) == ["the", "cat", "sat", EOS, "the", "dog", EOS]
    assert decode(ids, v, "word") == "the cat sat\nthe dog\n"
    assert v.decode(encode("the bird\n", v, "word")) == ["the", UNK, EOS]
    with pytest.raises(DataError, match=r"f\.txt:2: word 'bird'"):
        encode("the\nthe bird\n", v, "word", strict=True, source="f.txt")
    small = build_vocab("a a a b b c\n", "word", max_size=4)
    assert small.itos == [UNK, EOS, "a", "b"]


@pytest.mark.parametrize("n, batch, bptt", [(103, 4, 7), (100, 5, 10), (9, 4, 3), (5, 8, 2)])
def test_every_token_is_a_target_exactly_once_in_stream_order(n, batch, bptt):
    ids = torch.arange(1000, 1000 + n)
    streams = LMStreams.from_ids(ids, batch, start_id=7)
    windows = list(streams.windows(bptt))
    targets = torch.cat([w.targets for w in windows], dim=1)  # (B, L)
    inputs = torch.cat([w.inputs for w in windows], dim=1)
    real = targets[targets != IGNORE]
    # row-major order of the streams is the corpus order: each token once, in order
    assert real.tolist() == ids.tolist()
    assert sum(w.tokens for w in windows) == n == streams.num_tokens
    # inputs are the targets shifted by one, the corpus starting after start_id
    flat_in, flat_t = inputs.reshape(-1), targets.reshape(-1)
    assert flat_in[0] == 7
    assert torch.equal(flat_in[1:n], flat_t[:n - 1])
    # within each window, input t+1 is target t of the same stream
    for w in windows:
        real_next = w.targets[:, 1:] != IGNORE
        assert torch.equal(w.inputs[:, 1:][real_next], w.targets[:, :-1][real_next])
    # consecutive windows continue each stream
    for a, b in itertools.pairwise(windows):
        ok = a.targets[:, -1] != IGNORE
        assert torch.equal(b.inputs[ok, 0], a.targets[ok, -1])


def test_variable_windows_cover_the_streams_and_are_seeded():
    streams = LMStreams.from_ids(torch.arange(5000), 4)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = streams.window_lengths(20, variable=True, generator=g1)
    b = streams.window_lengths(20, variable=True, generator=g2)
    assert a == b and sum(a) == streams.length
    assert len(set(a)) > 3 and min(a[:-1]) >= 5
    mean = sum(a[:-1]) / len(a[:-1])
    assert 15 < mean < 21  # bptt 20, sometimes 10
    windows = list(streams.windows(20, variable=True, generator=torch.Generator().manual_seed(3)))
    assert [w.inputs.shape[1] for w in windows] == a


def test_batching_rejects_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        LMStreams.from_ids(torch.zeros(0, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="batch_size"):
        LMStreams.from_ids(torch.arange(5), 0)
    with pytest.raises(ValueError, match="bptt"):
        LMStreams.from_ids(torch.arange(5), 2).window_lengths(0)
