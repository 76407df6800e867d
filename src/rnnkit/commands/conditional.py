"""Train a conditional character language model: a whole tune from its type (one-to-many).

    rnnkit train conditional-lm --data ../shared/data/nottingham_abc --condition-from filename
    rnnkit generate DIR --condition jigs [--num 5] [--temperature 0.8] [--check]

Each ``.abc`` tune is one sequence of characters, ``<bos> X:1 ... <eos>``, its label from the
file name (``--condition-from filename``: ``jigs.abc`` -> jigs, ``reelsa-c.abc`` -> reels) or
from a header field (``--condition-from field --field M``: the metre). ``--check`` reports the
share of generated tunes that are well-formed ABC (``rnnkit.data.abc.check_abc``).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.cells import CELL_NAMES
from rnnkit.data.abc import Tune, check_abc, read_abc_tunes
from rnnkit.data.vocab import BOS, EOS, PAD, UNK, Vocabulary
from rnnkit.errors import RnnkitError
from rnnkit.models.conditional import ConditionalLM, ConditionalLMConfig
from rnnkit.models.lm import LMConfig
from rnnkit.training import (
    RunDir,
    StepOutput,
    TrainConfig,
    Trainer,
    TrainingTask,
    add_common_train_arguments,
    open_run,
    train_config,
)
from rnnkit.training.options import saved_train_options

TASK = "conditional-lm"
IGNORE = -100


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    d = parser.add_argument_group("data")
    d.add_argument("--data", required=True, metavar="DIR_OR_FILE",
                   help="an .abc file or a directory of them")
    d.add_argument("--condition-from", choices=("filename", "field"), default="filename",
                   help="label each tune by its file name (default) or a header field")
    d.add_argument("--field", default="R",
                   help="the header field for --condition-from field (default R; M: metre)")
    d.add_argument("--valid-fraction", type=float, default=0.1,
                   help="share of the tunes held out for validation (default 0.1)")
    d.add_argument("--max-chars", type=int, default=1500,
                   help="drop longer tunes (default 1500 characters)")
    m = parser.add_argument_group("model")
    m.add_argument("--cell", choices=CELL_NAMES, default="lstm")
    m.add_argument("--embedding-size", type=int, default=64)
    m.add_argument("--hidden-size", type=int, default=384)
    m.add_argument("--num-layers", type=int, default=2)
    m.add_argument("--label-size", type=int, default=32)
    m.add_argument("--dropout", type=float, default=0.2)
    m.add_argument("--engine", default="auto")
    add_common_train_arguments(parser, default_out="runs/conditional-lm-{time}")


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


def train(args: argparse.Namespace) -> int:
    run, saved = open_run(args, TASK)
    tunes = [t for t in read_abc_tunes(args.data, args.condition_from, args.field)
             if len(t.text) <= args.max_chars]
    if saved is None:
        vocab = Vocabulary.build((c for t in tunes for c in t.text),
                                 specials=(UNK, EOS, PAD, BOS), meta={"level": "char"})
        labels = sorted({t.label for t in tunes})
        lm = LMConfig(len(vocab), embedding_size=args.embedding_size,
                      hidden_size=args.hidden_size, num_layers=args.num_layers, cell=args.cell,
                      engine=args.engine, dropout=args.dropout, output_dropout=args.dropout)
        model_cfg = ConditionalLMConfig(lm.to_dict(), labels, args.label_size)
        data_cfg = {"data": str(args.data), "condition_from": args.condition_from,
                    "field": args.field, "valid_fraction": args.valid_fraction}
    else:
        vocab = run.load_vocab()
        model_cfg = ConditionalLMConfig.from_dict(saved["model"])
        data_cfg = saved["data"]
    counts = Counter(t.label for t in tunes)
    print(f"rnnkit: {len(tunes)} tunes, labels: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), file=sys.stderr)
    seqs = [(model_cfg.labels.index(t.label), _encode(t, vocab)) for t in tunes
            if t.label in model_cfg.labels]
    random.Random(1234).shuffle(seqs)
    n_valid = round(len(seqs) * data_cfg["valid_fraction"])
    valid, train_seqs = seqs[:n_valid], seqs[n_valid:]
    config = train_config(args, saved_train_options(saved),
                          TrainConfig(epochs=30, lr=2e-3, clip=1.0))
    run.write_config({"task": TASK, "model": model_cfg.to_dict(), "data": data_cfg,
                      "train": asdict(config)})
    run.save_vocab(vocab)
    torch.manual_seed(config.seed)
    model = ConditionalLM(model_cfg)
    task = TuneTask(train_seqs, valid, args.batch_size or 16)
    result = Trainer(model, task, run, config, resume=args.resume).fit()
    print(f"rnnkit: {result.steps} steps, {result.epochs} epochs, stopped by "
          f"{result.stopped_by}; best validation loss {result.best}; run in {run.path}",
          file=sys.stderr)
    return 0


def load_run(run_dir: str) -> tuple[ConditionalLM, Vocabulary]:
    """The trained model (best weights, eval mode) and its character vocabulary."""
    run = RunDir(run_dir)
    model, _ = run.load_model(TASK, lambda m: ConditionalLM(ConditionalLMConfig.from_dict(m)))
    return model, run.load_vocab()


def generate_tunes(model: ConditionalLM, vocab: Vocabulary, label: str, num: int = 1,
                   temperature: float = 0.8, max_len: int = 2000, seed: int | None = 0,
                   top_k: int | None = None, top_p: float | None = None) -> list[str]:
    """``num`` tunes of type ``label`` as ABC text."""
    labels = torch.full((num,), model.label_id(label), dtype=torch.long,
                        device=next(model.parameters()).device)
    ids = model.generate(labels, vocab.bos_id, vocab.eos_id, max_len, temperature, top_k,
                         top_p, seed)
    specials = {vocab.id(s) for s in vocab.specials}
    return ["".join(vocab.itos[i] for i in seq if i not in specials) for seq in ids]


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--condition", required=True, metavar="LABEL",
                        help="the tune type (or field value) to write")
    parser.add_argument("--num", type=int, default=1, help="how many tunes (default 1)")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--max-len", type=int, default=2000, help="characters per tune at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true",
                        help="report the share of well-formed ABC tunes on stderr")


def generate(args: argparse.Namespace) -> int:
    model, vocab = load_run(args.run_dir)
    try:
        tunes = generate_tunes(model, vocab, args.condition, args.num, args.temperature,
                               args.max_len, args.seed, args.top_k, args.top_p)
    except ValueError as err:
        raise RnnkitError(str(err)) from None
    sys.stdout.write("\n\n".join(tunes) + "\n")
    if args.check:
        checks = [check_abc(t) for t in tunes]
        ok = sum(c.ok for c in checks)
        print(f"rnnkit: {ok} of {len(tunes)} tunes well-formed ABC "
              f"({100.0 * ok / max(len(tunes), 1):.0f}%)", file=sys.stderr)
        for i, c in enumerate(checks, start=1):
            if not c.ok:
                print(f"rnnkit: tune {i}: {c.problems[0]}", file=sys.stderr)
    return 0
