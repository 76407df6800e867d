"""train a sentence classifier (sentiment, topic) on TSV files

    rnnkit train classifier --train train.tsv --dev dev.tsv [--pooling max]
    rnnkit evaluate DIR --data dev.tsv [--json]             accuracy and macro-F1
    rnnkit predict DIR --input texts.txt [--output F]       one label a line
    rnnkit encode DIR --input texts.txt --output vecs.npy   one vector a line, (N, D) float32

TSV files: one example a line, text and label columns by name (``--text-column sentence``) or
index, header optional (see :func:`rnnkit.data.tsv.read_tsv`). Texts are split on white space.
The run directory holds ``config.json``, ``vocab.json`` (words), ``labels.json`` and weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit.data.padding import length_batches, pad_ids
from rnnkit.data.tsv import LabelledTexts, parse_column, read_lines, read_tsv, tokenize
from rnnkit.data.vocab import PAD, UNK, Vocabulary
from rnnkit.errors import DataError
from rnnkit.metrics.classification import classification_scores
from rnnkit.models.classifier import POOLINGS, Classifier, EncoderConfig
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

TASK = "classifier"
DEFAULTS = TrainConfig(epochs=10, lr=2e-3, clip=5.0, patience=3)
BATCH_SIZE = 64


def add_tsv_arguments(parser: argparse.ArgumentParser, run_defaults: bool = False) -> None:
    """``--text-column --label-column --header/--no-header``."""
    tail = " (default: the run's)" if run_defaults else ""
    parser.add_argument("--text-column", type=parse_column, metavar="NAME|INDEX",
                        help="text column" + (tail or " (default 0, or 'sentence'/'text' when "
                                              "the header has it)"))
    parser.add_argument("--label-column", type=parse_column, metavar="NAME|INDEX",
                        help="label column" + (tail or " (default 1, or 'label')"))
    parser.add_argument("--header", dest="header", action="store_const", const=True,
                        default=None, help="the first line names the columns")
    parser.add_argument("--no-header", dest="header", action="store_const", const=False,
                        help="the first line is an example (default: detect)")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", required=True, metavar="F.tsv")
    parser.add_argument("--dev", metavar="F.tsv", help="validation file (best model, early stop)")
    add_tsv_arguments(parser)
    m = parser.add_argument_group("model")
    m.add_argument("--cell", default="lstm", help="recurrent cell (default lstm)")
    m.add_argument("--embed-dim", type=int, default=128)
    m.add_argument("--hidden-size", type=int, default=128, help="per direction")
    m.add_argument("--layers", type=int, default=1)
    m.add_argument("--unidirectional", action="store_true")
    m.add_argument("--pooling", choices=POOLINGS, default="max")
    m.add_argument("--dropout", type=float, default=0.3)
    m.add_argument("--min-count", type=int, default=1, help="words seen fewer times -> <unk>")
    m.add_argument("--lower", action="store_true", help="lowercase the texts")
    add_common_train_arguments(parser, default_out="runs/classifier-{time}")


def read_examples(path: str, data: dict, args: argparse.Namespace) -> LabelledTexts:
    """Read a TSV with the columns given in ``args``, else those of ``data`` (the run's)."""
    text = args.text_column if args.text_column is not None else data.get("text_column")
    label = args.label_column if args.label_column is not None else data.get("label_column")
    header = args.header if args.header is not None else data.get("header")
    if text is None:
        text = _default_column(path, ("sentence", "text"), 0)
    if label is None:
        label = _default_column(path, ("label",), 1)
    return read_tsv(path, text, label, header)


def _default_column(path: str, names: Sequence[str], index: int) -> int | str:
    try:
        with open(path, encoding="utf-8") as f:
            first = [x.strip() for x in f.readline().rstrip("\r\n").split("\t")]
    except (OSError, UnicodeDecodeError):
        return index  # read_tsv reports it
    return next((n for n in names if n in first), index)


def encode_texts(texts: Sequence[str], words: Vocabulary, lower: bool) -> list[list[int]]:
    """Word ids of each text (an empty text becomes one ``<unk>``)."""
    out = []
    for t in texts:
        toks = tokenize(t.lower() if lower else t)
        out.append([words.stoi.get(w, words.unk_id) for w in toks] or [words.unk_id])
    return out


class ClassificationTask(TrainingTask):
    """The classifier's side of the :class:`~rnnkit.training.Trainer`."""

    monitor = "accuracy"
    mode = "max"

    def __init__(self, ids: list[list[int]], labels: list[int], dev: tuple | None,
                 label_names: Sequence[str], batch_size: int) -> None:
        self.ids, self.labels, self.dev = ids, labels, dev
        self.lengths = [len(x) for x in ids]
        self.label_names, self.batch_size = list(label_names), batch_size

    def train_batches(self, epoch: int, generator: torch.Generator
                      ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for idx in length_batches(self.lengths, self.batch_size, generator):
            words, lengths = pad_ids([self.ids[i] for i in idx])
            yield words, lengths, torch.tensor([self.labels[i] for i in idx])

    def steps_per_epoch(self) -> int:
        return -(-len(self.ids) // self.batch_size)

    def loss(self, model: nn.Module, batch: tuple, carry: object) -> StepOutput:
        device = next(model.parameters()).device
        words, lengths, labels = (x.to(device) for x in batch)
        return StepOutput(model.loss(words, lengths, labels), len(labels))

    def evaluate(self, model: nn.Module) -> dict[str, float] | None:
        if self.dev is None:
            return None
        ids, gold = self.dev
        guess = [self.label_names[i] for i in predict_ids(model, ids, self.batch_size)]
        s = classification_scores(gold, guess)
        return {"accuracy": s.accuracy, "macro_f1": s.macro_f1}


def _batches(model: nn.Module, ids: list[list[int]], batch_size: int
             ) -> Iterator[tuple[list[int], Tensor, Tensor]]:
    device = next(model.parameters()).device
    for idx in length_batches([len(x) for x in ids], batch_size):
        words, lengths = pad_ids([ids[i] for i in idx])
        yield idx, words.to(device), lengths.to(device)


@torch.no_grad()
def predict_ids(model: Classifier, ids: list[list[int]], batch_size: int = 128) -> list[int]:
    """Label ids of every text, in order."""
    model.eval()
    out = [0] * len(ids)
    for idx, words, lengths in _batches(model, ids, batch_size):
        for i, y in zip(idx, model.predict(words, lengths).tolist()):
            out[i] = y
    return out


@torch.no_grad()
def encode_ids(model: Classifier, ids: list[list[int]], batch_size: int = 128) -> np.ndarray:
    """Sentence vectors (N, D) float32 from the classifier's encoder."""
    model.eval()
    out = np.zeros((len(ids), model.encoder.output_size), dtype=np.float32)
    for idx, words, lengths in _batches(model, ids, batch_size):
        out[idx] = model.encoder(words, lengths).cpu().numpy()
    return out


def train(args: argparse.Namespace) -> int:
    run, saved = open_run(args, task=TASK)
    config = train_config(args, saved_train_options(saved), DEFAULTS)
    data = {"text_column": args.text_column, "label_column": args.label_column,
            "header": args.header, "lower": args.lower, "train": args.train, "dev": args.dev}
    examples = read_examples(args.train, data, args)
    print(f"train: {args.train}: {len(examples)} examples", file=sys.stderr)
    if saved is not None:
        words, labels = run.load_vocab(), run.load_vocab("labels.json")
        model_config = EncoderConfig.from_dict(saved["model"])
        data["lower"] = saved["data"].get("lower", False)
    else:
        counts = Counter(w for t in examples.texts
                         for w in tokenize(t.lower() if args.lower else t))
        words = Vocabulary.build(counts, min_freq=args.min_count, specials=(PAD, UNK))
        labels = Vocabulary.build(Counter(examples.labels), specials=())
        if len(labels) < 2:
            raise DataError(f"only one label ({labels.itos[0]!r}) in the training data",
                            args.train)
        model_config = EncoderConfig(
            num_words=len(words), num_labels=len(labels), embed_dim=args.embed_dim,
            cell=args.cell, hidden_size=args.hidden_size, num_layers=args.layers,
            bidirectional=not args.unidirectional, pooling=args.pooling, dropout=args.dropout,
            pad_id=words.pad_id)
        run.save_vocab(words)
        run.save_vocab(labels, "labels.json")
    batch_size = args.batch_size or (saved or {}).get("batch_size") or BATCH_SIZE
    run.write_config({"task": TASK, "model": model_config.to_dict(), "data": data,
                      "batch_size": batch_size, "train": asdict(config)})
    dev = None
    if args.dev:
        dev_ex = read_examples(args.dev, data, args)
        print(f"dev: {args.dev}: {len(dev_ex)} examples", file=sys.stderr)
        dev = (encode_texts(dev_ex.texts, words, data["lower"]), dev_ex.labels)
    ids = encode_texts(examples.texts, words, data["lower"])
    torch.manual_seed(config.seed)
    model = Classifier(model_config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"classifier: {n_params:,} parameters, {len(words)} words, {len(labels)} labels, "
          f"{model_config.pooling} pooling", file=sys.stderr)
    task = ClassificationTask(ids, [labels.stoi[y] for y in examples.labels], dev,
                              labels.itos, batch_size)
    result = Trainer(model, task, run, config, resume=args.resume).fit()
    best = f"best dev accuracy {result.best:.4f}, " if result.best is not None else ""
    print(f"{result.steps} steps, {result.epochs} epochs ({result.stopped_by}), {best}"
          f"{result.seconds:.0f} s; run in {run.path}", file=sys.stderr)
    return 0


def load(run_dir: str | Path) -> tuple[Classifier, dict, Vocabulary, Vocabulary]:
    """``(model (eval mode, best weights), config, words, labels)`` of a classifier run."""
    run = RunDir(run_dir)
    model, config = run.load_model(TASK, lambda m: Classifier(EncoderConfig.from_dict(m)))
    return model, config, run.load_vocab(), run.load_vocab("labels.json")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="F.tsv", help="labelled file")
    add_tsv_arguments(parser, run_defaults=True)
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


def evaluate(args: argparse.Namespace) -> int:
    model, config, words, labels = load(args.run_dir)
    ex = read_examples(args.data, config["data"], args)
    guess = predict_ids(model, encode_texts(ex.texts, words, config["data"].get("lower")))
    s = classification_scores(ex.labels, [labels.itos[i] for i in guess])
    if args.json:
        print(json.dumps({"accuracy": s.accuracy, "macro_f1": s.macro_f1,
                          "examples": len(ex), "per_class": s.per_class}, indent=2))
        return 0
    print(f"{args.data}: {len(ex)} examples")
    print(f"accuracy  {100 * s.accuracy:6.2f}\nmacro_f1  {100 * s.macro_f1:6.2f}\n")
    print(f"{'label':<16} {'P':>6} {'R':>6} {'F1':>6} {'gold':>6}")
    for label, c in s.per_class.items():
        print(f"{label:<16} {100 * c['precision']:6.2f} {100 * c['recall']:6.2f} "
              f"{100 * c['f1']:6.2f} {c['support']:6d}")
    return 0


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="F", help="one text a line")
    parser.add_argument("--output", metavar="F", help="one label a line (default: stdout)")


def _texts(path: str) -> tuple[list[str], list[int]]:
    lines = read_lines(path)
    return lines.texts, [i for i, t in enumerate(lines.texts) if t]


def predict(args: argparse.Namespace) -> int:
    """One label a line, aligned with the input's lines (blank lines stay blank)."""
    model, config, words, labels = load(args.run_dir)
    texts, kept = _texts(args.input)
    guess = predict_ids(model, encode_texts([texts[i] for i in kept], words,
                                            config["data"].get("lower")))
    out = [""] * len(texts)
    for i, y in zip(kept, guess):
        out[i] = labels.itos[y]
    text = "".join(line + "\n" for line in out)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def add_encode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="F", help="one text a line")
    parser.add_argument("--output", required=True, metavar="F.npy",
                        help="(N, D) float32 array, row i for line i (zeros for blank lines)")


def encode(args: argparse.Namespace) -> int:
    model, config, words, _ = load(args.run_dir)
    texts, kept = _texts(args.input)
    vecs = encode_ids(model, encode_texts([texts[i] for i in kept], words,
                                          config["data"].get("lower")))
    out = np.zeros((len(texts), vecs.shape[1]), dtype=np.float32)
    out[kept] = vecs
    np.save(args.output, out, allow_pickle=False)
    print(f"{args.output}: {out.shape[0]} x {out.shape[1]} float32", file=sys.stderr)
    return 0


# -- export (ONNX / TorchScript; see rnnkit.export) --------------------------------------------
def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from rnnkit.export import add_export_arguments as add
    add(parser)


def export(args: argparse.Namespace) -> int:
    """``rnnkit export DIR --onnx F.onnx`` / ``--torchscript F.pt``."""
    from rnnkit.export import export_command
    return export_command(args, load(args.run_dir)[0], TASK)
