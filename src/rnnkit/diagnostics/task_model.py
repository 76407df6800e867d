"""Small models and a short training loop for the synthetic tasks and the claims experiments.

:class:`TaskModel` is an input layer (an embedding for token tasks, the raw features for the
adding problem), an rnnkit stack (``rnnkit.layers.stack``) and a linear head on every step.
:func:`train_on` is a plain loop with optional clipping that records, per step, what
``rnnkit.training`` writes to its log (loss, gradient norm before clipping, clipped) so the
same log reader and plots apply. It is deliberately tiny: the experiments need fixed step and
time budgets, not checkpoints or resuming.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.data.synthetic import IGNORE, SyntheticTask
from rnnkit.errors import RnnkitError
from rnnkit.layers import stack


class TaskModel(nn.Module):
    """Embedding or features -> recurrent stack -> linear head, (B, T, in) -> (B, T, out).

    Args:
        cell: a cell name (``"rnn"``, ``"lstm"``, ``"gru"``, ...).
        input_size: the number of token ids (``tokens=True``) or input features.
        hidden_size, num_layers: of the stack.
        num_outputs: classes per step (1 for a regression).
        tokens: whether the input is token ids (B, T) or features (B, T, input_size).
        embed_size: the embedding size for token inputs.
        stack_options: passed to ``rnnkit.layers.stack`` (``engine``, ``connection``,
            ``bidirectional``, cell options ...).
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_outputs: int, *,
                 num_layers: int = 1, tokens: bool = True, embed_size: int = 16,
                 **stack_options: object) -> None:
        super().__init__()
        self.tokens = tokens
        self.embed = nn.Embedding(input_size, embed_size) if tokens else None
        self.rnn = stack(cell, embed_size if tokens else input_size, hidden_size, num_layers,
                         **stack_options)
        self.head = nn.Linear(self.rnn.output_size, num_outputs)

    def forward(self, inputs: Tensor) -> Tensor:
        """inputs (B, T) ids or (B, T, F) features -> outputs (B, T, num_outputs)."""
        x = self.embed(inputs) if self.embed is not None else inputs
        out, _ = self.rnn(x)
        return self.head(out)


def step_losses(model: nn.Module, task: SyntheticTask) -> Tensor:
    """Per-step losses (B, T) of ``model`` on ``task``: cross-entropy where a target is
    given (0 elsewhere), or for the adding problem the squared error at the last step."""
    out = model(task.inputs)
    if task.name == "adding":
        err = (out[:, -1, 0] - task.targets) ** 2
        return F.pad(err.unsqueeze(-1), (out.shape[1] - 1, 0))
    return F.cross_entropy(out.transpose(1, 2), task.targets, ignore_index=IGNORE,
                           reduction="none")


def window_losses(model: nn.Module, ids: Tensor, batch_size: int, length: int):
    """A function giving a language model's per-step loss (B, T) on the first ``batch_size``
    windows of ``length`` + 1 tokens of ``ids`` (N,) (fewer windows for a short text)."""
    T, B = length, batch_size
    if len(ids) < B * (T + 1):
        B = max(1, len(ids) // (T + 1))
    if len(ids) < B * (T + 1):
        raise RnnkitError(f"--length {T}: the text has only {len(ids)} tokens")
    window = ids[: B * (T + 1)].view(B, T + 1)
    x, y = window[:, :-1], window[:, 1:]

    def losses() -> Tensor:
        return F.cross_entropy(model(x).logits.transpose(1, 2), y, reduction="none")

    return losses


def task_loss(model: nn.Module, task: SyntheticTask) -> Tensor:
    """The mean loss over the steps that have a target (a scalar)."""
    losses = step_losses(model, task)
    return losses.sum() / task.mask.sum().clamp(min=1)


@torch.no_grad()
def score(model: nn.Module, task: SyntheticTask) -> float:
    """Accuracy on the steps with a target, or for the adding problem the mean squared
    error of the answer at the last step."""
    was = model.training
    model.eval()
    out = model(task.inputs)
    model.train(was)
    if task.name == "adding":
        return float(((out[:, -1, 0] - task.targets) ** 2).mean())
    mask = task.mask
    return float((out.argmax(-1)[mask] == task.targets[mask]).double().mean())


@dataclass
class TrainLog:
    """What :func:`train_on` saw, one entry per step; ``stopped``: why it ended."""

    loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    clipped: list[bool] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str = "steps"

    def write_jsonl(self, path: str | Path) -> None:
        """Write the records as ``rnnkit.training`` logs them (plus ``clipped``)."""
        lines = []
        for i, (lo, g, c) in enumerate(zip(self.loss, self.grad_norm, self.clipped), 1):
            rec = {"kind": "train", "step": i, "loss": lo if math.isfinite(lo) else str(lo),
                   "grad_norm": g if math.isfinite(g) else str(g), "clipped": c}
            lines.append(json.dumps(rec))
        Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def train_on(model: nn.Module, task: SyntheticTask | None, *, steps: int, batch_size: int = 32,
             lr: float = 1e-2, clip: float = 0.0, optimizer: str = "adam", seed: int = 0,
             max_seconds: float | None = None, target: float | None = None,
             check: SyntheticTask | None = None, batch_fn=None) -> TrainLog:
    """Train ``model`` on random batches of ``task`` for ``steps`` steps.

    Args:
        clip: clip the global gradient norm to this (0: never).
        optimizer: ``"adam"`` or ``"sgd"``.
        max_seconds: stop after this much time.
        target, check: stop early once ``score(model, check) >= target`` (checked every 25
            steps).
        batch_fn: ``batch_fn(step, generator) -> losses`` to train on anything else: returns
            the scalar loss of one batch (``task`` may then be ``None``).

    Stops at the first non-finite loss or gradient norm (``stopped = "nonfinite"``).
    """
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.SGD(params, lr=lr) if optimizer == "sgd"
           else torch.optim.Adam(params, lr=lr))
    log = TrainLog()
    start = time.monotonic()
    model.train()
    for step in range(steps):
        if batch_fn is not None:
            loss = batch_fn(step, g)
        else:
            idx = torch.randint(0, len(task), (batch_size,), generator=g)
            loss = task_loss(model, task.batch(idx))
        opt.zero_grad(set_to_none=True)
        value = float(loss.detach())
        if math.isfinite(value):
            loss.backward()
            norm = float(nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf))
        else:
            norm = math.nan
        clipped = bool(clip > 0 and norm > clip)
        log.loss.append(value)
        log.grad_norm.append(norm)
        log.clipped.append(clipped)
        if not (math.isfinite(value) and math.isfinite(norm)):
            log.stopped = "nonfinite"
            break
        opt.step()
        if max_seconds is not None and time.monotonic() - start > max_seconds:
            log.stopped = "time"
            break
        if (target is not None and check is not None and (step + 1) % 25 == 0
                and score(model, check) >= target):
            log.stopped = "solved"
            break
    log.seconds = time.monotonic() - start
    return log
