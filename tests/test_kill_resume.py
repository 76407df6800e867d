"""A `rnnkit train lm` process killed with SIGKILL at a random step and resumed with --resume
ends with the same weights as an uninterrupted run with the same seed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rnnkit.training.checkpoint import load_tensors

STEPS = 36
TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def _command(train: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rnnkit", "train", "lm", "--train", str(train),
            "--out", str(out), "--level", "char", "--num-layers", "1", "--hidden-size", "12",
            "--embedding-size", "6", "--batch-size", "4", "--bptt", "8", "--dropout", "0.1",
            "--max-steps", str(STEPS), "--epochs", "100", "--eval-every", "5",
            "--log-every", "1", "--seed", "3", "--sample-length", "0", "--no-progress",
            "--threads", "1", *extra]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _last_step(log: Path) -> int:
    if not log.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in log.read_text().splitlines()
             if line.endswith("}")]
    return max(steps, default=0)


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    train = tmp_path / "train.txt"
    train.write_text(TEXT, encoding="utf-8")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    uninterrupted = subprocess.Popen(_command(train, whole), env=_env(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_at = random.Random().randint(7, STEPS - 6)  # a random step, after a checkpoint
    proc = subprocess.Popen(_command(train, killed), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _last_step(killed / "log.jsonl") < kill_at and proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("training did not reach the step to kill at")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    reached = _last_step(killed / "log.jsonl")
    assert kill_at <= reached < STEPS
    resumed = subprocess.run(_command(train, killed, "--resume"), env=_env(),
                             capture_output=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr.decode(errors="replace")[-2000:]
    _, err = uninterrupted.communicate(timeout=120)
    assert uninterrupted.returncode == 0, err.decode(errors="replace")[-2000:]
    a = load_tensors(whole / "last" / "model.safetensors")
    b = load_tensors(killed / "last" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs (killed at step {reached})"
    trainer = json.loads((killed / "last" / "trainer.json").read_text())
    assert trainer["step"] == STEPS
    # the best weights (model.safetensors) agree too
    best_a, best_b = (load_tensors(d / "model.safetensors") for d in (whole, killed))
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_last_and_say_how_to_resume(tmp_path: Path, signum) -> None:
    """SIGTERM (a cluster pre-empting the job) saves last/ as SIGINT does (issue 13, item 6),
    and the resumed run ends with the uninterrupted weights."""
    train = tmp_path / "train.txt"
    train.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "stopped"
    proc = subprocess.Popen(_command(train, out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _last_step(out / "log.jsonl") < 8 and proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("training did not reach step 8")
        time.sleep(0.005)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    err = err.decode(errors="replace")
    assert proc.returncode == 128 + signum, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("rnnkit: interrupted: stopped at step ")
    assert "--resume" in err
    step = json.loads((out / "last" / "trainer.json").read_text())["step"]
    assert 8 <= step < STEPS
    resumed = subprocess.run(_command(train, out, "--resume"), env=_env(), capture_output=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr.decode(errors="replace")[-2000:]
    whole = tmp_path / "whole"
    done = subprocess.run(_command(train, whole), env=_env(), capture_output=True, timeout=120)
    assert done.returncode == 0
    a = load_tensors(whole / "last" / "model.safetensors")
    b = load_tensors(out / "last" / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs (stopped at step {step})"
