"""train a sequence tagger (POS tags, named entities) on CoNLL-U or CoNLL files

    rnnkit train tagger --train en_ewt-ud-train.conllu --dev en_ewt-ud-dev.conllu --column upos
    rnnkit train tagger --train wnut17train.conll --dev emerging.dev.conll --crf
    rnnkit evaluate DIR --data F [--json]
    rnnkit predict DIR --input F [--output F]

The run directory holds ``config.json`` (model, data and training options), ``vocab.json``
(words), ``chars.json``, ``tags.json`` and the weights. Evaluation reports token accuracy and,
for entity tags (IOB1, BIO, BIOES), entity-level precision, recall and F1 (conlleval).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from rnnkit.data.conll import TaggedCorpus, guess_format, read_tagged, write_tagged
from rnnkit.data.padding import length_batches, pad_ids, word_characters
from rnnkit.data.schemes import SCHEMES, check_scheme, convert_tags
from rnnkit.data.tsv import parse_column, read_lines, tokenize
from rnnkit.data.vocab import PAD, UNK, Vocabulary
from rnnkit.errors import DataError
from rnnkit.metrics.tagging import span_f1, token_accuracy
from rnnkit.models.tagger import CHAR_KINDS, Tagger, TaggerBatch, TaggerConfig
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

TASK = "tagger"
# no early stopping by default: entity F1 stays 0 for the first epochs of an NER model
DEFAULTS = TrainConfig(epochs=20, lr=2e-3, clip=5.0, patience=0)
BATCH_SIZE = 32


def add_data_arguments(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    """``--format --column --token-column`` (shared by train, evaluate and predict)."""
    parser.add_argument("--format", choices=["conllu", "conll"],
                        help="file format (default: conllu for *.conllu, else conll"
                        + ("" if defaults else "; default: the run's") + ")")
    parser.add_argument("--column", type=parse_column, metavar="upos|xpos|INDEX",
                        help="tag column (default: upos for CoNLL-U, the last column for CoNLL"
                        + ("" if defaults else "; default: the run's") + ")")
    parser.add_argument("--token-column", type=parse_column, metavar="INDEX",
                        help="token column (default: FORM for CoNLL-U, 0 for CoNLL)")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", required=True, metavar="F", help="training file")
    parser.add_argument("--dev", metavar="F", help="validation file (best model, early stop)")
    add_data_arguments(parser)
    parser.add_argument("--scheme", default="auto", choices=["auto", *SCHEMES, "iob2"],
                        help="entity tag scheme of the files (default: detect)")
    parser.add_argument("--tag-scheme", choices=["iob1", "bio", "bioes", "iob2"],
                        help="train on tags converted to this scheme (e.g. bioes); "
                        "predictions are converted back to the files' scheme")
    m = parser.add_argument_group("model")
    m.add_argument("--crf", action="store_true", help="CRF output layer instead of softmax")
    m.add_argument("--no-constraints", action="store_true",
                   help="no tag-scheme transition constraints in the CRF")
    m.add_argument("--char-encoder", choices=CHAR_KINDS, default="lstm",
                   help="character-level word representation (default lstm)")
    m.add_argument("--cell", default="lstm", help="recurrent cell (default lstm)")
    m.add_argument("--word-dim", type=int, default=100)
    m.add_argument("--char-dim", type=int, default=32)
    m.add_argument("--char-hidden", type=int, default=50)
    m.add_argument("--hidden-size", type=int, default=128, help="per direction")
    m.add_argument("--layers", type=int, default=1)
    m.add_argument("--dropout", type=float, default=0.33)
    m.add_argument("--word-dropout", type=float, default=0.05,
                   help="replace training words by <unk> with this probability")
    m.add_argument("--min-count", type=int, default=1, help="words seen fewer times -> <unk>")
    add_common_train_arguments(parser, default_out="runs/tagger-{time}")


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
    """Tag strings of every sentence of ``data`` (in its order)."""
    model.eval()
    device = next(model.parameters()).device
    out: list[list[str] | None] = [None] * len(data.lengths)
    for idx in length_batches(data.lengths, batch_size):
        for i, ids in zip(idx, model.decode(data.batch(idx, chars).to(device))):
            out[i] = tag_vocab.decode(ids)
    return out


def score(gold: Sequence[Sequence[str]], guess: Sequence[Sequence[str]], scheme: str
          ) -> dict[str, object]:
    """``accuracy``, and for entity schemes ``precision``, ``recall``, ``f1``, ``per_type``."""
    result: dict[str, object] = {"accuracy": token_accuracy(gold, guess)}
    if scheme != "none":
        spans = span_f1(gold, guess)
        result.update(precision=spans.precision, recall=spans.recall, f1=spans.f1,
                      per_type=spans.per_type)
    return result


def _read(path: str, data: dict, args: argparse.Namespace) -> TaggedCorpus:
    """Read ``path`` as the run's data (its format and columns unless ``args`` say otherwise),
    with entity tags converted to the run's scheme."""
    fmt = getattr(args, "format", None) or ("conllu" if str(path).endswith(".conllu")
                                            else data["format"])
    same = fmt == data["format"]
    column = args.column if args.column is not None else (data["column"] if same else None)
    token = (args.token_column if args.token_column is not None
             else (data["token_column"] if same else None))
    corpus = read_tagged(path, fmt, column=column, token_column=token)
    if "none" not in (corpus.scheme, data["scheme"]) and corpus.scheme != data["scheme"]:
        for s in corpus.sentences:
            if s.tags is not None:
                s.tags = convert_tags(s.tags, data["scheme"])
    return corpus


# -- train -------------------------------------------------------------------------------------
def train(args: argparse.Namespace) -> int:
    run, saved = open_run(args, task=TASK)
    config = train_config(args, saved_train_options(saved), DEFAULTS)
    fmt = args.format or guess_format(args.train)
    corpus = read_tagged(args.train, fmt, column=args.column, token_column=args.token_column,
                         scheme=args.scheme)
    print(f"train: {args.train}: {corpus.summary()}", file=sys.stderr)
    if any(s.tags is None for s in corpus.sentences):
        raise DataError("the training file has no tag column", args.train)
    input_scheme = corpus.scheme
    if args.tag_scheme is not None:
        if input_scheme == "none":
            raise DataError(f"--tag-scheme {args.tag_scheme}: the tags are not entity tags "
                            f"(IOB1, BIO or BIOES)", args.train)
        corpus.scheme = check_scheme(args.tag_scheme)
        for s in corpus.sentences:
            s.tags = convert_tags(s.tags, corpus.scheme)
    data = {"format": fmt, "column": args.column if args.column is not None else
            ("upos" if fmt == "conllu" else -1),
            "token_column": args.token_column if args.token_column is not None else
            ("form" if fmt == "conllu" else 0),
            "scheme": corpus.scheme, "input_scheme": input_scheme,
            "train": str(args.train), "dev": args.dev}
    if saved is not None:
        words, chars, tags = (run.load_vocab(), run.load_vocab("chars.json"),
                              run.load_vocab("tags.json"))
        model_config = TaggerConfig.from_dict(saved["model"])
    else:
        counts = Counter(w for s in corpus.sentences for w in s.tokens)
        words = Vocabulary.build(counts, min_freq=args.min_count, specials=(PAD, UNK))
        chars = Vocabulary.build(Counter(c for w in counts for c in w), specials=(PAD, UNK))
        tags = Vocabulary.build(Counter(t for s in corpus.sentences for t in s.tags),
                                specials=())
        model_config = TaggerConfig(
            num_words=len(words), num_tags=len(tags), num_chars=len(chars),
            word_dim=args.word_dim, char_dim=args.char_dim, char_hidden=args.char_hidden,
            char_encoder=args.char_encoder, cell=args.cell, hidden_size=args.hidden_size,
            num_layers=args.layers, dropout=args.dropout, word_dropout=args.word_dropout,
            crf=args.crf, constrained=not args.no_constraints, scheme=corpus.scheme,
            tags=list(tags.itos), unk_id=words.unk_id, pad_id=words.pad_id,
            char_pad_id=chars.pad_id)
        run.save_vocab(words)
        run.save_vocab(chars, "chars.json")
        run.save_vocab(tags, "tags.json")
    batch_size = args.batch_size or (saved or {}).get("batch_size") or BATCH_SIZE
    run.write_config({"task": TASK, "model": model_config.to_dict(), "data": data,
                      "batch_size": batch_size, "train": asdict(config)})
    dev = None
    if args.dev:
        dev_corpus = _read(args.dev, data, args)
        print(f"dev: {args.dev}: {dev_corpus.summary()}", file=sys.stderr)
        dev = Encoded([s.tokens for s in dev_corpus.sentences], words,
                      [s.tags for s in dev_corpus.sentences], tags)
    train_data = Encoded([s.tokens for s in corpus.sentences], words,
                         [s.tags for s in corpus.sentences], tags)
    torch.manual_seed(config.seed)
    model = Tagger(model_config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tagger: {n_params:,} parameters, {len(tags)} tags ({corpus.scheme}), "
          f"{'CRF' if args.crf else 'softmax'} output", file=sys.stderr)
    task = TaggingTask(train_data, dev, chars, tags, corpus.scheme, batch_size)
    result = Trainer(model, task, run, config, resume=args.resume).fit()
    best = f"best dev {task.monitor} {result.best:.4f}, " if result.best is not None else ""
    print(f"{result.steps} steps, {result.epochs} epochs ({result.stopped_by}), {best}"
          f"{result.seconds:.0f} s; run in {run.path}", file=sys.stderr)
    return 0


# -- commands on a run directory ---------------------------------------------------------------
def load(run_dir: str | Path) -> tuple[Tagger, dict, Vocabulary, Vocabulary, Vocabulary]:
    """``(model (eval mode, best weights), config, words, chars, tags)`` of a tagger run."""
    run = RunDir(run_dir)
    model, config = run.load_model(TASK, lambda m: Tagger(TaggerConfig.from_dict(m)))
    return (model, config, run.load_vocab(), run.load_vocab("chars.json"),
            run.load_vocab("tags.json"))


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="F", help="tagged file to score")
    add_data_arguments(parser, defaults=False)
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--batch-size", type=int, default=64)


def evaluate(args: argparse.Namespace) -> int:
    model, config, words, chars, tags = load(args.run_dir)
    corpus = _read(args.data, config["data"], args)
    if any(s.tags is None for s in corpus.sentences):
        raise DataError("the file has no tag column to evaluate against", args.data)
    data = Encoded([s.tokens for s in corpus.sentences], words,
                   [s.tags for s in corpus.sentences], tags)
    guess = predict_tags(model, data, chars, tags, args.batch_size)
    result = score(data.tags, guess, config["data"]["scheme"])
    result.update(sentences=len(corpus.sentences), tokens=corpus.num_tokens,
                  skipped=dict(corpus.skipped))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.data}: {corpus.summary()}")
    print(f"accuracy   {100 * result['accuracy']:6.2f}")
    if "f1" in result:
        print(f"precision  {100 * result['precision']:6.2f}\nrecall     "
              f"{100 * result['recall']:6.2f}\nf1         {100 * result['f1']:6.2f}")
        print(f"\n{'type':<20} {'P':>6} {'R':>6} {'F1':>6} {'gold':>6}")
        for kind, s in result["per_type"].items():
            print(f"{kind:<20} {100 * s['precision']:6.2f} {100 * s['recall']:6.2f} "
                  f"{100 * s['f1']:6.2f} {s['gold']:6d}")
    return 0


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="F",
                        help="CoNLL-U, CoNLL (tokens in a column) or text (one sentence a "
                        "line, tokens separated by spaces)")
    parser.add_argument("--output", metavar="F", help="output file (default: stdout)")
    parser.add_argument("--input-format", choices=["conllu", "conll", "text"],
                        help="default: conllu for *.conllu, text for *.txt, else the run's")
    parser.add_argument("--column", type=parse_column, metavar="upos|xpos|INDEX",
                        help="column to write the tags into (default: the run's)")
    parser.add_argument("--token-column", type=parse_column, metavar="INDEX")
    parser.add_argument("--batch-size", type=int, default=64)


def predict(args: argparse.Namespace) -> int:
    """Tags written back in the input's format: CoNLL(-U) with the tag column replaced (or
    added), or for text one line of space-separated tags per input line."""
    model, config, words, chars, tags = load(args.run_dir)
    data_cfg = config["data"]
    fmt = args.input_format or ("conllu" if args.input.endswith(".conllu") else
                                "text" if args.input.endswith(".txt") else data_cfg["format"])
    back = data_cfg.get("input_scheme", data_cfg["scheme"])
    if fmt == "text":
        lines = read_lines(args.input)
        sentences = [tokenize(t) for t in lines.texts]
        kept = [i for i, s in enumerate(sentences) if s]
        guess = predict_tags(model, Encoded([sentences[i] for i in kept], words), chars, tags,
                             args.batch_size)
        out = [""] * len(sentences)
        for i, g in zip(kept, guess):
            out[i] = " ".join(_convert(g, data_cfg["scheme"], back))
        text = "".join(line + "\n" for line in out)
    else:
        args.format = fmt
        corpus = _read(args.input, data_cfg, args)
        guess = predict_tags(model, Encoded([s.tokens for s in corpus.sentences], words),
                             chars, tags, args.batch_size)
        buf = io.StringIO()
        write_tagged(corpus, buf, [_convert(g, data_cfg["scheme"], back) for g in guess])
        text = buf.getvalue()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _convert(tags: list[str], scheme: str, target: str) -> list[str]:
    if scheme == target or "none" in (scheme, target):
        return tags
    return convert_tags(tags, target)


# -- export (ONNX / TorchScript; see rnnkit.export) --------------------------------------------
def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from rnnkit.export import add_export_arguments as add
    add(parser)


def export(args: argparse.Namespace) -> int:
    """``rnnkit export DIR --onnx F.onnx`` / ``--torchscript F.pt``."""
    from rnnkit.export import export_command
    return export_command(args, load(args.run_dir)[0], TASK)
