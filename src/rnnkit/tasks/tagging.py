"""The tagging task (POS tags, named entities): its data section, training, evaluation,
prediction and loading.

The run directory holds ``config.json`` (model, data and training options), ``vocab.json``
(words), ``chars.json``, ``tags.json`` and the weights. Evaluation reports token accuracy and,
for entity tags (IOB1, BIO, BIOES), entity-level precision, recall and F1 (conlleval).
"""

from __future__ import annotations

import io
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from rnnkit.data.conll import TaggedCorpus, guess_format, read_tagged, write_tagged
from rnnkit.data.padding import length_batches, pad_ids, word_characters
from rnnkit.data.schemes import check_scheme, convert_tags
from rnnkit.data.tsv import read_lines, tokenize
from rnnkit.data.vocab import PAD, UNK, Vocabulary
from rnnkit.errors import DataError, note, warn
from rnnkit.metrics.labels import check_labels
from rnnkit.metrics.tagging import span_f1, token_accuracy
from rnnkit.models.tagger import Tagger, TaggerBatch, TaggerConfig
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

TASK = "tagger"
#: longer sentences are tagged in pieces of this many tokens (memory stays bounded)
MAX_SENTENCE = 1000
# no early stopping by default: entity F1 stays 0 for the first epochs of an NER model
DEFAULT_TRAIN = TrainConfig(epochs=20, lr=2e-3, clip=5.0, patience=0)


@dataclass
class TaggerData:
    """The data section of a tagger run (``config.json``'s ``"data"``).

    Attributes:
        format: ``"conllu"`` or ``"conll"``.
        column: the tag column (``"upos"``, ``"xpos"`` or an index).
        token_column: the token column (``"form"`` or an index).
        scheme: the entity scheme trained on (``"none"`` for other tags).
        input_scheme: the scheme of the files (predictions are converted back to it).
        train, dev: the files.
        batch_size: sentences per batch.
    """

    format: str = "conllu"
    column: str | int = "upos"
    token_column: str | int = "form"
    scheme: str = "none"
    input_scheme: str = "none"
    train: str | None = None
    dev: str | None = None
    batch_size: int = 32


@dataclass
class TaggerOptions:
    """What ``rnnkit train tagger`` was given (None: the default, or the resumed run's)."""

    train: str
    dev: str | None = None
    format: str | None = None
    column: str | int | None = None
    token_column: str | int | None = None
    scheme: str = "auto"
    tag_scheme: str | None = None
    crf: bool = False
    no_constraints: bool = False
    char_encoder: str = "lstm"
    cell: str = "lstm"
    embedding_size: int = 100
    char_dim: int = 32
    char_hidden: int = 50
    hidden_size: int = 128
    num_layers: int = 1
    #: the qrnn's convolution window(s), ``--window`` (None: the cell's default)
    window: str | None = None
    dropout: float = 0.33
    word_dropout: float = 0.05
    min_freq: int = 1
    batch_size: int | None = None
    #: the options the command line set (``rnnkit.commands.common.options_from``)
    given: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        check_options(self)


# -- data --------------------------------------------------------------------------------------
class Encoded:
    """Sentences as word ids, their strings (for characters) and tag ids."""

    def __init__(self, sentences: Sequence[Sequence[str]], words: Vocabulary,
                 tags: Sequence[Sequence[str]] | None = None, tag_vocab: Vocabulary | None = None
                 ) -> None:
        self.tokens = [list(s) for s in sentences]
        self.word_ids = [[words.stoi.get(w, words.unk_id) for w in s] for s in self.tokens]
        self.tags = None if tags is None else [list(t) for t in tags]
        self.tag_ids = None
        if tags is not None and tag_vocab is not None:
            # tags unseen in training get id -1 for the loss (never used) and count as wrong
            self.tag_ids = [[tag_vocab.stoi.get(t, -1) for t in ts] for ts in tags]
        self.lengths = [len(s) for s in self.tokens]

    def pieces(self, max_len: int) -> tuple[Encoded, list[int]]:
        """The sentences cut into pieces of at most ``max_len`` tokens, and the sentence
        each piece comes from."""
        piece = Encoded.__new__(Encoded)
        owners = [i for i, n in enumerate(self.lengths) for _ in range(0, max(n, 1), max_len)]
        starts = [a for n in self.lengths for a in range(0, max(n, 1), max_len)]
        cut = [slice(a, a + max_len) for a in starts]
        piece.tokens = [self.tokens[i][c] for i, c in zip(owners, cut)]
        piece.word_ids = [self.word_ids[i][c] for i, c in zip(owners, cut)]
        piece.tags = None if self.tags is None else [self.tags[i][c] for i, c in zip(owners, cut)]
        piece.tag_ids = (None if self.tag_ids is None
                         else [self.tag_ids[i][c] for i, c in zip(owners, cut)])
        piece.lengths = [len(t) for t in piece.tokens]
        return piece, owners

    def batch(self, idx: Sequence[int], chars: Vocabulary) -> TaggerBatch:
        words, lengths = pad_ids([self.word_ids[i] for i in idx])
        c, cl, index = word_characters([self.tokens[i] for i in idx], chars.stoi,
                                       chars.unk_id, chars.pad_id)
        tags = None
        if self.tag_ids is not None:
            tags, _ = pad_ids([[max(t, 0) for t in self.tag_ids[i]] for i in idx])
        return TaggerBatch(words, lengths, c, cl, index, tags)


class TaggingTask(TrainingTask):
    """The tagger's side of the :class:`~rnnkit.training.Trainer`."""

    mode = "max"

    def __init__(self, train: Encoded, dev: Encoded | None, chars: Vocabulary,
                 tag_vocab: Vocabulary, scheme: str, batch_size: int) -> None:
        self.train, self.dev, self.chars, self.tag_vocab = train, dev, chars, tag_vocab
        self.scheme, self.batch_size = scheme, batch_size
        self.monitor = "f1" if scheme != "none" else "accuracy"

    def train_batches(self, epoch: int, generator: torch.Generator) -> Iterator[TaggerBatch]:
        for idx in length_batches(self.train.lengths, self.batch_size, generator):
            yield self.train.batch(idx, self.chars)

    def steps_per_epoch(self) -> int:
        return -(-len(self.train.lengths) // self.batch_size)

    def loss(self, model: nn.Module, batch: TaggerBatch, carry: object) -> StepOutput:
        device = next(model.parameters()).device
        return StepOutput(model.loss(batch.to(device)), int(batch.lengths.sum()))

    def evaluate(self, model: nn.Module) -> dict[str, float] | None:
        if self.dev is None:
            return None
        guess = predict_tags(model, self.dev, self.chars, self.tag_vocab, self.batch_size)
        return score(self.dev.tags, guess, self.scheme)


def predict_tags(model: Tagger, data: Encoded, chars: Vocabulary, tag_vocab: Vocabulary,
                 batch_size: int = 64) -> list[list[str]]:
    """Tag strings of every sentence of ``data`` (in its order). A sentence longer than
    :data:`MAX_SENTENCE` tokens (a whole file on one line) is tagged in pieces of that
    length, with a warning, so that memory stays bounded."""
    model.eval()
    device = next(model.parameters()).device
    owners = None
    if data.lengths and max(data.lengths) > MAX_SENTENCE:
        long = sum(n > MAX_SENTENCE for n in data.lengths)
        warn(f"{long} sentence(s) longer than {MAX_SENTENCE} tokens (the longest "
             f"{max(data.lengths):,}) are tagged in pieces of {MAX_SENTENCE} tokens")
        data, owners = data.pieces(MAX_SENTENCE)
    out: list[list[str]] = [[] for _ in data.lengths]
    with torch.no_grad():
        for idx in length_batches(data.lengths, batch_size):
            for i, ids in zip(idx, model.decode(data.batch(idx, chars).to(device))):
                out[i] = tag_vocab.decode(ids)
    if owners is None:
        return out
    joined: list[list[str]] = [[] for _ in range(owners[-1] + 1)]
    for owner, tags in zip(owners, out):
        joined[owner].extend(tags)
    return joined


def score(gold: Sequence[Sequence[str]], guess: Sequence[Sequence[str]], scheme: str
          ) -> dict[str, object]:
    """``accuracy``, and for entity schemes ``precision``, ``recall``, ``f1``, ``per_type``."""
    result: dict[str, object] = {"accuracy": token_accuracy(gold, guess)}
    if scheme != "none":
        spans = span_f1(gold, guess)
        result.update(precision=spans.precision, recall=spans.recall, f1=spans.f1,
                      per_type=spans.per_type)
    return result


def read_run_file(path: str, data: dict, fmt: str | None = None, column: object = None,
                  token_column: object = None) -> TaggedCorpus:
    """Read ``path`` as the run's data (its format and columns unless given), with entity
    tags converted to the run's scheme."""
    fmt = fmt or ("conllu" if str(path).endswith(".conllu") else data["format"])
    same = fmt == data["format"]
    column = column if column is not None else (data["column"] if same else None)
    token = token_column if token_column is not None else (
        data["token_column"] if same else None)
    corpus = read_tagged(path, fmt, column=column, token_column=token)
    if "none" not in (corpus.scheme, data["scheme"]) and corpus.scheme != data["scheme"]:
        for s in corpus.sentences:
            if s.tags is not None:
                s.tags = convert_tags(s.tags, data["scheme"])
    return corpus


def _refuse_changes(run: RunDir, opts: TaggerOptions, data: dict, saved: dict) -> None:
    """``--resume`` on other data (another file, format, column or tag scheme) or with a
    model option that differs from the run's: refused."""
    was_data, model = saved["data"], saved["model"]
    changes = {}
    for key in ("format", "column", "token_column", "scheme"):  # what the file turned out as
        changes[f"the file's {key.replace('_', ' ')}"] = (data[key], was_data.get(key),
                                                          data[key] == was_data.get(key))
    names = {"embedding_size": "word_dim", **{n: n for n in (
        "cell", "char_dim", "char_hidden", "char_encoder", "hidden_size", "num_layers",
        "dropout", "word_dropout", "crf")}}
    was = {n: model.get(m) for n, m in names.items()}
    was["window"] = window_option(model)
    was.update({k: was_data.get(k) for k in ("train", "dev", "batch_size")})
    changes.update(option_changes(opts, was, paths=("train", "dev"), required=("train",)))
    refuse_changed_options(run, changes)


# -- train -------------------------------------------------------------------------------------
def train(opts: TaggerOptions, request: RunRequest) -> int:
    """Train a tagger into the run directory of ``request``; progress and the result on
    stderr."""
    run, saved = open_run(request, task=TASK)
    config = train_config(request.train, saved_train_options(saved), DEFAULT_TRAIN)
    fmt = opts.format or guess_format(opts.train)
    corpus = read_tagged(opts.train, fmt, column=opts.column, token_column=opts.token_column,
                         scheme=opts.scheme)
    print(f"train: {opts.train}: {corpus.summary()}", file=sys.stderr)
    if not corpus.sentences:
        raise DataError("holds no sentence to train on", opts.train)
    if any(s.tags is None for s in corpus.sentences):
        raise DataError("the training file has no tag column", opts.train)
    input_scheme = corpus.scheme
    if opts.tag_scheme is not None:
        if input_scheme == "none":
            raise DataError(f"--tag-scheme {opts.tag_scheme}: the tags are not entity tags "
                            f"(IOB1, BIO or BIOES)", opts.train)
        corpus.scheme = check_scheme(opts.tag_scheme)
        for s in corpus.sentences:
            s.tags = convert_tags(s.tags, corpus.scheme)
    data = {"format": fmt, "column": opts.column if opts.column is not None else
            ("upos" if fmt == "conllu" else -1),
            "token_column": opts.token_column if opts.token_column is not None else
            ("form" if fmt == "conllu" else 0),
            "scheme": corpus.scheme, "input_scheme": input_scheme,
            "train": str(opts.train), "dev": opts.dev}
    if saved is not None:
        _refuse_changes(run, opts, data, saved)
        words, chars, tags = (run.load_vocab(), run.load_vocab("chars.json"),
                              run.load_vocab("tags.json"))
        model_config = TaggerConfig.from_dict(saved["model"])
    else:
        counts = Counter(w for s in corpus.sentences for w in s.tokens)
        words = Vocabulary.build(counts, min_freq=opts.min_freq, specials=(PAD, UNK))
        chars = Vocabulary.build(Counter(c for w in counts for c in w), specials=(PAD, UNK))
        tags = Vocabulary.build(Counter(t for s in corpus.sentences for t in s.tags),
                                specials=())
        options, layer_options = qrnn_windows(opts.window, opts.cell, opts.num_layers)
        model_config = TaggerConfig(
            num_words=len(words), num_tags=len(tags), num_chars=len(chars),
            word_dim=opts.embedding_size, char_dim=opts.char_dim, char_hidden=opts.char_hidden,
            char_encoder=opts.char_encoder, cell=opts.cell, hidden_size=opts.hidden_size,
            num_layers=opts.num_layers, dropout=opts.dropout, word_dropout=opts.word_dropout,
            crf=opts.crf, constrained=not opts.no_constraints, scheme=corpus.scheme,
            tags=list(tags.itos), cell_options=options, layer_cell_options=layer_options,
            unk_id=words.unk_id, pad_id=words.pad_id,
            char_pad_id=chars.pad_id)
        run.save_vocab(words)
        run.save_vocab(chars, "chars.json")
        run.save_vocab(tags, "tags.json")
    batch_size = (opts.batch_size or (saved or {}).get("data", {}).get("batch_size")
                  or TaggerData.batch_size)
    data = asdict(TaggerData(**data, batch_size=batch_size))
    run.write_config(RunConfig(TASK, model_config.to_dict(), data, asdict(config)))
    dev = None
    if opts.dev:
        dev_corpus = read_run_file(opts.dev, data, opts.format, opts.column,
                                   opts.token_column)
        print(f"dev: {opts.dev}: {dev_corpus.summary()}", file=sys.stderr)
        dev = Encoded([s.tokens for s in dev_corpus.sentences], words,
                      [s.tags for s in dev_corpus.sentences], tags)
    train_data = Encoded([s.tokens for s in corpus.sentences], words,
                         [s.tags for s in corpus.sentences], tags)
    torch.manual_seed(config.seed)
    model = Tagger(model_config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tagger: {n_params:,} parameters, {len(tags)} tags ({corpus.scheme}), "
          f"{'CRF' if opts.crf else 'softmax'} output", file=sys.stderr)
    task = TaggingTask(train_data, dev, chars, tags, corpus.scheme, batch_size)
    result = Trainer(model, task, run, config, resume=request.resume).fit()
    note(result.summary(task.monitor, run.path))
    return 0


# -- a trained run ------------------------------------------------------------------------
def load(run_dir: str | Path, device: str = "cpu"
         ) -> tuple[Tagger, dict, Vocabulary, Vocabulary, Vocabulary]:
    """``(model (eval mode, best weights, on ``device``), config, words, chars, tags)`` of a
    tagger run."""
    run = RunDir(run_dir)
    model, config = run.load_model(TASK, lambda m: Tagger(TaggerConfig.from_dict(m)))
    return (model.to(device), config, run.load_vocab(), run.load_vocab("chars.json"),
            run.load_vocab("tags.json"))


def evaluate_file(run_dir: str | Path, path: str, *, fmt: str | None = None,
                  column: object = None, token_column: object = None, batch_size: int = 64,
                  strict: bool = False, device: str = "cpu"
                  ) -> tuple[dict[str, object], TaggedCorpus]:
    """The metrics of a run on a tagged file (:func:`score` plus ``sentences``, ``tokens``,
    ``skipped``, ``unknown_tags``: the share of gold tags the model does not have) and the
    corpus read. A file with no sentence is a :class:`DataError`; tags mostly unknown to the
    model are a warning (with ``strict`` an error, :func:`~rnnkit.metrics.labels.check_labels`)."""
    model, config, words, chars, tags = load(run_dir, device)
    corpus = read_run_file(path, config["data"], fmt, column, token_column)
    if not corpus.sentences:
        raise DataError("holds no sentence to evaluate on", path)
    if any(s.tags is None for s in corpus.sentences):
        raise DataError("the file has no tag column to evaluate against", path)
    unknown = check_labels((t for s in corpus.sentences for t in s.tags), tags.stoi, path,
                           strict=strict)
    data = Encoded([s.tokens for s in corpus.sentences], words,
                   [s.tags for s in corpus.sentences], tags)
    guess = predict_tags(model, data, chars, tags, batch_size)
    result = score(data.tags, guess, config["data"]["scheme"])
    result.update(sentences=len(corpus.sentences), tokens=corpus.num_tokens,
                  skipped=dict(corpus.skipped), unknown_tags=unknown)
    return result, corpus


def predict_file(run_dir: str | Path, path: str, *, input_format: str | None = None,
                 column: object = None, token_column: object = None, batch_size: int = 64,
                 device: str = "cpu") -> str:
    """Tags written back in the input's format: CoNLL(-U) with the tag column replaced (or
    added), or for text one line of space-separated tags per input line."""
    model, config, words, chars, tags = load(run_dir, device)
    data_cfg = config["data"]
    fmt = input_format or ("conllu" if path.endswith(".conllu") else
                           "text" if path.endswith(".txt") else data_cfg["format"])
    back = data_cfg.get("input_scheme", data_cfg["scheme"])
    if fmt == "text":
        lines = read_lines(path)
        sentences = [tokenize(t) for t in lines.texts]
        kept = [i for i, s in enumerate(sentences) if s]
        guess = predict_tags(model, Encoded([sentences[i] for i in kept], words), chars, tags,
                             batch_size)
        out = [""] * len(sentences)
        for i, g in zip(kept, guess):
            out[i] = " ".join(_convert(g, data_cfg["scheme"], back))
        return "".join(line + "\n" for line in out)
    corpus = read_run_file(path, data_cfg, fmt, column, token_column)
    guess = predict_tags(model, Encoded([s.tokens for s in corpus.sentences], words),
                         chars, tags, batch_size)
    buf = io.StringIO()
    write_tagged(corpus, buf, [_convert(g, data_cfg["scheme"], back) for g in guess])
    return buf.getvalue()


def _convert(tags: list[str], scheme: str, target: str) -> list[str]:
    if scheme == target or "none" in (scheme, target):
        return tags
    return convert_tags(tags, target)
