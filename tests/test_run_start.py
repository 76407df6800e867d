"""A start that fails leaves no run directory behind, and bad options are one-line errors
before any work (issue 13, items 5, 9 and 10 in part)."""

from __future__ import annotations

import math
import os
import random

import pytest

from rnnkit.cli import main
from rnnkit.training.loop import TrainConfig

COMMON = ["--no-progress", "--threads", "1", "--seed", "0"]


def _tagged(path, n: int = 30) -> None:
    rng = random.Random(0)
    lines = []
    for _ in range(n):
        lines += [f"{rng.choice(['the', 'a', 'Ax', 'of'])} {rng.choice(['O', 'B-PER'])}"
                  for _ in range(rng.randint(2, 5))] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _text(path) -> None:
    path.write_text("the cat sat on the mat\n" * 40, encoding="utf-8")


@pytest.mark.parametrize("task,bad", [
    ("tagger", ["--hidden-size", "0"]), ("tagger", ["--batch-size", "0"]),
    ("tagger", ["--clip", "-1"]), ("tagger", ["--explode", "0"]),
    ("tagger", ["--dropout", "2"]), ("lm", ["--bptt", "0"]), ("lm", ["--threads", "-2"]),
    ("lm", ["--dev-fraction", "1.5"]), ("lm", ["--temperature", "-1"]),
])
def test_a_failed_start_leaves_nothing_and_the_retry_works(task, bad, tmp_path, capsys) -> None:
    data = tmp_path / ("train.conll" if task == "tagger" else "train.txt")
    (_tagged if task == "tagger" else _text)(data)
    out = tmp_path / "run"
    small = (["--hidden-size", "8", "--embedding-size", "8", "--char-dim", "4",
              "--char-hidden", "4", "--epochs", "1"] if task == "tagger" else
             ["--hidden-size", "8", "--embedding-size", "8", "--num-layers", "1",
              "--max-steps", "2", "--batch-size", "2", "--bptt", "8", "--sample-length", "0"])
    argv = ["train", task, "--train", str(data), "--out", str(out), *COMMON]
    assert main([*argv, *small, *bad]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("rnnkit: error: ")
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    assert main([*argv, *small]) == 0  # the same --out, no --overwrite needed
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()


@pytest.mark.parametrize("option,value", [("clip", -1.0), ("explode", 1.0), ("explode", 0.0),
                                          ("weight_decay", -0.1), ("momentum", 1.0),
                                          ("min_lr_ratio", 1.5), ("lr_factor", 0.0),
                                          ("clip", math.nan)])
def test_train_config_refuses_values_outside_their_range(option, value) -> None:
    with pytest.raises(ValueError, match=option):
        TrainConfig(**{option: value})


def test_resume_refuses_other_model_or_data_options(tmp_path, capsys) -> None:
    """`--resume` with a model or data option that differs from the run's is refused with the
    list of differences (issue 13, item 1); the same options, or only a new bound, resume."""
    data, other = tmp_path / "train.txt", tmp_path / "other.txt"
    _text(data)
    other.write_text("a different corpus altogether\n" * 40, encoding="utf-8")
    out = tmp_path / "run"
    argv = ["train", "lm", "--train", str(data), "--out", str(out), "--hidden-size", "8",
            "--embedding-size", "8", "--num-layers", "1", "--batch-size", "2", "--bptt", "8",
            "--sample-length", "0", *COMMON]
    assert main([*argv, "--max-steps", "2"]) == 0
    capsys.readouterr()
    for bad, needle in ((["--cell", "gru"], "--cell gru (the run has lstm)"),
                        (["--hidden-size", "16"], "--hidden-size 16 (the run has 8)"),
                        (["--train", str(other)], "--train"),
                        (["--bptt", "4"], "--bptt 4 (the run has 8)")):
        assert main([*argv, *bad, "--max-steps", "4", "--resume"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err and "--resume continues" in err
    assert main([*argv, "--max-steps", "4", "--resume"]) == 0  # a new bound is fine


def test_a_tagger_resume_on_other_data_is_refused(tmp_path, capsys) -> None:
    pos, ner = tmp_path / "pos.conll", tmp_path / "ner.conll"
    pos.write_text("the DET\ncat NOUN\n\na DET\ndog NOUN\n\n" * 10, encoding="utf-8")
    ner.write_text("Ax B-PER\nsat O\n\nthe O\nBx B-PER\n\n" * 10, encoding="utf-8")
    out = tmp_path / "run"
    small = ["--hidden-size", "8", "--embedding-size", "8", "--char-dim", "4",
             "--char-hidden", "4", "--out", str(out), *COMMON]
    assert main(["train", "tagger", "--train", str(pos), "--epochs", "1", *small]) == 0
    capsys.readouterr()
    assert main(["train", "tagger", "--train", str(ner), "--epochs", "2", "--resume",
                 *small]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--train" in err and "the file's scheme bio (the run has none)" in err
    assert main(["train", "tagger", "--train", str(pos), "--epochs", "2", "--resume",
                 *small]) == 0


def test_a_run_directory_in_use_is_refused_naming_the_holder(tmp_path, capsys) -> None:
    """A second trainer in the same --out is refused with the holder's pid, even with
    --overwrite, and nothing of the first run is removed; a lock left by a process that has
    gone (the system drops its flock) is taken over (issue 13, item 2)."""
    fcntl = pytest.importorskip("fcntl")
    data = tmp_path / "train.txt"
    _text(data)
    out = tmp_path / "run"
    argv = ["train", "lm", "--train", str(data), "--out", str(out), "--hidden-size", "8",
            "--embedding-size", "8", "--num-layers", "1", "--batch-size", "2", "--bptt", "8",
            "--sample-length", "0", "--max-steps", "2", *COMMON]
    assert main(argv) == 0
    before = sorted(p.name for p in out.iterdir())
    with open(out / ".lock", "a+", encoding="utf-8") as holder:  # another trainer, pid 4242
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.seek(0)
        holder.truncate()
        holder.write("4242\n")
        holder.flush()
        capsys.readouterr()
        for extra in (["--overwrite"], ["--resume", "--max-steps", "4"]):
            assert main([*argv, *extra]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "pid 4242" in err and "another process" in err
            assert sorted(p.name for p in out.iterdir()) == before
    # the holder has ended: its lock went with it
    assert main([*argv, "--resume", "--max-steps", "4"]) == 0
    assert (out / ".lock").read_text().strip() == str(os.getpid())


def test_a_classifier_resume_with_another_model_is_refused(tmp_path, capsys) -> None:
    rng = random.Random(0)
    rows = [f"{' '.join(rng.choice(['good', 'bad', 'film']) for _ in range(4))}\t{i % 2}"
            for i in range(40)]
    data = tmp_path / "train.tsv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    argv = ["train", "classifier", "--train", str(data), "--out", str(out),
            "--embedding-size", "8", "--hidden-size", "8", *COMMON]
    assert main([*argv, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main([*argv, "--epochs", "2", "--resume", "--pooling", "mean"]) == 2
    assert "--pooling mean (the run has max)" in capsys.readouterr().err
    assert main([*argv, "--epochs", "2", "--resume"]) == 0
