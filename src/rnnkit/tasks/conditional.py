"""The conditional language-model task: a whole tune from its type (one-to-many); its data
section, training, generation and loading.

Each ``.abc`` tune is one sequence of characters, ``<bos> X:1 ... <eos>``, its label from the
file name (``condition_from="filename"``: ``jigs.abc`` -> jigs, ``reelsa-c.abc`` -> reels) or
from a header field (``condition_from="field"``, ``field="M"``: the metre).
:func:`rnnkit.data.abc.check_abc` tells whether a generated tune is well-formed ABC.
"""

from __future__ import annotations

import math
import random
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.data.abc import Tune, read_abc_tunes
from rnnkit.data.padding import IGNORE_INDEX as IGNORE
from rnnkit.data.vocab import BOS, EOS, PAD, UNK, Vocabulary
from rnnkit.errors import RnnkitError, note
from rnnkit.generation.sampling import check_sampling
from rnnkit.models.conditional import ConditionalLM, ConditionalLMConfig
from rnnkit.models.lm import LMConfig
from rnnkit.training import RunDir, StepOutput, TrainConfig, Trainer, TrainingTask
from rnnkit.training.checks import check_options, qrnn_windows, window_option
from rnnkit.training.options import (
    RunRequest,
    open_run,
    option_changes,
    refuse_changed_options,
    saved_train_options,
    train_config,
)
from rnnkit.training.runconfig import RunConfig, section

TASK = "conditional-lm"
#: the Nottingham benchmark's schedule (``benchmarks/music_quality.py``, best validation 1.289
#: bits/char at epoch 23): lr 2e-3 halved whenever a dev evaluation does not improve; the model
#: options' defaults are its model
DEFAULT_TRAIN = TrainConfig(epochs=30, lr=2e-3, clip=1.0, schedule="plateau", lr_factor=0.5)


@dataclass
class ConditionalData:
    """The data section of a conditional-LM run (``config.json``'s ``"data"``): the tunes
    (``data``: an .abc file or a directory), how they are labelled, the held-out share and
    the batch size."""

    data: str = ""
    condition_from: str = "filename"
    field: str = "R"
    valid_fraction: float = 0.1
    batch_size: int = 16


@dataclass
class ConditionalOptions:
    """What ``rnnkit train conditional-lm`` was given (None: the default, or the resumed
    run's)."""

    train: str = ""
    condition_from: str = "filename"
    field: str = "R"
    dev_fraction: float = 0.1
    max_chars: int = 1500
    cell: str = "lstm"
    embedding_size: int = 64
    hidden_size: int = 384
    num_layers: int = 2
    #: the qrnn's convolution window(s), ``--window`` (None: the cell's default)
    window: str | None = None
    label_size: int = 32
    dropout: float = 0.2
    engine: str = "auto"
    batch_size: int | None = None
    #: the options the command line set (``rnnkit.commands.common.options_from``)
    given: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        check_options(self)


def _encode(tune: Tune, vocab: Vocabulary) -> list[int]:
    return [vocab.bos_id, *vocab.encode(list(tune.text)).tolist(), vocab.eos_id]


def _batch(seqs: Sequence[tuple[int, list[int]]]) -> tuple[Tensor, Tensor, Tensor]:
    """labels (B,), inputs (B, T) and targets (B, T) (IGNORE past each end)."""
    T = max(len(s) for _, s in seqs) - 1
    inputs = torch.zeros(len(seqs), T, dtype=torch.long)
    targets = torch.full((len(seqs), T), IGNORE, dtype=torch.long)
    for i, (_, s) in enumerate(seqs):
        inputs[i, :len(s) - 1] = torch.tensor(s[:-1])
        targets[i, :len(s) - 1] = torch.tensor(s[1:])
    return torch.tensor([lab for lab, _ in seqs]), inputs, targets


class TuneTask(TrainingTask):
    """Per-character cross-entropy over whole tunes, batched by similar length."""

    def __init__(self, train: list, valid: list, batch_size: int) -> None:
        self.train, self.valid, self.batch_size = train, valid, batch_size

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train) / self.batch_size)

    def _batches(self, data: list, rng: random.Random | None) -> list:
        order = sorted(range(len(data)), key=lambda i: len(data[i][1]))
        groups = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if rng is not None:
            rng.shuffle(groups)
        return [_batch([data[i] for i in g]) for g in groups]

    def train_batches(self, epoch: int, generator: torch.Generator) -> Iterable:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return self._batches(self.train, random.Random(seed))

    def loss(self, model: nn.Module, batch: tuple, carry: object) -> StepOutput:
        device = next(model.parameters()).device
        labels, inputs, targets = (t.to(device) for t in batch)
        logits = model(labels, inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=IGNORE)
        return StepOutput(loss, int((targets != IGNORE).sum()))

    def evaluate(self, model: nn.Module) -> dict[str, float] | None:
        if not self.valid:
            return None
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for batch in self._batches(self.valid, None):
            labels, inputs, targets = (t.to(device) for t in batch)
            logits = model(labels, inputs)
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           targets.reshape(-1), ignore_index=IGNORE,
                                           reduction="sum"))
            count += int((targets != IGNORE).sum())
        loss = total / max(count, 1)
        return {"loss": loss, "bpc": loss / math.log(2)}


def train(opts: ConditionalOptions, request: RunRequest) -> int:
    """Train a conditional LM into the run directory of ``request``; progress on stderr."""
    if not opts.train:
        raise RnnkitError("rnnkit train conditional-lm: --train DIR_OR_FILE is required")
    run, saved = open_run(request, TASK)
    if saved is None:
        data_cfg = ConditionalData(opts.train, opts.condition_from, opts.field, opts.dev_fraction,
                                   opts.batch_size or ConditionalData.batch_size)
    else:
        data_cfg = section(ConditionalData, saved["data"], "data")
        m = saved["model"]
        lm = m.get("lm", {})
        was = {**{k: lm.get(k) for k in ("cell", "embedding_size", "hidden_size", "num_layers",
                                          "engine", "dropout")},
               "window": window_option(lm),
               "label_size": m.get("label_size"), "train": data_cfg.data,
               "condition_from": data_cfg.condition_from, "field": data_cfg.field,
               "dev_fraction": data_cfg.valid_fraction, "batch_size": data_cfg.batch_size}
        refuse_changed_options(run, option_changes(opts, was, ("train",), ("train",)))
    tunes = [t for t in read_abc_tunes(opts.train, data_cfg.condition_from, data_cfg.field)
             if len(t.text) <= opts.max_chars]
    if saved is None:
        vocab = Vocabulary.build((c for t in tunes for c in t.text),
                                 specials=(UNK, EOS, PAD, BOS), meta={"level": "char"})
        labels = sorted({t.label for t in tunes})
        options, layer_options = qrnn_windows(opts.window, opts.cell, opts.num_layers)
        lm = LMConfig(len(vocab), embedding_size=opts.embedding_size,
                      hidden_size=opts.hidden_size, num_layers=opts.num_layers, cell=opts.cell,
                      engine=opts.engine, dropout=opts.dropout, output_dropout=opts.dropout,
                      cell_options=options, layer_cell_options=layer_options)
        model_cfg = ConditionalLMConfig(lm.to_dict(), labels, opts.label_size)
    else:
        vocab = run.load_vocab()
        model_cfg = ConditionalLMConfig.from_dict(saved["model"])
    counts = Counter(t.label for t in tunes)
    print(f"rnnkit: {len(tunes)} tunes, labels: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), file=sys.stderr)
    seqs = [(model_cfg.labels.index(t.label), _encode(t, vocab)) for t in tunes
            if t.label in model_cfg.labels]
    random.Random(1234).shuffle(seqs)
    n_valid = round(len(seqs) * data_cfg.valid_fraction)
    valid, train_seqs = seqs[:n_valid], seqs[n_valid:]
    config = train_config(request.train, saved_train_options(saved), DEFAULT_TRAIN)
    run.write_config(RunConfig(TASK, model_cfg.to_dict(), asdict(data_cfg), asdict(config)))
    run.save_vocab(vocab)
    torch.manual_seed(config.seed)
    model = ConditionalLM(model_cfg)
    task = TuneTask(train_seqs, valid, data_cfg.batch_size)
    result = Trainer(model, task, run, config, resume=request.resume).fit()
    note(result.summary(task.monitor, run.path))
    return 0


def load_run(run_dir: str) -> tuple[ConditionalLM, Vocabulary]:
    """The trained model (best weights, eval mode) and its character vocabulary."""
    run = RunDir(run_dir)
    model, _ = run.load_model(TASK, lambda m: ConditionalLM(ConditionalLMConfig.from_dict(m)))
    return model, run.load_vocab()


#: tunes drawn at once by :func:`stream_tunes` (memory stays bounded however many are asked)
TUNE_BATCH = 16


def stream_tunes(model: ConditionalLM, vocab: Vocabulary, label: str, num: int = 1,
                 temperature: float = 0.8, max_len: int = 2000, seed: int | None = 0,
                 top_k: int | None = None, top_p: float | None = None) -> Iterator[str]:
    """``num`` tunes of type ``label`` as ABC text, one at a time, drawn
    :data:`TUNE_BATCH` at a time (batch ``b`` with seed ``seed + b``) so that memory stays
    constant however large ``num`` is. The options are checked before the first tune."""
    if not isinstance(num, int) or num < 1:
        raise RnnkitError(f"--num must be a positive int, got {num}")
    if not isinstance(max_len, int) or max_len < 1:
        raise RnnkitError(f"--max-len must be a positive int, got {max_len}")
    check_sampling(temperature, top_k, top_p)
    label_id = model.label_id(label)
    device = next(model.parameters()).device
    specials = {vocab.id(s) for s in vocab.specials}

    def tunes() -> Iterator[str]:
        for b, first in enumerate(range(0, num, TUNE_BATCH)):
            labels = torch.full((min(TUNE_BATCH, num - first),), label_id, dtype=torch.long,
                                device=device)
            ids = model.generate(labels, vocab.bos_id, vocab.eos_id, max_len, temperature,
                                 top_k, top_p, None if seed is None else seed + b)
            for seq in ids:
                yield "".join(vocab.itos[i] for i in seq if i not in specials)

    return tunes()


def generate_tunes(model: ConditionalLM, vocab: Vocabulary, label: str, num: int = 1,
                   **options: object) -> list[str]:
    """``num`` tunes of type ``label`` as ABC text (:func:`stream_tunes`, as a list)."""
    return list(stream_tunes(model, vocab, label, num, **options))
