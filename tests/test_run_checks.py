"""Every verb checks its options before any work and says when its result would mean
nothing; every result goes to stdout, every note to stderr, ``--json`` is one line of strict
JSON; tensor files carry a checksum (issue 13, items 3, 9, 10, 11, 13, 14, 15)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnkit.cli import main
from rnnkit.commands.common import json_line
from rnnkit.data.text import Detokenizer
from rnnkit.data.vocab import Vocabulary
from rnnkit.errors import RnnkitError
from rnnkit.tasks.classification import ClassifierOptions
from rnnkit.tasks.conditional import TUNE_BATCH, ConditionalOptions, load_run, stream_tunes
from rnnkit.tasks.lm import LMOptions, evaluate_lm
from rnnkit.tasks.seq2seq import Seq2SeqOptions
from rnnkit.tasks.tagging import TaggerOptions
from rnnkit.training.checks import check_device
from rnnkit.training.progress import Progress

COMMON = ["--no-progress", "--threads", "1", "--seed", "0"]
WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat"]


def _one_line_error(capsys, argv: list[str], needle: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("rnnkit: error: ") and needle in last, err
    return last


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny trained runs of the LM, the tagger, the classifier and the conditional LM."""
    d = tmp_path_factory.mktemp("runs")
    rng = random.Random(0)
    text = d / "text.txt"
    text.write_text("".join(" ".join(rng.choice(WORDS) for _ in range(6)) + "\n"
                            for _ in range(80)), encoding="utf-8")
    tagged = d / "ner.conll"
    lines = []
    for _ in range(30):
        lines += [f"{rng.choice(WORDS)} {rng.choice(['O', 'B-PER', 'I-PER'])}"
                  for _ in range(rng.randint(2, 5))] + [""]
    tagged.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tsv = d / "cls.tsv"
    tsv.write_text("".join(f"{' '.join(rng.choice(WORDS) for _ in range(4))}\t"
                           f"{rng.choice(['pos', 'neg'])}\n" for _ in range(40)),
                   encoding="utf-8")
    abc = d / "abc"
    abc.mkdir()
    tune = "X: 1\nT:T\nR:jig\nM:6/8\nK:G\n|:GAB c2d|e2f g3:|\n"
    (abc / "jigs.abc").write_text((tune + "\n") * 6, encoding="utf-8")
    (abc / "reels.abc").write_text((tune.replace("jig", "reel") + "\n") * 6, encoding="utf-8")
    small = ["--hidden-size", "8", "--embedding-size", "8", "--num-layers", "1"]
    out = {k: d / k for k in ("lm", "tagger", "classifier", "conditional")}
    assert main(["train", "lm", "--train", str(text), "--out", str(out["lm"]), *COMMON,
                 *small, "--max-steps", "3", "--batch-size", "2", "--bptt", "8",
                 "--sample-length", "0"]) == 0
    assert main(["train", "tagger", "--train", str(tagged), "--out", str(out["tagger"]),
                 *COMMON, *small, "--char-dim", "4", "--char-hidden", "4",
                 "--max-steps", "2"]) == 0
    assert main(["train", "classifier", "--train", str(tsv), "--out", str(out["classifier"]),
                 *COMMON, *small, "--max-steps", "2"]) == 0
    assert main(["train", "conditional-lm", "--train", str(abc), "--out",
                 str(out["conditional"]), *COMMON, *small, "--max-steps", "2",
                 "--batch-size", "4"]) == 0
    return {**out, "text": text, "tagged": tagged, "tsv": tsv, "abc": abc, "dir": d}


# -- item 9: every model and data option is checked, naming its flag -------------------------
@pytest.mark.parametrize("cls,field,value,flag", [
    (TaggerOptions, "hidden_size", 0, "--hidden-size"),
    (TaggerOptions, "dropout", 2.0, "--dropout"),
    (TaggerOptions, "min_freq", 0, "--min-freq"),
    (TaggerOptions, "cell", "banana", "--cell"),
    (ClassifierOptions, "embedding_size", 0, "--embedding-size"),
    (Seq2SeqOptions, "label_smoothing", 1.5, "--label-smoothing"),
    (Seq2SeqOptions, "sampling_rate", 2.0, "--sampling-rate"),
    (Seq2SeqOptions, "vocab_size", 0, "--vocab-size"),
    (ConditionalOptions, "hidden_size", 0, "--hidden-size"),
    (LMOptions, "dev_fraction", 1.0, "--dev-fraction"),
    (LMOptions, "dropout", math.nan, "--dropout"),
    (LMOptions, "engine", "warp", "--engine"),
])
def test_options_objects_refuse_values_outside_their_range(cls, field, value, flag) -> None:
    required = {"train": "x"} if cls in (TaggerOptions, ClassifierOptions) else {}
    with pytest.raises(RnnkitError, match=f"^{flag} must be"):
        cls(**required, **{field: value})


def test_classifier_embedding_size_zero_names_the_flag(runs, tmp_path, capsys) -> None:
    _one_line_error(capsys, ["train", "classifier", "--train", str(runs["tsv"]), "--out",
                             str(tmp_path / "c"), "--embedding-size", "0", *COMMON],
                    "--embedding-size must be a positive int, got 0")
    assert not (tmp_path / "c").exists()


def test_seq2seq_vocab_size_below_the_characters_is_one_line(tmp_path, capsys) -> None:
    pytest.importorskip("sentencepiece")
    tsv = tmp_path / "p.tsv"
    tsv.write_text("".join(f"{w} {w}\t{w[::-1]}\n" for w in WORDS * 5), encoding="utf-8")
    _one_line_error(capsys, ["train", "seq2seq", "--tsv", str(tsv), "--vocab-size", "5",
                             "--out", str(tmp_path / "s"), *COMMON], "--vocab-size 5 is smaller")
    assert not (tmp_path / "s").exists()


# -- item 10: devices, output folders, decoding and export options -----------------------------
def test_check_device() -> None:
    assert check_device("cpu") == torch.device("cpu")
    assert check_device(None) == torch.device("cpu")
    with pytest.raises(RnnkitError, match="'banana' is not a device"):
        check_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(RnnkitError, match="no CUDA device"):
            check_device("cuda")


@pytest.mark.parametrize("device", ["banana", "cuda"])
@pytest.mark.parametrize("verb", ["train", "evaluate", "generate", "predict", "encode"])
def test_bad_device_is_one_line_for_every_verb(runs, device, verb, tmp_path, capsys) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv = {"train": ["train", "lm", "--train", str(runs["text"]), "--out",
                      str(tmp_path / "x"), "--max-steps", "1", *COMMON],
            "evaluate": ["evaluate", str(runs["lm"]), "--data", str(runs["text"])],
            "generate": ["generate", str(runs["lm"])],
            "predict": ["predict", str(runs["tagger"]), "--input", str(runs["tagged"])],
            "encode": ["encode", str(runs["classifier"]), "--input", str(runs["tsv"]),
                       "--output", str(tmp_path / "v.npy")]}[verb]
    _one_line_error(capsys, [*argv, "--device", device], "--device")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv,needle", [
    (["predict", "tagger", "--input", "tagged", "--output", "nowhere/out.txt"], "--output"),
    (["predict", "classifier", "--input", "tsv", "--output", "nowhere/out.txt"], "--output"),
    (["encode", "classifier", "--input", "tsv", "--output", "nowhere/x.npy"], "--output"),
    (["export", "lm", "--onnx", "nowhere/x.onnx"], "--onnx"),
    (["export", "lm", "--onnx", "DIR/x.onnx", "--opset", "99"], "--opset 99"),
    (["generate", "lm", "--max-new-tokens", "-1"], "--max-new-tokens"),
    (["generate", "lm", "--top-k", "0"], "--top-k"),
    (["generate", "conditional", "--condition", "jigs", "--num", "-1"], "--num"),
    (["generate", "conditional", "--condition", "jigs", "--max-len", "0"], "--max-len"),
    (["evaluate", "lm", "--data", "text", "--batch-size", "0"], "--batch-size"),
    (["evaluate", "lm", "--data", "text", "--threads", "0"], "--threads"),
    (["predict", "tagger", "--input", "tagged", "--batch-size", "0"], "--batch-size"),
])
def test_run_command_options_are_checked_first(runs, argv, needle, capsys) -> None:
    argv = [str(runs[a]) if a in runs else a.replace("DIR", str(runs["dir"])) for a in argv]
    _one_line_error(capsys, argv, needle)
    assert not list(runs["dir"].glob("*.onnx"))


def test_threads_is_taken_by_every_run_command(runs, tmp_path, capsys) -> None:
    for argv in (["evaluate", runs["lm"], "--data", runs["text"]],
                 ["generate", runs["lm"], "--max-new-tokens", "3"],
                 ["predict", runs["tagger"], "--input", runs["tagged"]],
                 ["predict", runs["classifier"], "--input", runs["tsv"]],
                 ["encode", runs["classifier"], "--input", runs["tsv"], "--output",
                  tmp_path / "v.npy"]):
        assert main([str(a) for a in argv] + ["--threads", "1"]) == 0, argv
    assert np.load(tmp_path / "v.npy").shape[0] == 40


# -- item 3: results that would mean nothing ----------------------------------------------------
def test_lm_evaluation_of_unknown_characters_warns_and_strict_refuses(runs, tmp_path,
                                                                      capsys) -> None:
    foreign = tmp_path / "greek.txt"
    foreign.write_text("αβγδε ζηθ ικλμν ξοπρσ\n" * 3, encoding="utf-8")
    capsys.readouterr()
    assert main(["evaluate", str(runs["lm"]), "--data", str(foreign), "--json"]) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)
    assert metrics["unknown_share"] > 0.5
    assert "not in the model's vocabulary" in captured.err
    assert "rnnkit: warning:" in captured.err
    _one_line_error(capsys, ["evaluate", str(runs["lm"]), "--data", str(foreign), "--strict"],
                    "--strict")
    # the text it was trained on: no warning, no unknown token
    assert main(["evaluate", str(runs["lm"]), "--data", str(runs["text"])]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err and "0.00% unknown" in captured.out


def test_tagger_on_a_file_of_other_labels_warns_and_strict_refuses(runs, tmp_path,
                                                                  capsys) -> None:
    pos = tmp_path / "pos.conll"
    pos.write_text("the DET\ncat NOUN\nsat VERB\n\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["evaluate", str(runs["tagger"]), "--data", str(pos), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["unknown_tags"] == 1.0
    assert "'DET'" in captured.err and "0 of its 3 labels are the model's" in captured.err
    _one_line_error(capsys, ["evaluate", str(runs["tagger"]), "--data", str(pos),
                             "--strict"], "gold labels")


def test_classifier_on_other_labels_warns(runs, tmp_path, capsys) -> None:
    other = tmp_path / "other.tsv"
    other.write_text("the cat\tsports\na dog\tpolitics\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["evaluate", str(runs["classifier"]), "--data", str(other)]) == 0
    assert "'sports'" in capsys.readouterr().err
    _one_line_error(capsys, ["evaluate", str(runs["classifier"]), "--data", str(other),
                             "--strict"], "gold labels")


def test_empty_evaluation_files_are_errors(runs, tmp_path, capsys) -> None:
    empty = tmp_path / "empty.conll"
    empty.write_text("", encoding="utf-8")
    _one_line_error(capsys, ["evaluate", str(runs["tagger"]), "--data", str(empty)],
                    "no sentence")
    _one_line_error(capsys, ["evaluate", str(runs["lm"]), "--data", str(empty)], "empty")
    _one_line_error(capsys, ["evaluate", str(runs["classifier"]), "--data", str(empty)],
                    "empty")


def test_the_same_text_and_label_column_is_an_error(runs, tmp_path, capsys) -> None:
    _one_line_error(capsys, ["train", "classifier", "--train", str(runs["tsv"]), "--out",
                             str(tmp_path / "c"), "--text-column", "1", "--label-column", "1",
                             *COMMON], "the same column")
    assert not (tmp_path / "c").exists()


def test_an_absent_abc_field_is_an_error(runs, tmp_path, capsys) -> None:
    _one_line_error(capsys, ["train", "conditional-lm", "--train", str(runs["abc"]),
                             "--condition-from", "field", "--field", "Q", "--out",
                             str(tmp_path / "q"), *COMMON], "--field Q")
    assert not (tmp_path / "q").exists()


def test_flipped_bytes_in_the_weights_are_a_one_line_error(runs, tmp_path, capsys) -> None:
    import shutil
    run = tmp_path / "lm"
    shutil.copytree(runs["lm"], run)
    weights = run / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-5] ^= 0x40  # inside the last tensor's data: the header still parses
    weights.write_bytes(bytes(raw))
    _one_line_error(capsys, ["evaluate", str(run), "--data", str(runs["text"])],
                    "do not match the SHA-256 checksum")
    # the checkpoint for --resume is checked as well
    raw = bytearray((run / "last" / "model.safetensors").read_bytes())
    raw[-5] ^= 0x40
    (run / "last" / "model.safetensors").write_bytes(bytes(raw))
    _one_line_error(capsys, ["train", "lm", "--out", str(run), "--resume", "--max-steps", "5",
                             *COMMON], "checksum")


def test_json_is_strict_and_non_finite_numbers_become_null(capsys) -> None:
    line = json_line({"loss": math.inf, "perplexity": math.nan, "tokens": 3,
                      "per_type": {"PER": {"f1": math.nan}}})
    assert json.loads(line) == {"loss": None, "perplexity": None, "tokens": 3,
                                "per_type": {"PER": {"f1": None}}}
    assert "\n" not in line
    err = capsys.readouterr().err
    assert "loss = inf" in err and "perplexity = nan" in err and "per_type.PER.f1" in err


def test_perplexity_is_infinite_not_capped() -> None:
    class Sure(torch.nn.Module):  # puts all probability on token 0; the text is token 1
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def loss(self, inputs, targets, state, reduction="sum"):
            return torch.tensor(1000.0) * (targets >= 0).sum(), state

    metrics = evaluate_lm(Sure(), torch.ones(20, dtype=torch.long), batch_size=2, bptt=4)
    assert metrics["loss"] == 1000.0 and metrics["perplexity"] == math.inf


# -- item 13: the same output conventions everywhere ---------------------------------------------
@pytest.mark.parametrize("run,data", [("lm", "text"), ("tagger", "tagged"),
                                      ("classifier", "tsv")])
def test_evaluate_json_is_one_line_on_stdout(runs, run, data, capsys) -> None:
    capsys.readouterr()
    assert main(["evaluate", str(runs[run]), "--data", str(runs[data]), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and isinstance(json.loads(out), dict)


def test_train_writes_notes_to_stderr_and_only_the_sample_to_stdout(runs, tmp_path,
                                                                     capsys) -> None:
    capsys.readouterr()
    assert main(["train", "lm", "--train", str(runs["text"]), "--out", str(tmp_path / "l"),
                 *COMMON, "--hidden-size", "8", "--num-layers", "1", "--max-steps", "2",
                 "--sample-length", "30", "--level", "word"]) == 0
    captured = capsys.readouterr()
    assert set(captured.out.split()) <= set(WORDS) | {"<unk>"}
    assert "stopped by max_steps" in captured.err and "sample:" in captured.err
    for task, run in (("tagger", "tagged"), ("classifier", "tsv")):
        assert main(["train", task, "--train", str(runs[run]), "--out", str(tmp_path / task),
                     *COMMON, "--hidden-size", "8", "--max-steps", "1"]) == 0
        captured = capsys.readouterr()
        assert captured.out == "" and "1 steps" in captured.err


# -- item 14: streams, and no special symbol written as its name ----------------------------------
def test_character_samples_never_contain_special_names() -> None:
    vocab = Vocabulary(["<unk>", "<eos>", "a", "b"], specials=("<unk>", "<eos>"))
    detok = Detokenizer(vocab, "char")
    assert "".join(detok.piece(i) for i in (2, 0, 3, 1, 2)) == "a\ufffdba"


def test_conditional_generate_streams_in_bounded_batches(runs) -> None:
    model, vocab = load_run(str(runs["conditional"]))
    calls = []
    original = model.generate

    def counting(labels, *args):
        calls.append(len(labels))
        return original(labels, *args)

    model.generate = counting
    tunes = stream_tunes(model, vocab, "jigs", num=TUNE_BATCH * 2 + 3, max_len=5)
    assert calls == []  # nothing drawn before the first tune is asked for
    first = next(tunes)
    assert isinstance(first, str) and calls == [TUNE_BATCH]
    assert len([first, *tunes]) == TUNE_BATCH * 2 + 3
    assert calls == [TUNE_BATCH, TUNE_BATCH, 3]


def test_a_whole_file_on_one_line_is_tagged_in_pieces(runs, tmp_path, capsys) -> None:
    from rnnkit.tasks import tagging
    line = tmp_path / "one.txt"
    n = tagging.MAX_SENTENCE * 2 + 7
    line.write_text(" ".join(random.Random(1).choice(WORDS) for _ in range(n)) + "\n",
                    encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", str(runs["tagger"]), "--input", str(line)]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.split()) == n
    assert "tagged in pieces of 1000 tokens" in captured.err


# -- item 15: a time-bounded run's progress bar has a total and the time left -------------------
def test_a_time_bounded_progress_bar_counts_seconds_of_the_budget() -> None:
    bar = Progress(None, 90.0, step=5, seconds=30.0)
    assert bar.timed and bar.bar.total == 90 and bar.bar.n == 30
    bar.update(7, 45.4)
    assert bar.bar.n == 45 and bar.step == 7
    bar.update(9, 500.0)
    assert bar.bar.n == 90
    bar.close()
    steps = Progress(100, None, step=5, seconds=0.0)
    steps.update(8, 1.0)
    assert not steps.timed and steps.bar.n == 8 and steps.bar.total == 100
    steps.close()


def test_a_nan_validation_stops_and_a_failed_start_leaves_nothing(runs, tmp_path, capsys,
                                                                  monkeypatch) -> None:
    from rnnkit.tasks import lm
    monkeypatch.setattr(lm, "evaluate_lm", lambda *a, **k: {"loss": math.nan,
                                                            "perplexity": math.nan})
    out = tmp_path / "nan"
    argv = ["train", "lm", "--train", str(runs["text"]), "--out", str(out), *COMMON,
            "--hidden-size", "4", "--num-layers", "1", "--batch-size", "1", "--bptt", "4",
            "--max-steps", "1"]
    _one_line_error(capsys, argv, "step 1: validation loss is nan; training stopped")
    assert not out.exists()
    _one_line_error(capsys, [*argv, "--lr", "inf"], "--lr must be a positive number")


def test_weights_that_give_no_probabilities_cannot_be_sampled(runs, tmp_path, capsys) -> None:
    out = tmp_path / "huge"  # one step at lr 1e30: finite loss, infinite logits
    assert main(["train", "lm", "--train", str(runs["text"]), "--out", str(out), *COMMON,
                 "--hidden-size", "4", "--num-layers", "1", "--batch-size", "1", "--bptt",
                 "4", "--lr", "1e30", "--max-steps", "1", "--clip", "0"]) == 0
    assert "rnnkit: warning: no sample: cannot sample" in capsys.readouterr().err
    _one_line_error(capsys, ["generate", str(out)], "probabilities are not finite")


def test_a_run_bounded_by_time_alone_says_its_steps_depend_on_the_machine(runs, tmp_path,
                                                                         capsys) -> None:
    out = tmp_path / "timed"
    capsys.readouterr()
    assert main(["train", "lm", "--train", str(runs["text"]), "--out", str(out), *COMMON,
                 "--hidden-size", "4", "--num-layers", "1", "--batch-size", "2", "--bptt",
                 "4", "--max-minutes", "0.01", "--epochs", "1000", "--sample-length",
                 "0"]) == 0
    err = capsys.readouterr().err
    assert "stopped by max_minutes (bounded by time alone: the step count depends on this " \
           "machine's speed)" in err
    trainer = json.loads((out / "last" / "trainer.json").read_text())
    assert trainer["seconds"] >= 0.6  # the time its schedule used, for an exact resume


def test_a_full_disk_is_one_line_and_the_last_checkpoint_is_kept(runs, tmp_path, capsys,
                                                                monkeypatch) -> None:
    import errno
    import os as os_module

    from rnnkit import files
    out = tmp_path / "full"
    argv = ["train", "lm", "--train", str(runs["text"]), "--out", str(out), *COMMON,
            "--hidden-size", "4", "--num-layers", "1", "--batch-size", "2", "--bptt", "4",
            "--max-steps", "6", "--eval-every", "3", "--sample-length", "0"]
    real_fsync, writes = os_module.fsync, [0]

    def fsync(fd: int) -> None:  # the disk fills up after 12 files
        writes[0] += 1
        if writes[0] > 12:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    line = _one_line_error(capsys, argv, "No space left on device")
    assert str(out) in line and "cannot write" in line
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    trainer = json.loads((out / "last" / "trainer.json").read_text())
    assert trainer["step"] == 3 and not list(out.rglob("*.tmp"))
    assert main([*argv, "--resume"]) == 0  # nothing was lost
    assert json.loads((out / "last" / "trainer.json").read_text())["step"] == 6


def test_training_on_an_empty_file_is_an_error_and_leaves_nothing(runs, tmp_path,
                                                                  capsys) -> None:
    empty = tmp_path / "empty.conll"
    empty.write_text("\n\n", encoding="utf-8")
    _one_line_error(capsys, ["train", "tagger", "--train", str(empty), "--out",
                             str(tmp_path / "t"), *COMMON], "holds no sentence to train on")
    assert not (tmp_path / "t").exists()


def test_a_task_that_gives_no_batch_stops_training(tmp_path) -> None:
    from rnnkit.errors import TrainingError
    from rnnkit.training.checkpoint import RunDir
    from rnnkit.training.loop import TrainConfig, Trainer, TrainingTask

    class Nothing(TrainingTask):
        def train_batches(self, epoch, generator):
            return iter(())

        def loss(self, model, batch, carry):  # never called
            raise AssertionError

    with pytest.raises(TrainingError, match="gives no batch"):
        Trainer(torch.nn.Linear(2, 2), Nothing(), RunDir(tmp_path / "r"),
                TrainConfig(epochs=2, progress=False)).fit()
