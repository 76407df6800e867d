"""A worker for tests/test_distributed.py: trains tiny models with the Trainer, in one process
or as one rank of a gloo group (torchrun's environment variables set by the test).

    python tests/dist_worker.py OUT_DIR

Writes ``OUT_DIR/lm.safetensors`` (an LM, streams split over the ranks, trained 3 steps, then
resumed from its checkpoint to 6 steps) and ``OUT_DIR/generic.safetensors`` (a GRU regressor
on a shuffled data set sharded by the trainer's DistributedSampler rule), from rank 0 only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from rnnkit.layers import stack
from rnnkit.models.lm import LanguageModel, LMConfig
from rnnkit.tasks.lm import LMTask
from rnnkit.training import RunDir, StepOutput, TrainConfig, Trainer, TrainingTask, distributed
from rnnkit.training.checkpoint import save_tensors

GLOBAL_BATCH = 4


class Regression(TrainingTask):
    """Sequences (N, T, 3) -> targets (N,): the mean of a GRU's last output; MSE."""

    def __init__(self, batch_size: int) -> None:
        g = torch.Generator().manual_seed(5)
        self.x = torch.randn(24, 6, 3, generator=g)
        self.y = self.x.sum(dim=(1, 2))
        self.batch_size = batch_size

    def train_batches(self, epoch: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        perm = torch.randperm(len(self.x), generator=generator)
        yield from perm.split(self.batch_size)

    def steps_per_epoch(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def loss(self, model: nn.Module, batch: torch.Tensor, carry: object) -> StepOutput:
        out, _ = model["rnn"](self.x[batch])
        pred = model["head"](out[:, -1]).squeeze(-1)
        return StepOutput(((pred - self.y[batch]) ** 2).mean(), len(batch))


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_lm(out: Path) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 11, (4 * 30,), generator=torch.Generator().manual_seed(1))
    config = TrainConfig(epochs=5, max_steps=3, lr=0.01, seed=3, progress=False)

    def trainer(resume: bool) -> Trainer:
        torch.manual_seed(0)
        model = LanguageModel(LMConfig(vocab_size=11, embedding_size=6, hidden_size=8,
                                       num_layers=1, cell="lstm"))
        task = LMTask(ids, None, batch_size=GLOBAL_BATCH, bptt=5)
        return Trainer(model, task, RunDir(out / "lm-run"), config, resume=resume)

    trainer(False).fit()
    config.max_steps = 6
    t = trainer(True)
    t.fit()
    return weights(t.model)


def train_generic(out: Path, per_rank_batch: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.ModuleDict({"rnn": stack("gru", 3, 5), "head": nn.Linear(5, 1)})
    config = TrainConfig(epochs=2, lr=0.02, seed=7, progress=False)
    Trainer(model, Regression(per_rank_batch), RunDir(out / "generic-run"), config).fit()
    return weights(model)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed.setup("cpu")
    lm = train_lm(out)
    generic = train_generic(out, 4 // world)
    if distributed.info().is_main:
        save_tensors(out / "lm.safetensors", lm)
        save_tensors(out / "generic.safetensors", generic)
    distributed.cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
