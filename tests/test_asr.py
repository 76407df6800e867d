"""Speech recognition: WER/CER against jiwer, log-mel features against an independent numpy
implementation, manifests and their errors, the CTC decoders (brute force, greedy, LM fusion,
incremental), the connected-digit recipe, and the whole task on a tiny synthetic corpus:
train, evaluate, transcribe, stream, export."""

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnkit.cli import main
from rnnkit.data.audio import read_audio, read_manifest, write_wav
from rnnkit.data.digits import DIGITS
from rnnkit.data.features import FeatureConfig, LogMel, mel_filterbank
from rnnkit.errors import DataError
from rnnkit.generation.ctc import Lexicon, PrefixBeamSearch, beam_ids, greedy_ids
from rnnkit.metrics.wer import error_counts

jiwer = pytest.importorskip("jiwer")
sf = pytest.importorskip("soundfile")


# -- metrics ------------------------------------------------------------------------------------
def test_wer_and_cer_equal_jiwers():
    rng = np.random.default_rng(0)
    words = ["zero", "one", "two", "three", "four"]
    for _ in range(200):
        refs = [" ".join(rng.choice(words, rng.integers(1, 8))) for _ in range(3)]
        hyps = [" ".join(rng.choice(words, rng.integers(0, 8))) for _ in range(3)]
        o, e = jiwer.process_words(refs, hyps), error_counts(refs, hyps)
        assert (e.substitutions, e.deletions, e.insertions) == (o.substitutions, o.deletions,
                                                                o.insertions)
        assert e.rate == pytest.approx(o.wer, abs=1e-12)
        c, ec = jiwer.process_characters(refs, hyps), error_counts(refs, hyps, "char")
        assert (ec.substitutions, ec.deletions, ec.insertions) == (c.substitutions, c.deletions,
                                                                   c.insertions)
        assert ec.rate == pytest.approx(c.cer, abs=1e-12)
    assert error_counts(["a b c"], ["a x c d"]).rate == pytest.approx(2 / 3)


# -- features -----------------------------------------------------------------------------------
def _numpy_logmel(x: np.ndarray, rate: int, n_mels: int) -> np.ndarray:
    """Log-mel energies written from the definitions with numpy only."""
    win, hop = int(0.025 * rate), int(0.010 * rate)
    n_fft = 1 << math.ceil(math.log2(win))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    frames = np.stack([x[i:i + win] * window for i in range(0, len(x) - win + 1, hop)])
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2  # (F, bins)
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    imel = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = imel(np.linspace(0, mel(rate / 2), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * rate / n_fft
    bank = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        for k, f in enumerate(freqs):
            if lo <= f <= mid:
                bank[m, k] = (f - lo) / (mid - lo)
            elif mid < f <= hi:
                bank[m, k] = (hi - f) / (hi - mid)
    return np.log(power @ bank.T + 1e-6)


def test_log_mel_equals_an_independent_implementation():
    rng = np.random.default_rng(1)
    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(4000) / 8000)
         + 0.05 * rng.standard_normal(4000)).astype(np.float32)
    ours = LogMel(FeatureConfig(rate=8000, n_mels=40))(torch.from_numpy(x)).numpy()
    ref = _numpy_logmel(x.astype(np.float64), 8000, 40)
    assert ours.shape == ref.shape == (1 + (4000 - 200) // 80, 40)
    assert np.abs(ours - ref).max() < 2e-3  # float32 FFT against float64: stated tolerance
    bank = mel_filterbank(40, 256, 8000)
    assert bank.shape == (40, 129) and bool((bank.sum(1) > 0).all())


# -- audio and manifests ------------------------------------------------------------------------
def test_audio_stereo_mixdown_and_resampling(tmp_path):
    t = np.arange(16000) / 16000
    tone = 0.5 * np.sin(2 * np.pi * 500 * t)
    sf.write(tmp_path / "st.wav", np.stack([tone, tone * 0.5], 1), 16000, subtype="PCM_16")
    samples, rate = read_audio(tmp_path / "st.wav", 8000)
    assert rate == 8000 and samples.shape == (8000,) and samples.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) * 8000 / len(samples) - 500) < 2  # the tone survives
    assert abs(samples.max() - 0.375) < 0.02  # the mean of both channels
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(DataError, match=r"cannot read .*text\.wav as audio"):
        read_audio(tmp_path / "text.wav")


def test_speed_perturbation_changes_tempo_and_pitch_together():
    from rnnkit.data.audio import change_speed

    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.float32)
    for factor, samples in ((1.1, 7273), (0.9, 8889)):
        out = change_speed(tone, factor)
        assert out.dtype == np.float32 and abs(len(out) - samples) <= 1  # len / factor
        peak = np.argmax(np.abs(np.fft.rfft(out[500:-500]))) * 8000 / (len(out) - 1000)
        assert abs(peak - 440 * factor) < 3  # the pitch moves with the tempo (sox speed)
    with pytest.raises(ValueError, match="positive"):
        change_speed(tone, 0.0)


def test_each_epoch_draws_one_speed_of_each_utterance():
    from rnnkit.models.asr import ASRConfig
    from rnnkit.tasks.asr import ASRTask

    frames = [torch.full((10 + i, 40), float(i)) for i in range(4)]
    perturbed = [[torch.full((9 + i, 40), float(i)), torch.full((12 + i, 40), float(i))]
                 for i in range(4)]
    targets = [[1 + i] for i in range(4)]
    task = ASRTask(frames, targets, None, ASRConfig(alphabet=list("abcd")), 2, False,
                   perturbed)
    g = torch.Generator().manual_seed(0)
    seen = {i: set() for i in range(4)}
    for epoch in range(12):
        for x, lengths, labels, label_lengths in task.train_batches(epoch, g):
            assert label_lengths.tolist() == [1] * len(lengths)
            for row, n, label in zip(x, lengths.tolist(), labels.tolist()):
                i = label - 1
                assert (row[:n] == i).all()  # the frames are the label's utterance
                seen[i].add(n - i)
    assert all(s == {9, 10, 12} for s in seen.values())  # every version drawn


def test_manifests_tsv_and_jsonl_and_their_errors(tmp_path, capsys):
    write_wav(tmp_path / "a.wav", np.zeros(800, dtype=np.float32), 8000)
    (tmp_path / "m.tsv").write_text("audio\ttext\na.wav\tone  two\na.wav\t\n")
    utts = read_manifest(tmp_path / "m.tsv")
    assert "skipped 1 line(s) with an empty transcript (first: line 3)" in capsys.readouterr().err
    assert [(Path(u.audio).name, u.text) for u in utts] == [("a.wav", "one two")]
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio_filepath": str(tmp_path / "a.wav"),
                                                  "text": "three", "duration": 0.1}) + "\n")
    (u,) = read_manifest(tmp_path / "m.jsonl")
    assert (u.text, u.duration) == ("three", 0.1)
    bad = {"missing.tsv": ("audio\ttext\nnope.wav\tone\n", r"missing.tsv:2: audio file not found"),
           "nohead.tsv": ("a.wav\tone\n", "header naming the columns"),
           "broken.jsonl": ('{"audio_filepath": "a.wav", "text": "x"}\n{oops\n',
                            r"broken.jsonl:2: not a JSON object"),
           "empty.tsv": ("", "the manifest is empty")}
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=message):
            read_manifest(tmp_path / name)
    (tmp_path / "latin1.tsv").write_bytes("audio\ttext\na.wav\tcaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_manifest(tmp_path / "latin1.tsv")


# -- decoding -----------------------------------------------------------------------------------
def _collapse(path, blank=0):
    out, prev = [], blank
    for s in path:
        if s != prev and s != blank:
            out.append(s)
        prev = s
    return tuple(out)


def _label_probabilities(lp):
    """Every label sequence's probability under (T, V) log-probabilities, by summing over
    all V^T paths."""
    T, V = lp.shape
    exact: dict = {}
    for path in itertools.product(range(V), repeat=T):
        p = math.exp(sum(float(lp[t, s]) for t, s in enumerate(path)))
        exact[_collapse(path)] = exact.get(_collapse(path), 0.0) + p
    return exact


def test_prefix_beam_search_equals_the_sum_over_all_alignments():
    torch.manual_seed(0)
    T, V = 5, 3
    for _ in range(3):
        lp = torch.log_softmax(torch.randn(T, V) * 1.5, -1).double()
        exact = _label_probabilities(lp)
        search = PrefixBeamSearch(beam=10_000, prune=-1e9)
        search.advance(lp)
        scored = dict(search.scored())
        assert set(scored) == set(exact)
        for labels, p in exact.items():
            assert scored[labels] == pytest.approx(math.log(p), abs=1e-9)
        assert tuple(search.best()) == max(exact, key=exact.get)


def test_beam_one_equals_greedy_on_peaked_posteriors():
    """A trained CTC model's posteriors are peaked (each step's best symbol well above the
    rest); on such steps the one-prefix search keeps the best path. (On flat posteriors the
    two differ: the search sums a prefix's alignments, greedy follows one.)"""
    g = torch.Generator().manual_seed(3)
    checked = 0
    while checked < 300:
        lp = torch.log_softmax(torch.randn(15, 5, generator=g) * 4, -1)
        if lp.exp().max(-1).values.min() < 0.75:
            continue
        checked += 1
        assert beam_ids(lp, beam=1, prune=-1e9) == greedy_ids(lp)


class _FakeLM:
    """A scorer that likes symbol 2 after symbol 1 (the CharLMScorer interface)."""

    def prepare(self, prefixes):
        pass

    def logp(self, prefix):
        good = prefix[-1:] == (1,)
        return torch.log(torch.tensor([0.1, 0.1, 0.7 if good else 0.1, 0.1 if good else 0.7]))

    def end_logp(self, prefix):
        return 0.0

    def forget(self, keep):
        pass


class _LexiconLM(_FakeLM):
    """Knows one word, 1 2 2: the transcript ends only after it."""

    def logp(self, prefix):
        want = {(): 1, (1,): 2, (1, 2): 2}.get(tuple(prefix), 3)
        return torch.log(torch.tensor([0.05, 0.05, 0.05, 0.05]).index_fill(0, torch.tensor(want),
                                                                            0.85))

    def end_logp(self, prefix):
        return math.log(0.9 if tuple(prefix) == (1, 2, 2) else 0.01)


def test_the_end_of_transcript_term_completes_a_word_cut_short():
    # "1 2" then a step a little more "2 again" than blank-less: the posteriors favour 1 2
    # (a repeated 2 needs a blank between, which is weak here); the LM's end term prefers 1 2 2
    probs = torch.tensor([[0.05, 0.85, 0.05, 0.05], [0.05, 0.05, 0.85, 0.05],
                          [0.3, 0.05, 0.6, 0.05], [0.4, 0.05, 0.5, 0.05]])
    lp = probs.log()
    assert beam_ids(lp, beam=8) == [1, 2]
    search = PrefixBeamSearch(beam=8, lm=_LexiconLM(), lm_weight=1.0)
    search.advance(lp)
    assert search.best() == [1, 2, 2]
    # the term is in the finished score: log p(alignments) + LM terms + log P(end | 1 2 2)
    exact_122 = dict(search.scored())[(1, 2, 2)]
    without = PrefixBeamSearch(beam=8, lm=_LexiconLM(), lm_weight=1.0)
    without._end = lambda prefix: 0.0
    without.advance(lp)
    assert without.best() == [1, 2]  # the LM's letters alone do not do it: its end term does
    assert exact_122 == pytest.approx(dict(without.scored())[(1, 2, 2)] + math.log(0.9))


def test_a_language_model_changes_the_output():
    # step 2 is slightly more "3" than "2": alone, the decoder writes 1 3; the LM prefers 1 2
    probs = torch.tensor([[0.05, 0.9, 0.025, 0.025], [0.9, 0.05, 0.025, 0.025],
                          [0.1, 0.0, 0.42, 0.48], [0.9, 0.0, 0.05, 0.05]])
    lp = probs.clamp_min(1e-9).log()
    assert beam_ids(lp, beam=4) == [1, 3]
    assert beam_ids(lp, beam=4, lm=_FakeLM(), lm_weight=1.0) == [1, 2]


def _in_lexicon(labels, words, space, complete):
    """Whether ``labels`` begins a space-separated sequence of ``words`` (with ``complete``:
    is one, or is empty), by splitting at the spaces (not by the Lexicon's trie)."""
    if not labels:
        return True
    *whole, last = (tuple(p) for p in _split(labels, space))
    if not all(p in words for p in whole):  # a leading or double space leaves an empty one
        return False
    return last in words if complete else any(w[:len(last)] == last for w in words)


def _split(labels, space):
    out, cur = [], []
    for s in labels:
        if s == space:
            out.append(cur)
            cur = []
        else:
            cur.append(s)
    return [*out, cur]


def test_a_lexicon_search_sums_the_alignments_of_the_words_only():
    """With a lexicon and a beam wide enough to keep everything, the search keeps exactly
    the label sequences that begin a sequence of the words, each scored by the sum over
    all its alignments; its best is the most probable whole sequence of words."""
    torch.manual_seed(1)
    T, V, space = 6, 4, 3
    words = {(1, 2), (2,), (1, 1)}
    lexicon = Lexicon(sorted(words), space)
    for _ in range(3):
        lp = torch.log_softmax(torch.randn(T, V) * 1.5, -1).double()
        exact = _label_probabilities(lp)
        search = PrefixBeamSearch(beam=10_000, prune=-1e9, lexicon=lexicon)
        search.advance(lp)
        scored = dict(search.scored())
        allowed = {k for k in exact if _in_lexicon(k, words, space, complete=False)}
        assert set(scored) == allowed and len(allowed) < len(exact)
        for labels in allowed:
            assert scored[labels] == pytest.approx(math.log(exact[labels]), abs=1e-9)
        whole = {k: v for k, v in exact.items() if _in_lexicon(k, words, space, complete=True)}
        assert tuple(search.best()) == max(whole, key=whole.get)


def test_a_lexicon_turns_a_misspelling_into_the_word():
    # the posteriors of test_the_end_of_transcript_term...: alone the search writes 1 2 (a
    # word cut short); knowing only the words 1 2 2 and 3, it writes 1 2 2
    probs = torch.tensor([[0.05, 0.85, 0.05, 0.05], [0.05, 0.05, 0.85, 0.05],
                          [0.3, 0.05, 0.6, 0.05], [0.4, 0.05, 0.5, 0.05]])
    lp = probs.log()
    assert beam_ids(lp, beam=8) == [1, 2]
    assert beam_ids(lp, beam=8, lexicon=Lexicon([(1, 2, 2), (3,)])) == [1, 2, 2]
    with pytest.raises(ValueError, match="at least one word"):
        Lexicon([])
    with pytest.raises(ValueError, match="no space"):
        Lexicon([(1, 3)], space=3)


def test_read_lexicon_names_the_line_of_a_word_the_model_cannot_write(tmp_path):
    from rnnkit.models.asr import ASRConfig
    from rnnkit.tasks import asr

    config = ASRConfig(alphabet=list(" ab"))
    (tmp_path / "ok.txt").write_text("ab ba\nab\n\nb\n")
    lexicon = asr.read_lexicon(tmp_path / "ok.txt", config)
    assert lexicon.words == {(2, 3), (3, 2), (3,)} and lexicon.space == 1
    (tmp_path / "bad.txt").write_text("ab\nba abc\n")
    with pytest.raises(DataError, match=r"bad.txt:2.*'abc'.*'c'"):
        asr.read_lexicon(tmp_path / "bad.txt", config)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match=r"empty\.txt.*whitespace"):
        asr.read_lexicon(tmp_path / "empty.txt", config)


def test_decoding_in_chunks_equals_decoding_at_once():
    torch.manual_seed(5)
    lp = torch.log_softmax(torch.randn(40, 6) * 3, -1)
    whole = PrefixBeamSearch(beam=5)
    whole.advance(lp)
    parts = PrefixBeamSearch(beam=5)
    for chunk in lp.split(7):
        parts.advance(chunk)
    assert parts.scored() == whole.scored()


# -- the recipe and the task, on a synthetic FSDD -----------------------------------------------
def _fake_fsdd(folder: Path) -> Path:
    """Two speakers, ten digits, indices 5 (dev) and 10, 11 (train): a tone per digit."""
    rec = folder / "recordings"
    rec.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for speaker in ("ann", "bob"):
        for d in range(10):
            for index in (5, 10, 11):
                t = np.arange(int(8000 * 0.25)) / 8000
                x = (0.3 * np.sin(2 * np.pi * (300 + 150 * d) * t)
                     + 0.01 * rng.standard_normal(len(t)))
                write_wav(rec / f"{d}_{speaker}_{index}.wav", x.astype(np.float32), 8000)
    return folder


def test_prepare_digits_is_deterministic_and_splits_by_index(tmp_path):
    fsdd = _fake_fsdd(tmp_path / "fsdd")
    for out in ("a", "b"):
        assert main(["prepare-digits", str(fsdd), "--out", str(tmp_path / out), "--seed", "3",
                     "--train-utterances", "5", "--dev-utterances", "3",
                     "--isolated-train"]) == 0
    a, b = (tmp_path / "a" / "train.tsv").read_text(), (tmp_path / "b" / "train.tsv").read_text()
    # 5 connected utterances, then each training recording alone (indices 10 and 11 of 2
    # speakers x 10 digits)
    assert a == b and len(a.splitlines()) == 1 + 5 + 40
    alone = [line.split("\t") for line in a.splitlines()[6:]]
    names = sorted(Path(path).name for path, _ in alone)
    assert names == sorted(f"{d}_{s}_{i}.wav" for d in range(10) for s in ("ann", "bob")
                           for i in (10, 11))
    assert all(path.startswith("train-isolated/") and text == DIGITS[int(Path(path).name[0])]
               for path, text in alone)
    # without them (the default) the connected utterances, the dev sets and their audio are
    # the same
    assert main(["prepare-digits", str(fsdd), "--out", str(tmp_path / "c"), "--seed", "3",
                 "--train-utterances", "5", "--dev-utterances", "3"]) == 0
    c = tmp_path / "c"
    assert (c / "train.tsv").read_text().splitlines() == a.splitlines()[:6]
    assert not (c / "train-isolated").exists()
    for name in ("dev.tsv", "dev-isolated.tsv", "dev-isolated/3_bob_5.wav"):
        assert (c / name).read_bytes() == (tmp_path / "a" / name).read_bytes()
    wav = sorted((tmp_path / "a" / "train").iterdir())[0]
    assert wav.read_bytes() == (tmp_path / "b" / "train" / wav.name).read_bytes()
    isolated = (tmp_path / "a" / "dev-isolated.tsv").read_text().splitlines()[1:]
    assert len(isolated) == 20 and all("_5.wav" in line for line in isolated)
    assert isolated == (tmp_path / "b" / "dev-isolated.tsv").read_text().splitlines()[1:]
    for line in a.splitlines()[1:]:
        words = line.split("\t")[1].split()
        assert 1 <= len(words) <= 7
    # the transcripts alone, for a character LM: the manifest's, in its order
    for name in ("train", "dev"):
        rows = (tmp_path / "a" / f"{name}.tsv").read_text().splitlines()[1:]
        text = (tmp_path / "a" / f"{name}.txt").read_text()
        assert text == "".join(r.split("\t")[1] + "\n" for r in rows)


@pytest.fixture(scope="module")
def digit_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("asr")
    fsdd = _fake_fsdd(root / "fsdd")
    assert main(["prepare-digits", str(fsdd), "--out", str(root / "sets"),
                 "--train-utterances", "24", "--dev-utterances", "6", "--max-digits", "3"]) == 0
    return root / "sets"


def _train(sets: Path, out: Path, *extra: str) -> None:
    assert main(["train", "asr", "--train", str(sets / "train.tsv"), "--dev",
                 str(sets / "dev.tsv"), "--hidden-size", "16", "--num-layers", "1",
                 "--max-steps", "6", "--batch-size", "8", "--out", str(out), "--no-progress",
                 *extra]) == 0


def test_train_evaluate_transcribe_export(digit_sets, tmp_path, capsys):
    run = tmp_path / "run"
    _train(digit_sets, run)
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "asr" and config["model"]["features"]["rate"] == 8000
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(digit_sets / "dev.tsv"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    for key in ("wer", "cer", "substitutions", "deletions", "insertions", "utterances",
                "audio_seconds", "real_time_factor"):
        assert key in r
    assert r["utterances"] == 6 and r["audio_seconds"] > 0
    refs = [line.split("\t")[1] for line in (digit_sets / "dev.tsv").read_text().splitlines()[1:]]
    out = tmp_path / "hyp.tsv"
    assert main(["transcribe", str(run), "--manifest", str(digit_sets / "dev.tsv"),
                 "--output", str(out)]) == 0
    hyps = [line.split("\t")[1] for line in out.read_text().splitlines()]
    assert len(hyps) == 6
    assert error_counts(refs, hyps).rate == pytest.approx(r["wer"])
    onnx_path = tmp_path / "am.onnx"
    pytest.importorskip("onnxruntime")
    assert main(["export", str(run), "--onnx", str(onnx_path)]) == 0
    assert onnx_path.stat().st_size > 0


def test_streaming_ends_with_the_whole_file_transcript(digit_sets, tmp_path, capsys):
    from rnnkit.tasks import asr

    run = tmp_path / "uni"
    _train(digit_sets, run, "--unidirectional")
    model, config = asr.load(run)
    assert config["model"]["delay"] == asr.STREAMING_DELAY  # a streaming model's default
    wav = sorted((digit_sets / "dev").iterdir())[0]
    for decoder in (None, asr.make_decoder(model, beam=4)):
        whole = asr.whole_file(model, str(wav), decoder)
        steps = list(asr.stream(model, str(wav), 100.0, decoder))
        assert len(steps) >= 5 and steps[-1][0] == whole
    capsys.readouterr()
    assert main(["transcribe", str(run), "--input", str(wav), "--stream"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.split("\t", 1)[1] == asr.whole_file(model, str(wav))
    bi = tmp_path / "bi"
    _train(digit_sets, bi)
    assert main(["transcribe", str(bi), "--input", str(wav), "--stream"]) == 2
    assert "unidirectional" in capsys.readouterr().err


def test_output_delay_is_a_look_ahead_of_d_steps_and_never_sees_padding():
    from rnnkit.errors import RnnkitError
    from rnnkit.models.asr import AcousticModel, ASRConfig
    from rnnkit.tasks.asr import ASROptions

    torch.manual_seed(0)
    D, k = 3, 2
    model = AcousticModel(ASRConfig(alphabet=list(" ab"), subsample=k, hidden_size=8,
                                    num_layers=2, bidirectional=False, delay=D, dropout=0.0))
    model.double().eval()
    frames = torch.randn(2, 23, 40, dtype=torch.float64)
    lengths = torch.tensor([23, 15])  # 11 and 7 steps; frame 14 is a last partial group

    def lp(x, n):
        with torch.no_grad():
            out, steps, _ = model(x, torch.as_tensor(n))
        return out, steps

    both, steps = lp(frames, lengths)
    assert steps.tolist() == [11, 7] and both.shape[1] == 11
    alone, _ = lp(frames[1:, :14], [14])  # the second utterance alone, its partial group cut
    torch.testing.assert_close(both[1, :7], alone[0], rtol=0, atol=1e-12)
    moved = frames.clone()
    moved[1, 14:] += 5.0  # its partial group and the padding: never heard
    torch.testing.assert_close(lp(moved, lengths)[0][1, :7], both[1, :7], rtol=0, atol=1e-12)
    moved = frames.clone()
    step = 4
    moved[0, step * k:(step + 1) * k] += 1.0  # heard by outputs step - D = 1 and after
    changed = (lp(moved, lengths)[0][0] - both[0]).abs().amax(-1) > 1e-9
    assert changed.tolist() == [False] + [True] * 10  # output t hears steps up to t + D
    assert ASRConfig.from_dict({"alphabet": ["a"]}).delay == 0  # a run from before the flag
    with pytest.raises(ValueError, match="delay"):
        AcousticModel(ASRConfig(alphabet=["a"], delay=2))  # bidirectional
    with pytest.raises(RnnkitError, match="--unidirectional"):
        ASROptions(train="t.tsv", delay=2)
    with pytest.raises(RnnkitError, match="--delay must be an int >= 0"):
        ASROptions(train="t.tsv", unidirectional=True, delay=-1)


def test_training_with_speed_perturbation(digit_sets, tmp_path, capsys):
    run = tmp_path / "speeds"
    _train(digit_sets, run, "--speed-perturb", "0.9", "1.0", "1.1")
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["speed_perturb"] == [0.9, 1.0, 1.1]
    assert "speed perturbation: 0.9, 1.1 besides 1.0" in capsys.readouterr().err
    assert main(["train", "asr", "--train", str(digit_sets / "train.tsv"), "--out",
                 str(tmp_path / "bad"), "--speed-perturb", "1.0", "0"]) == 2
    assert "--speed-perturb takes factors in [0.5, 2], 1.0 (as recorded) among them, got [1.0, " \
        "0.0]" in capsys.readouterr().err
    assert main(["train", "asr", "--train", str(digit_sets / "train.tsv"), "--out",
                 str(tmp_path / "bad"), "--speed-perturb", "0.9", "1.1"]) == 2


class _Recorder:
    """A decoder that keeps the log-probabilities it is given."""

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []

    def advance(self, lp: torch.Tensor) -> None:
        self.parts.append(lp)

    def best(self) -> list[int]:
        return []


@pytest.mark.parametrize("cell", [(), ("--cell", "qrnn", "--num-layers", "2", "--window", "2,1")],
                         ids=["lstm", "qrnn-2,1"])
def test_a_delayed_streaming_model_streams_its_whole_file_log_probs(digit_sets, tmp_path, cell):
    """Chunk by chunk, a streaming model gives the whole file's log-probabilities: the state
    carried across chunks holds everything (for a window-2 QRNN, its last input too)."""
    from rnnkit.tasks import asr

    run = tmp_path / "delayed"
    _train(digit_sets, run, "--unidirectional", "--delay", "4", *cell)
    model, config = asr.load(run)
    assert config["model"]["delay"] == 4 and not config["model"]["bidirectional"]
    wav = str(sorted((digit_sets / "dev").iterdir())[0])
    whole = asr.log_probs_of(model, [asr.Featurizer(model.config)(wav)[0]])[0]
    for chunk_ms in (100.0, 35.0):
        recorder = _Recorder()
        list(asr.stream(model, wav, chunk_ms, lambda r=recorder: r))
        torch.testing.assert_close(torch.cat(recorder.parts), whole, rtol=0, atol=1e-5)
    assert list(asr.stream(model, wav, 100.0))[-1][0] == asr.whole_file(model, wav)


def test_shallow_fusion_with_an_rnnkit_char_lm(digit_sets, tmp_path, capsys):
    text = tmp_path / "digits.txt"
    manifest = (digit_sets / "train.tsv").read_text().splitlines()[1:]
    lines = [line.split("\t")[1] for line in manifest]
    text.write_text("\n".join(lines * 20) + "\n")
    lm = tmp_path / "lm"
    assert main(["train", "lm", "--train", str(text), "--level", "char", "--num-layers", "1",
                 "--hidden-size", "16", "--max-steps", "5", "--batch-size", "4", "--bptt", "16",
                 "--out", str(lm), "--no-progress", "--sample-length", "0"]) == 0
    run = tmp_path / "run"
    _train(digit_sets, run)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(digit_sets / "dev.tsv"), "--json", "--lm",
                 str(lm), "--lm-weight", "0.3", "--word-bonus", "0.5"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["wer"] < 10
    word_lm = tmp_path / "wlm"
    assert main(["train", "lm", "--train", str(text), "--level", "word", "--num-layers", "1",
                 "--hidden-size", "8", "--max-steps", "2", "--batch-size", "2", "--bptt", "4",
                 "--out", str(word_lm), "--no-progress", "--sample-length", "0"]) == 0
    assert main(["evaluate", str(run), "--data", str(digit_sets / "dev.tsv"), "--lm",
                 str(word_lm)]) == 2
    assert "character-level language model is needed" in capsys.readouterr().err


def test_bad_speech_input_is_one_line(digit_sets, tmp_path, capsys):
    run = tmp_path / "run"
    _train(digit_sets, run)
    wav = sorted((digit_sets / "dev").iterdir())[0]
    (tmp_path / "greek.tsv").write_text(f"audio\ttext\n{wav}\tένα\n")
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(tmp_path / "greek.tsv")]) == 2
    err = capsys.readouterr().err
    assert "greek.tsv:2" in err and "characters the model does not know" in err
    # an utterance far too short for its transcript is skipped and counted in training
    short = tmp_path / "short.wav"
    write_wav(short, np.zeros(400, dtype=np.float32), 8000)
    train = tmp_path / "train.tsv"
    train.write_text((digit_sets / "train.tsv").read_text().replace(
        "train/", str(digit_sets / "train") + "/") + f"{short}\tone two three four five\n")
    capsys.readouterr()
    assert main(["train", "asr", "--train", str(train), "--hidden-size", "8",
                 "--num-layers", "1", "--max-steps", "1", "--out", str(tmp_path / "r2"),
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 utterance(s) too short for their transcripts" in err
    assert "train.tsv:26" in err
    assert main(["transcribe", str(run), "--input", str(tmp_path / "none.wav")]) == 2
    assert "audio file not found" in capsys.readouterr().err


@pytest.mark.parametrize("cell", ["scan-gru", "gru"])
def test_the_acoustic_model_takes_any_cell(digit_sets, tmp_path, cell):
    run = tmp_path / cell
    _train(digit_sets, run, "--cell", cell)
    from rnnkit.tasks import asr

    model, config = asr.load(run)
    assert config["model"]["cell"] == cell
    assert len(asr.transcribe(model, [str(sorted((digit_sets / "dev").iterdir())[0])]).texts) == 1


def test_window_sets_the_qrnn_acoustic_models_convolution_per_layer(digit_sets, tmp_path,
                                                                     capsys):
    """`rnnkit train asr --cell qrnn --window 2,1` (the flag of `train lm`): recorded in the
    run, both directions of each layer built with it, refused for another cell and as a
    change on resume; a run without the option loads with the cell's default window."""
    from rnnkit.tasks import asr

    run = tmp_path / "qrnn"
    _train(digit_sets, run, "--cell", "qrnn", "--num-layers", "2", "--window", "2,1")
    model, config = asr.load(run)
    assert config["model"]["layer_cell_options"] == [{"window": 2}, {"window": 1}]
    assert [(layer.fwd.cell.window, layer.bwd.cell.window) for layer in model.rnn.layers] == [
        (2, 2), (1, 1)]
    capsys.readouterr()
    base = ["train", "asr", "--train", str(digit_sets / "train.tsv"), "--max-steps", "7",
            "--hidden-size", "16", "--num-layers", "2", "--batch-size", "8", "--no-progress"]
    assert main([*base, "--cell", "qrnn", "--window", "1", "--out", str(run), "--resume"]) == 2
    assert "--window" in capsys.readouterr().err
    assert main([*base, "--cell", "lstm", "--window", "1", "--out", str(tmp_path / "b")]) == 2
    assert "only the qrnn cell" in capsys.readouterr().err
    plain = tmp_path / "plain"
    _train(digit_sets, plain, "--cell", "qrnn")
    model, config = asr.load(plain)
    assert config["model"]["cell_options"] == {} and model.rnn.layers[0].fwd.cell.window == 2
    written = json.loads((plain / "config.json").read_text())  # as written before the option
    for key in ("cell_options", "layer_cell_options"):
        del written["model"][key]
    (plain / "config.json").write_text(json.dumps(written))
    model, _ = asr.load(plain)
    assert model.rnn.layers[0].fwd.cell.window == 2
