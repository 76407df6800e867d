"""Determinism (issue 13): the same seed, options and thread count give bit-identical weights,
and a run killed by SIGKILL during an evaluation or in the middle of writing its checkpoint,
then resumed, ends bit-identical to the uninterrupted run, at 1 and at 2 threads.

The kills are placed exactly: the training runs in a subprocess whose ``evaluate_lm`` or
``save_tensors`` is wrapped to SIGKILL the process at the chosen call (the checkpoint case
first leaves a half-written file behind, as a real kill would)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnkit.training.checkpoint import load_tensors

STEPS = 36
TEXT = "the quick brown fox jumps over the lazy dog. " * 40
HARNESS = '''
import os, signal, sys
from pathlib import Path
point, when, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
from rnnkit.tasks import lm
from rnnkit.training import checkpoint
calls = [0]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "eval":
    evaluate = lm.evaluate_lm

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == when:
            die()
        return evaluate(*args, **kwargs)
    lm.evaluate_lm = wrapped
elif point == "checkpoint":
    save = checkpoint.save_tensors

    def wrapped(path, tensors, metadata=None):
        if str(path).endswith("optimizer.safetensors"):
            calls[0] += 1
            if calls[0] == when:
                Path(path).write_bytes(b"half a file")
                die()
        return save(path, tensors, metadata)
    checkpoint.save_tensors = wrapped
from rnnkit.cli import main
sys.exit(main(argv))
'''


def _argv(train: Path, out: Path, threads: int, *extra: str) -> list[str]:
    return ["train", "lm", "--train", str(train), "--out", str(out), "--level", "char",
            "--num-layers", "1", "--hidden-size", "12", "--embedding-size", "6",
            "--batch-size", "4", "--bptt", "8", "--dropout", "0.1", "--max-steps", str(STEPS),
            "--epochs", "100", "--eval-every", "5", "--log-every", "1", "--seed", "3",
            "--sample-length", "0", "--no-progress", "--threads", str(threads), *extra]


def _run(tmp: Path, point: str, when: int, argv: list[str]) -> subprocess.CompletedProcess:
    harness = tmp / "harness.py"
    harness.write_text(HARNESS, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    return subprocess.run([sys.executable, str(harness), point, str(when), *argv], env=env,
                          capture_output=True, timeout=300)


def _weights(run: Path) -> tuple[dict, dict]:
    return (load_tensors(run / "last" / "model.safetensors"),
            load_tensors(run / "model.safetensors"))


def _same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs ({what})"


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> dict:
    """The uninterrupted run at 1 and 2 threads, each trained twice."""
    d = tmp_path_factory.mktemp("whole")
    train = d / "train.txt"
    train.write_text(TEXT, encoding="utf-8")
    runs = {}
    for threads in (1, 2):
        for copy in (0, 1):
            out = d / f"t{threads}-{copy}"
            done = _run(d, "none", 0, _argv(train, out, threads))
            assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
        runs[threads] = d / f"t{threads}-0"
        _same(*(_weights(d / f"t{threads}-{c}")[0] for c in (0, 1)),
              f"two uninterrupted runs at {threads} thread(s)")
    return {"train": train, **runs}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("point,when", [("eval", 3), ("checkpoint", 4)])
def test_killed_during_eval_or_checkpoint_write_resumes_bit_identical(whole, tmp_path, threads,
                                                                      point, when) -> None:
    out = tmp_path / "killed"
    argv = _argv(whole["train"], out, threads)
    killed = _run(tmp_path, point, when, argv)
    assert killed.returncode == -9, killed.stderr.decode(errors="replace")[-2000:]
    step = json.loads((out / "last" / "trainer.json").read_text())["step"]
    # evaluation 3 is at step 15 (the checkpoint of step 10 is the last one); the 4th
    # checkpoint write is at step 20 (the one of step 15 is kept, a half-written one beside)
    assert step == (10 if point == "eval" else 15)
    if point == "checkpoint":
        assert (out / "last.tmp" / "optimizer.safetensors").read_bytes() == b"half a file"
    resumed = _run(tmp_path, "none", 0, [*argv, "--resume"])
    assert resumed.returncode == 0, resumed.stderr.decode(errors="replace")[-2000:]
    assert not (out / "last.tmp").exists()
    last, best = _weights(out)
    want_last, want_best = _weights(whole[threads])
    _same(last, want_last, f"killed at {point} {when}, {threads} thread(s)")
    _same(best, want_best, f"best weights, killed at {point} {when}, {threads} thread(s)")
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()
             if '"train"' in line]
    assert steps == list(range(1, STEPS + 1))  # the log holds each step once
