"""The sentence-classification task (sentiment, topic): its data section, training,
evaluation, prediction, sentence encoding and loading.

TSV files: one example a line, text and label columns by name (``--text-column sentence``) or
index, header optional (see :func:`rnnkit.data.tsv.read_tsv`). Texts are split on white space.
The run directory holds ``config.json``, ``vocab.json`` (words), ``labels.json`` and weights.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit.data.padding import length_batches, pad_ids
from rnnkit.data.tsv import LabelledTexts, read_lines, read_tsv, tokenize
from rnnkit.data.vocab import PAD, UNK, Vocabulary
from rnnkit.errors import DataError, note
from rnnkit.metrics.classification import ClassificationScores, classification_scores
from rnnkit.metrics.labels import check_labels
from rnnkit.models.classifier import Classifier, EncoderConfig
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
from rnnkit.training.runconfig import RunConfig

TASK = "classifier"
#: the SST-2 benchmark's schedule (``benchmarks/classification_quality.py``): AdamW 3e-3 with
#: weight decay 0.01, halved whenever a dev evaluation (every 500 steps and each epoch) does not
#: improve, stopped after 6 such evaluations; a user who gives only the data and a time budget
#: trains what the benchmark measures
DEFAULT_TRAIN = TrainConfig(epochs=20, lr=3e-3, weight_decay=0.01, schedule="plateau",
                            lr_factor=0.5, patience=6, eval_every=500, clip=5.0)


@dataclass
class ClassifierData:
    """The data section of a classifier run (``config.json``'s ``"data"``).

    Attributes:
        text_column, label_column: the columns (name or index; None: detect).
        header: whether the first line names the columns (None: detect).
        lower: lowercase the texts.
        train, dev: the files.
        batch_size: texts per batch.
    """

    text_column: str | int | None = None
    label_column: str | int | None = None
    header: bool | None = None
    lower: bool = False
    train: str | None = None
    dev: str | None = None
    batch_size: int = 64


@dataclass
class ClassifierOptions:
    """What ``rnnkit train classifier`` was given (None: the default, or the resumed run's)."""

    train: str
    dev: str | None = None
    text_column: str | int | None = None
    label_column: str | int | None = None
    header: bool | None = None
    cell: str = "lstm"
    embedding_size: int = 128
    hidden_size: int = 128
    num_layers: int = 1
    #: the qrnn's convolution window(s), ``--window`` (None: the cell's default)
    window: str | None = None
    unidirectional: bool = False
    pooling: str = "max"
    dropout: float = 0.5
    #: words seen once become ``<unk>`` in training, so that ``<unk>`` (every unseen dev word)
    #: has a trained vector (SST-2 dev: 80.7% with 1, 84.6% with 2)
    min_freq: int = 2
    lower: bool = False
    batch_size: int | None = None
    #: the options the command line set (``rnnkit.commands.common.options_from``)
    given: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        check_options(self)


def read_examples(path: str, data: dict, text_column: object = None,
                  label_column: object = None, header: bool | None = None) -> LabelledTexts:
    """Read a TSV with the columns given, else those of ``data`` (the run's)."""
    text = text_column if text_column is not None else data.get("text_column")
    label = label_column if label_column is not None else data.get("label_column")
    header = header if header is not None else data.get("header")
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


def train(opts: ClassifierOptions, request: RunRequest) -> int:
    """Train a classifier into the run directory of ``request``; progress and the result on
    stderr."""
    run, saved = open_run(request, task=TASK)
    config = train_config(request.train, saved_train_options(saved), DEFAULT_TRAIN)
    data = {"text_column": opts.text_column, "label_column": opts.label_column,
            "header": opts.header, "lower": opts.lower, "train": opts.train, "dev": opts.dev}
    examples = read_examples(opts.train, data)
    print(f"train: {opts.train}: {len(examples)} examples", file=sys.stderr)
    if saved is not None:
        m, d = saved["model"], saved["data"]
        was = {"cell": m.get("cell"), "embedding_size": m.get("embed_dim"),
               "hidden_size": m.get("hidden_size"), "num_layers": m.get("num_layers"),
               "unidirectional": not m.get("bidirectional", True), "pooling": m.get("pooling"),
               "dropout": m.get("dropout"), "batch_size": d.get("batch_size"),
               "window": window_option(m),
               **{k: d.get(k) for k in ("train", "dev", "text_column", "label_column",
                                        "header", "lower")}}
        refuse_changed_options(run, option_changes(opts, was, ("train", "dev"), ("train",)))
        words, labels = run.load_vocab(), run.load_vocab("labels.json")
        model_config = EncoderConfig.from_dict(saved["model"])
        data["lower"] = saved["data"].get("lower", False)
    else:
        counts = Counter(w for t in examples.texts
                         for w in tokenize(t.lower() if opts.lower else t))
        words = Vocabulary.build(counts, min_freq=opts.min_freq, specials=(PAD, UNK))
        labels = Vocabulary.build(Counter(examples.labels), specials=())
        if len(labels) < 2:
            raise DataError(f"only one label ({labels.itos[0]!r}) in the training data",
                            opts.train)
        options, layer_options = qrnn_windows(opts.window, opts.cell, opts.num_layers)
        model_config = EncoderConfig(
            num_words=len(words), num_labels=len(labels), embed_dim=opts.embedding_size,
            cell=opts.cell, hidden_size=opts.hidden_size, num_layers=opts.num_layers,
            bidirectional=not opts.unidirectional, pooling=opts.pooling, dropout=opts.dropout,
            pad_id=words.pad_id, cell_options=options, layer_cell_options=layer_options)
        run.save_vocab(words)
        run.save_vocab(labels, "labels.json")
    batch_size = (opts.batch_size or (saved or {}).get("data", {}).get("batch_size")
                  or ClassifierData.batch_size)
    data = asdict(ClassifierData(**data, batch_size=batch_size))
    run.write_config(RunConfig(TASK, model_config.to_dict(), data, asdict(config)))
    dev = None
    if opts.dev:
        dev_ex = read_examples(opts.dev, data)
        print(f"dev: {opts.dev}: {len(dev_ex)} examples", file=sys.stderr)
        dev = (encode_texts(dev_ex.texts, words, data["lower"]), dev_ex.labels)
    ids = encode_texts(examples.texts, words, data["lower"])
    torch.manual_seed(config.seed)
    model = Classifier(model_config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"classifier: {n_params:,} parameters, {len(words)} words, {len(labels)} labels, "
          f"{model_config.pooling} pooling", file=sys.stderr)
    task = ClassificationTask(ids, [labels.stoi[y] for y in examples.labels], dev,
                              labels.itos, batch_size)
    result = Trainer(model, task, run, config, resume=request.resume).fit()
    note(result.summary(task.monitor, run.path))
    return 0


def load(run_dir: str | Path, device: str = "cpu"
         ) -> tuple[Classifier, dict, Vocabulary, Vocabulary]:
    """``(model (eval mode, best weights, on ``device``), config, words, labels)`` of a
    classifier run."""
    run = RunDir(run_dir)
    model, config = run.load_model(TASK, lambda m: Classifier(EncoderConfig.from_dict(m)))
    return model.to(device), config, run.load_vocab(), run.load_vocab("labels.json")


def _texts(path: str) -> tuple[list[str], list[int]]:
    lines = read_lines(path)
    return lines.texts, [i for i, t in enumerate(lines.texts) if t]


def evaluate_file(run_dir: str | Path, path: str, text_column: object = None,
                  label_column: object = None, header: bool | None = None,
                  strict: bool = False, device: str = "cpu"
                  ) -> tuple[ClassificationScores, int]:
    """The scores of a run on a labelled TSV file, and its number of examples. Labels mostly
    unknown to the model are a warning (with ``strict`` an error,
    :func:`~rnnkit.metrics.labels.check_labels`)."""
    model, config, words, labels = load(run_dir, device)
    ex = read_examples(path, config["data"], text_column, label_column, header)
    check_labels(ex.labels, labels.stoi, path, strict=strict)
    guess = predict_ids(model, encode_texts(ex.texts, words, config["data"].get("lower")))
    return classification_scores(ex.labels, [labels.itos[i] for i in guess]), len(ex)


def predict_file(run_dir: str | Path, path: str, device: str = "cpu") -> str:
    """One label a line, aligned with the input's lines (blank lines stay blank)."""
    model, config, words, labels = load(run_dir, device)
    texts, kept = _texts(path)
    guess = predict_ids(model, encode_texts([texts[i] for i in kept], words,
                                            config["data"].get("lower")))
    out = [""] * len(texts)
    for i, y in zip(kept, guess):
        out[i] = labels.itos[y]
    return "".join(line + "\n" for line in out)


def encode_file(run_dir: str | Path, path: str, device: str = "cpu") -> np.ndarray:
    """Sentence vectors (N, D) float32, row i for line i (zeros for blank lines)."""
    model, config, words, _ = load(run_dir, device)
    texts, kept = _texts(path)
    vecs = encode_ids(model, encode_texts([texts[i] for i in kept], words,
                                          config["data"].get("lower")))
    out = np.zeros((len(texts), vecs.shape[1]), dtype=np.float32)
    out[kept] = vecs
    return out
