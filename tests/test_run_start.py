"""A start that fails leaves no run directory behind, and bad options are one-line errors
before any work (issue 13, items 5, 9 and 10 in part)."""

from __future__ import annotations

import math
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
