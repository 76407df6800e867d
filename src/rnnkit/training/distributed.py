"""Data-parallel training with ``torch.distributed``: one process per device, launched by torchrun.

::

    torchrun --nproc_per_node=4 -m rnnkit train lm --train wiki.train.tokens ...
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 \\
             --nproc_per_node=8 -m rnnkit train tagger ...

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`setup` reads them and joins the process group (``gloo`` on CPU, ``nccl`` on CUDA; the
environment variable ``RNNKIT_DIST_BACKEND`` overrides). Without them (``WORLD_SIZE`` unset or 1)
everything here is a no-op and training runs in one process as before. Ranks other than 0
print nothing on stdout (set ``RNNKIT_PRINT_ALL_RANKS=1`` to see them); stderr is kept.

What the :class:`~rnnkit.training.loop.Trainer` does with it, for every task:

- **data**: each rank trains on its own shard. A task may shard itself
  (:meth:`~rnnkit.training.loop.TrainingTask.shard`; the language model gives each rank
  ``B / world_size`` of its B streams); otherwise :func:`shard_batches` gives rank r the batches
  r, r + W, r + 2W, ... of the epoch, whose order every rank draws from the same
  ``(seed, epoch)`` generator (the rule of ``DistributedSampler``: the last round is padded
  with the epoch's first batches so that every rank takes the same number of steps);
- **model**: wrapped in ``DistributedDataParallel`` (:func:`wrap`), which averages the
  gradients over the ranks during the backward pass, so a step on W ranks with per-rank batch
  b is the step of one process with batch W * b (for losses that are means over equal-sized
  batches);
- **metrics**: the training loss is averaged over the ranks (:func:`all_reduce_mean`), so the
  NaN guard and the log agree everywhere; evaluation runs on rank 0 and its metrics are
  broadcast (:func:`broadcast_json`), so early stopping and the schedule agree everywhere;
- **files**: only rank 0 logs and writes checkpoints; the per-rank state that a resume needs
  (an LM's carried hidden state, each rank's random-number state) is gathered to rank 0 and
  saved with the checkpoint, and every rank reads it back on ``--resume`` (the run directory
  must be reachable by every node at the same path, as it always is on one node).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` in ``[0, world_size)``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes checkpoints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") \
            from None


def info() -> DistInfo:
    """This process's rank and world size: from the process group when one is initialised,
    else from torchrun's environment variables, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(),
                        _env_int("LOCAL_RANK", dist.get_rank()))
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    return DistInfo(rank, world, _env_int("LOCAL_RANK", rank)) if world > 1 else DistInfo()


def backend_for(device: str | None) -> str:
    """``RNNKIT_DIST_BACKEND`` if set, else ``nccl`` for a CUDA device and ``gloo`` otherwise."""
    forced = os.environ.get("RNNKIT_DIST_BACKEND")
    if forced:
        return forced
    device = device or "cpu"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "nccl" if device.startswith("cuda") else "gloo"


def setup(device: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment variables (once per
    process; later calls return the same :class:`DistInfo`). ``device`` picks the backend."""
    current = info()
    if not current.distributed or dist.is_initialized():
        return current
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(current.local_rank)
    dist.init_process_group(backend=backend, rank=current.rank, world_size=current.world_size)
    if current.rank != 0 and not os.environ.get("RNNKIT_PRINT_ALL_RANKS"):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (reports come from rank 0)
    return info()


def local_device(device: str) -> torch.device:
    """``device`` for this process: ``cuda`` becomes ``cuda:LOCAL_RANK`` when distributed."""
    dev = torch.device(device)
    cur = info()
    if dev.type == "cuda" and dev.index is None and cur.distributed:
        return torch.device("cuda", cur.local_rank)
    return dev


def _comm_device() -> torch.device:
    """Where tensors must be for a collective of the current backend."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first and on the other ranks after it, e.g. to write a file
    (a tokenizer model) that every rank then reads. A no-op in one process."""
    cur = info()
    if cur.distributed and not cur.is_main:
        barrier()
    yield
    if cur.distributed and cur.is_main:
        barrier()


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: list[float]) -> list[float]:
    """The mean over the ranks of each value (unchanged in one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def all_reduce_sum(values: list[float]) -> list[float]:
    """The sum over the ranks of each value (unchanged in one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def broadcast_json(obj: Any = None) -> Any:
    """Rank 0's ``obj`` (anything JSON can hold) on every rank, sent as UTF-8 bytes (never
    pickled). In one process returns ``obj``."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    device = _comm_device()
    data = json.dumps(obj).encode("utf-8") if dist.get_rank() == 0 else b""
    size = torch.tensor([len(data)], dtype=torch.long, device=device)
    dist.broadcast(size, 0)
    buf = torch.zeros(int(size), dtype=torch.uint8, device=device)
    if dist.get_rank() == 0:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, 0)
    return json.loads(bytes(buf.cpu().tolist()).decode("utf-8"))


def gather_tensors(tensors: list[Tensor]) -> list[list[Tensor]]:
    """Every rank's ``tensors`` (same count, shapes and dtypes on every rank), on every rank:
    ``result[r][i]`` is rank r's i-th tensor, on the CPU. In one process ``[tensors]``."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [[t.detach().cpu() for t in tensors]]
    device, world = _comm_device(), dist.get_world_size()
    out: list[list[Tensor]] = [[] for _ in range(world)]
    for t in tensors:
        src = t.detach().to(device).contiguous()
        parts = [torch.empty_like(src) for _ in range(world)]
        dist.all_gather(parts, src)
        for r in range(world):
            out[r].append(parts[r].cpu())
    return out


def shard_batches(batches: Iterable[T], rank: int, world_size: int) -> Iterator[T]:
    """Rank ``rank``'s batches of an epoch: batches ``rank, rank + W, ...`` of ``batches``
    (which must come in the same order on every rank). The last, incomplete round is filled
    with the epoch's first batches, so every rank yields ``ceil(n / W)`` batches."""
    if world_size <= 1:
        yield from batches
        return
    first: list[T] = []
    count = 0
    mine: T | None = None
    have = False
    for i, batch in enumerate(batches):
        count = i + 1
        if i < world_size:
            first.append(batch)
        if i % world_size == rank:
            mine, have = batch, True
        if i % world_size == world_size - 1 and have:
            yield mine
            mine, have = None, False
    if count % world_size:  # an incomplete last round: pad from the start
        pos = count % world_size
        if rank >= pos:
            yield first[(rank - pos) % len(first)]
        elif have:
            yield mine


def sharded_steps(steps: int | None, world_size: int) -> int | None:
    """The batches per rank of an epoch of ``steps`` batches under :func:`shard_batches`."""
    if steps is None or world_size <= 1:
        return steps
    return -(-steps // world_size)


class TaskStep(nn.Module):
    """``forward(batch, carry) = task.loss(model, batch, carry)``: the module that
    ``DistributedDataParallel`` wraps, so that any task's loss goes through DDP's forward."""

    def __init__(self, model: nn.Module, task: Any) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch: Any, carry: object) -> Any:
        return self.task.loss(self.model, batch, carry)


def wrap(model: nn.Module, task: Any, device: torch.device, *,
         find_unused_parameters: bool = False) -> nn.Module:
    """``DistributedDataParallel(TaskStep(model, task))`` (its parameters are ``model``'s; DDP
    broadcasts rank 0's values to every rank here)."""
    step = TaskStep(model, task)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        step, device_ids=ids, find_unused_parameters=find_unused_parameters)


def cleanup() -> None:
    """Leave the process group (at the end of a run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
