"""The language-model task for the :class:`~rnnkit.training.loop.Trainer`, and its evaluation.

Training is stateful truncated backpropagation through time: the corpus is laid out as B
streams (:class:`~rnnkit.data.lm.LMStreams`), each epoch walks through them window by window,
and the hidden state at the end of a window is the (detached) initial state of the next one.
The state is the trainer's ``carry``, so it is saved in checkpoints and restored on resume.

:func:`evaluate_lm` computes, on any id sequence, the loss in nats per token, the perplexity
``exp(loss)``, the number of tokens, and for character models bits per character
``loss / ln 2``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from rnnkit.data.lm import IGNORE, LMBatch, LMStreams
from rnnkit.errors import TrainingError
from rnnkit.layers.stacking import detach_states
from rnnkit.models.lm import LanguageModel
from rnnkit.training.loop import StepOutput, TrainingTask


@torch.no_grad()
def evaluate_lm(model: LanguageModel, ids: Tensor, *, batch_size: int = 10, bptt: int = 100,
                start_id: int = 0, level: str | None = None) -> dict[str, float]:
    """Metrics of ``model`` on ``ids`` (N,): every token is predicted once, from the state
    carried along its stream (B = ``batch_size`` streams, windows of ``bptt`` tokens).

    Returns ``{"loss", "perplexity", "tokens"}`` plus ``"bits_per_char"`` when ``level`` is
    ``"char"``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    streams = LMStreams.from_ids(ids, batch_size, start_id=start_id)
    total, state = 0.0, None
    try:
        for batch in streams.windows(bptt):
            loss, state = model.loss(batch.inputs.to(device), batch.targets.to(device), state,
                                     reduction="sum")
            total += float(loss)
    finally:
        model.train(was_training)
    n = streams.num_tokens
    mean = total / n
    metrics = {"loss": mean, "perplexity": math.exp(min(mean, 700.0)), "tokens": n}
    if level == "char":
        metrics["bits_per_char"] = mean / math.log(2)
    return metrics


class LMTask(TrainingTask):
    """Stateful truncated-BPTT training of a :class:`LanguageModel`.

    Args:
        train_ids: the training corpus (N,).
        valid_ids: the validation corpus, or ``None``.
        batch_size: B parallel streams.
        bptt: window length (the mean length with ``variable_bptt``).
        variable_bptt: AWD-LSTM's randomised window lengths.
        start_id: the input before the first token (``<eos>``).
        level: ``"char"`` adds bits per character to the metrics.
        eval_batch_size: streams for validation.
    """

    monitor = "loss"
    mode = "min"
    perplexity = True

    def __init__(self, train_ids: Tensor, valid_ids: Tensor | None, *, batch_size: int,
                 bptt: int, variable_bptt: bool = False, start_id: int = 0,
                 level: str | None = None, eval_batch_size: int = 10) -> None:
        self.streams = LMStreams.from_ids(train_ids, batch_size, start_id=start_id)
        self.valid_ids = valid_ids
        self.bptt, self.variable_bptt = bptt, variable_bptt
        self.start_id, self.level = start_id, level
        self.eval_batch_size = eval_batch_size

    def train_batches(self, epoch: int, generator: torch.Generator) -> Iterator[LMBatch]:
        return self.streams.windows(self.bptt, variable=self.variable_bptt, generator=generator)

    def steps_per_epoch(self) -> int | None:
        return self.streams.num_windows(self.bptt)

    def shard(self, rank: int, world_size: int) -> bool:
        """Distributed training: rank r keeps streams ``r * B/W .. (r+1) * B/W - 1`` of the B
        streams (so W ranks with B/W streams each take the steps of one process with B)."""
        B = self.streams.batch_size
        if B % world_size:
            raise TrainingError(f"--batch-size {B}: the language model's {B} streams must "
                                f"split evenly over {world_size} processes")
        rows = slice(rank * (B // world_size), (rank + 1) * (B // world_size))
        targets = self.streams.targets[rows]
        self.streams = LMStreams(self.streams.inputs[rows], targets,
                                 int((targets != IGNORE).sum()))
        return True

    def loss(self, model: LanguageModel, batch: LMBatch, carry: object) -> StepOutput:
        device = model.embedding.weight.device
        loss, state = model.loss(batch.inputs.to(device), batch.targets.to(device), carry)
        return StepOutput(loss, batch.tokens, detach_states(state))

    def evaluate(self, model: LanguageModel) -> dict[str, float] | None:
        if self.valid_ids is None:
            return None
        return evaluate_lm(model, self.valid_ids, batch_size=self.eval_batch_size,
                           bptt=self.bptt, start_id=self.start_id, level=self.level)
