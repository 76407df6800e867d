"""Distributed training: two gloo processes on loopback reach the parameters of one process
with the same global batch (the LM's streams split over the ranks, and a shuffled data set
sharded by the trainer), including a resume from a checkpoint written by the two ranks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnkit.training.checkpoint import load_tensors
from rnnkit.training.distributed import shard_batches, sharded_steps

WORKER = Path(__file__).resolve().parent / "dist_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(out: Path, world: int) -> None:
    out.mkdir()
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
        env.update(OMP_NUM_THREADS="1")
        if world > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for p in procs:
        try:
            text, _ = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a distributed worker hung")
        assert p.returncode == 0, text.decode(errors="replace")[-3000:]


def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    import importlib.util
    spec = importlib.util.spec_from_file_location("dist_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    (tmp_path / "one").mkdir()
    worker.main(tmp_path / "one")  # one process, here
    _run(tmp_path / "two", 2)
    for name in ("lm", "generic"):
        one = load_tensors(tmp_path / "one" / f"{name}.safetensors")
        two = load_tensors(tmp_path / "two" / f"{name}.safetensors")
        assert one.keys() == two.keys()
        moved = 0.0
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=key)
            moved += float(one[key].abs().sum())
        assert moved > 0
    # only rank 0 wrote the log: one line per logged step, not two
    log = (tmp_path / "two" / "generic-run" / "log.jsonl").read_text().splitlines()
    one_log = (tmp_path / "one" / "generic-run" / "log.jsonl").read_text().splitlines()
    assert len(log) == len(one_log)


def test_shard_batches_is_distributed_sampler_rule() -> None:
    batches = list(range(7))
    parts = [list(shard_batches(batches, r, 3)) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4, 0], [2, 5, 1]]
    assert all(len(p) == sharded_steps(7, 3) for p in parts)
    assert [list(shard_batches(batches, r, 1)) for r in range(1)] == [batches]
    assert [list(shard_batches([8], r, 2)) for r in range(2)] == [[8], [8]]
