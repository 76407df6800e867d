"""Language models: ``rnnkit train lm``, ``rnnkit evaluate DIR``, ``rnnkit generate DIR``.

``rnnkit train lm`` with no data trains a character-level LSTM on the bundled tiny Shakespeare
(first 90% to train, last 10% to validate) for about five minutes and prints a sample.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import torch

from rnnkit.cells import CELL_NAMES
from rnnkit.data.text import LEVELS, build_vocab, decode, encode, read_text
from rnnkit.data.vocab import Vocabulary
from rnnkit.errors import CheckpointError, DataError, RnnkitError
from rnnkit.models.lm import LanguageModel, LMConfig
from rnnkit.training.checkpoint import RunDir
from rnnkit.training.lm import LMTask, evaluate_lm
from rnnkit.training.loop import TrainConfig, Trainer
from rnnkit.training.options import add_common_train_arguments, open_run, train_config

BUNDLED = "tinyshakespeare (bundled)"

# the default run: a character-level LSTM on tiny Shakespeare in about 5 minutes on 2 cores
DEFAULT_TRAIN = TrainConfig(epochs=100, max_minutes=4.8, lr=4e-3, schedule="cosine",
                            warmup=30, min_lr_ratio=0.05, clip=1.0, eval_every=0,
                            log_every=10)
DEFAULTS = dict(level="char", cell="lstm", layers=2, hidden=384, embedding=64, dropout=0.1,
                embedding_dropout=0.0, output_dropout=0.1, batch_size=32, bptt=64)


def bundled_shakespeare() -> str:
    """The bundled tiny Shakespeare (1,115,394 characters, public domain)."""
    return (resources.files("rnnkit") / "resources" / "tinyshakespeare.txt").read_text(
        encoding="utf-8")


def _one_line(fn):
    """Bad option values (ValueError, TypeError) become one-line RnnkitErrors."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (ValueError, TypeError) as err:
            if isinstance(err, RnnkitError):
                raise
            raise RnnkitError(str(err)) from None

    wrapper.__doc__, wrapper.__name__ = fn.__doc__, fn.__name__
    return wrapper


# -- rnnkit train lm ------------------------------------------------------------------------
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rnnkit train lm``."""
    d = parser.add_argument_group("data")
    d.add_argument("--train", metavar="FILE",
                   help="UTF-8 training text (default: the bundled tiny Shakespeare)")
    d.add_argument("--valid", metavar="FILE",
                   help="validation text (default: the last --valid-fraction of --train)")
    d.add_argument("--valid-fraction", type=float, default=0.1,
                   help="share of --train held out when there is no --valid (default 0.1)")
    d.add_argument("--level", choices=LEVELS, default=None,
                   help="tokens: characters (default) or whitespace-separated words "
                        "with <eos> at each line end")
    d.add_argument("--max-vocab", type=int, default=None, help="keep the N most frequent")
    d.add_argument("--min-freq", type=int, default=1, help="drop rarer tokens (to <unk>)")
    d.add_argument("--bptt", type=int, default=None,
                   help=f"truncated-BPTT window (default {DEFAULTS['bptt']})")
    d.add_argument("--variable-bptt", action="store_true",
                   help="randomised window lengths (AWD-LSTM)")
    m = parser.add_argument_group("model")
    m.add_argument("--cell", choices=CELL_NAMES, default=None, help="recurrent cell (default lstm)")
    m.add_argument("--layers", type=int, default=None, help="recurrent layers (default 2)")
    m.add_argument("--hidden", type=int, default=None, help="hidden units per layer")
    m.add_argument("--embedding", type=int, default=None,
                   help="embedding size (default 64 for characters, --hidden for words)")
    m.add_argument("--engine", choices=("auto", "bptt", "native", "reference"), default="auto")
    m.add_argument("--connection", choices=("none", "residual", "dense", "highway"),
                   default="none", help="skip connections between layers")
    m.add_argument("--dropout", type=float, default=None, help="between layers")
    m.add_argument("--embedding-dropout", type=float, default=None)
    m.add_argument("--output-dropout", type=float, default=None, help="before the decoder")
    m.add_argument("--variational", action="store_true",
                   help="one dropout mask per sequence between layers")
    m.add_argument("--dropconnect", type=float, default=0.0,
                   help="DropConnect on recurrent weights")
    m.add_argument("--layer-norm", action="store_true", help="layer-normalised cells")
    m.add_argument("--tie-weights", action="store_true",
                   help="share embedding and decoder weights")
    m.add_argument("--adaptive", metavar="CUTOFFS",
                   help="adaptive softmax with these cutoffs, e.g. 2000,10000")
    s = parser.add_argument_group("sample after training")
    s.add_argument("--sample-length", type=int, default=None,
                   help="tokens to print at the end (default 500 chars / 100 words; 0: none)")
    s.add_argument("--temperature", type=float, default=0.8)
    add_common_train_arguments(parser, default_out="runs/lm-{time}")


def _pick(value: object, default: object) -> object:
    return default if value is None else value


def _model_config(args: argparse.Namespace, vocab_size: int, level: str) -> LMConfig:
    """The model options; the embedding defaults to 64 for characters and to the hidden
    size for words."""
    cutoffs = None
    if args.adaptive:
        try:
            cutoffs = [int(c) for c in args.adaptive.split(",")]
        except ValueError:
            raise RnnkitError(f"--adaptive: expected comma-separated integers, got "
                              f"{args.adaptive!r}") from None
        if sorted(cutoffs) != cutoffs or cutoffs[-1] >= vocab_size or cutoffs[0] < 1:
            raise RnnkitError(f"--adaptive: cutoffs must increase and lie in [1, {vocab_size})"
                              f" (the vocabulary size), got {cutoffs}")
    options = {"layer_norm": True} if args.layer_norm else {}
    hidden = _pick(args.hidden, DEFAULTS["hidden"])
    embedding = _pick(args.embedding, DEFAULTS["embedding"] if level == "char" else hidden)
    return LMConfig(vocab_size=vocab_size, embedding_size=embedding, hidden_size=hidden,
                    num_layers=_pick(args.layers, DEFAULTS["layers"]),
                    cell=_pick(args.cell, DEFAULTS["cell"]), engine=args.engine,
                    connection=args.connection,
                    dropout=_pick(args.dropout, DEFAULTS["dropout"]),
                    embedding_dropout=_pick(args.embedding_dropout,
                                            DEFAULTS["embedding_dropout"]),
                    output_dropout=_pick(args.output_dropout, DEFAULTS["output_dropout"]),
                    variational=args.variational, dropconnect=args.dropconnect,
                    cell_options=options, tie_weights=args.tie_weights,
                    adaptive_cutoffs=cutoffs)


def _split(text: str, fraction: float, source: str) -> tuple[str, str]:
    if not 0 < fraction < 1:
        raise RnnkitError(f"--valid-fraction must lie in (0, 1), got {fraction}")
    cut = int(len(text) * (1 - fraction))
    train, valid = text[:cut], text[cut:]
    if not train.strip() or not valid.strip():
        raise DataError(f"too short to hold out {fraction:.0%} for validation; give --valid",
                        source)
    return train, valid


def _load_texts(data: dict) -> tuple[str, str | None]:
    if data["train"] == BUNDLED:
        text, source = bundled_shakespeare(), BUNDLED
    else:
        text, source = read_text(data["train"]), data["train"]
    if data.get("valid"):
        return text, read_text(data["valid"])
    return _split(text, data["valid_fraction"], source)


@_one_line
def train(args: argparse.Namespace) -> int:
    """``rnnkit train lm``: train, checkpoint into ``--out``, print the metrics and a sample."""
    run, saved = open_run(args, "lm")
    return _train(args, run, saved)


def _train(args: argparse.Namespace, run: RunDir, saved: dict | None) -> int:
    if saved is None:
        data = {"train": args.train or BUNDLED, "valid": args.valid,
                "valid_fraction": args.valid_fraction,
                "level": _pick(args.level, DEFAULTS["level"]),
                "batch_size": _pick(args.batch_size, DEFAULTS["batch_size"]),
                "bptt": _pick(args.bptt, DEFAULTS["bptt"]),
                "variable_bptt": args.variable_bptt}
        if data["train"] != BUNDLED:
            data["train"] = str(Path(data["train"]).resolve())
        if data["valid"]:
            data["valid"] = str(Path(data["valid"]).resolve())
        train_text, valid_text = _load_texts(data)
        vocab = build_vocab(train_text, data["level"], max_size=args.max_vocab,
                            min_freq=args.min_freq)
        model_config = _model_config(args, len(vocab), data["level"])
        defaults = DEFAULT_TRAIN if args.train is None else TrainConfig(
            epochs=10, lr=2e-3, schedule="cosine", warmup=50, min_lr_ratio=0.05, clip=1.0)
        config = train_config(args, None, defaults)
        run.save_vocab(vocab)
    else:
        data = saved["data"]
        train_text, valid_text = _load_texts(data)
        vocab = run.load_vocab()
        model_config = LMConfig.from_dict(saved["model"])
        config = train_config(args, saved.get("train"), DEFAULT_TRAIN)
    torch.manual_seed(config.seed)
    model = LanguageModel(model_config)
    run.write_config({"task": "lm", "model": model_config.to_dict(), "data": data,
                      "train": asdict(config)})
    level = data["level"]
    start = start_id(vocab, level)
    train_ids = encode(train_text, vocab, level)
    valid_ids = encode(valid_text, vocab, level) if valid_text else None
    task = LMTask(train_ids, valid_ids, batch_size=data["batch_size"], bptt=data["bptt"],
                  variable_bptt=data["variable_bptt"], start_id=start, level=level,
                  eval_batch_size=32)
    print(f"rnnkit train lm: {data['train']}, {level} level, {len(train_ids):,} training and "
          f"{0 if valid_ids is None else len(valid_ids):,} validation tokens, vocabulary "
          f"{len(vocab):,} (log V = {math.log(len(vocab)):.3f} nats)")
    print(f"model: {model_config.num_layers} x {model_config.hidden_size} "
          f"{model_config.cell}, {model.num_parameters():,} parameters; "
          f"{'resuming' if saved else 'writing'} {run.path}", flush=True)
    result = Trainer(model, task, run, config, resume=saved is not None).fit()
    m = result.metrics
    where = f"{result.steps} steps, {result.seconds / 60:.1f} min, stopped by {result.stopped_by}"
    if m:
        extra = f", {m['bits_per_char']:.3f} bits/char" if "bits_per_char" in m else ""
        print(f"validation: loss {m['loss']:.4f} nats/token, perplexity "
              f"{m['perplexity']:.2f}{extra} (best {result.best:.4f}; {where})")
    else:
        print(f"done: {where}; last training loss {result.losses[-1]:.4f}"
              if result.losses else f"done: {where}")
    print(f"saved {run.path}/model.safetensors (best), {run.path}/last/ (resume with --resume)")
    length = _pick(args.sample_length, 500 if level == "char" else 100)
    if length:
        run.load_weights(model)
        ids = model.generate([start], length, temperature=args.temperature, seed=config.seed)
        print("sample:\n" + decode(ids, vocab, level))
    return 0


# -- loading a run ----------------------------------------------------------------------------
def load_lm(run_dir: str | Path, device: str = "cpu"
            ) -> tuple[LanguageModel, Vocabulary, dict]:
    """The model (best weights, eval mode), vocabulary and config of a language-model run.

    :class:`CheckpointError` when the directory is missing a file, a file is corrupt, the run
    is of another task, or the vocabulary does not match the weights."""
    run = RunDir(run_dir)
    config = run.read_config(task="lm")
    try:
        model_config = LMConfig.from_dict(config["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{run.path / 'config.json'}: invalid model section ({err})"
                              ) from None
    vocab = run.load_vocab()
    if len(vocab) != model_config.vocab_size:
        raise CheckpointError(f"{run.path / 'vocab.json'}: {len(vocab)} tokens, but the model "
                              f"was built for {model_config.vocab_size}: the vocabulary does "
                              f"not match the weights")
    try:
        model = LanguageModel(model_config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{run.path / 'config.json'}: invalid model ({err})") from None
    run.load_weights(model)
    return model.to(device).eval(), vocab, config


def _level(config: dict) -> str:
    return config.get("data", {}).get("level", "char")


# -- rnnkit evaluate DIR --------------------------------------------------------------------
def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rnnkit evaluate DIR`` for a language model."""
    parser.add_argument("--data", metavar="FILE", required=True, help="UTF-8 text to score")
    parser.add_argument("--json", action="store_true", help="one JSON line")
    parser.add_argument("--batch-size", type=int, default=10, help="parallel streams")
    parser.add_argument("--bptt", type=int, default=200, help="window length")
    parser.add_argument("--device", default="cpu")


@_one_line
def evaluate(args: argparse.Namespace) -> int:
    """Print loss (nats/token), perplexity, tokens and, for characters, bits per character."""
    model, vocab, config = load_lm(args.run_dir, args.device)
    level = _level(config)
    ids = encode(read_text(args.data), vocab, level, source=args.data)
    start = start_id(vocab, level)
    metrics = evaluate_lm(model, ids, batch_size=args.batch_size, bptt=args.bptt,
                          start_id=start, level=level)
    if args.json:
        print(json.dumps(metrics))
    else:
        line = (f"{args.data}: loss {metrics['loss']:.4f} nats/token, perplexity "
                f"{metrics['perplexity']:.3f}, {metrics['tokens']:,} tokens")
        if "bits_per_char" in metrics:
            line += f", {metrics['bits_per_char']:.4f} bits/char"
        print(line)
    return 0


# -- rnnkit generate DIR --------------------------------------------------------------------
def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rnnkit generate DIR``."""
    parser.add_argument("--prompt", default="", help="text to continue (default: none)")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--greedy", action="store_true", help="most probable token each step")
    parser.add_argument("--device", default="cpu")


def start_id(vocab: Vocabulary, level: str) -> int:
    """The token before a text: a newline for characters (when the vocabulary has one), else
    ``<eos>`` (the end of a previous line)."""
    if level == "char" and "\n" in vocab:
        return vocab.stoi["\n"]
    return vocab.eos_id if vocab.eos_id is not None else 0


def prompt_ids(prompt: str, vocab: Vocabulary, level: str) -> list[int]:
    """The prompt's ids after the start token (:func:`start_id`); a :class:`DataError` names
    a character outside a character vocabulary."""
    ids = [start_id(vocab, level)]
    if prompt:
        try:
            ids += encode(prompt, vocab, level, strict=level == "char").tolist()
        except DataError as err:
            raise DataError(f"--prompt: {err}") from None
    return ids


@_one_line
def generate(args: argparse.Namespace) -> int:
    """Print the prompt and its continuation."""
    model, vocab, config = load_lm(args.run_dir, args.device)
    level = _level(config)
    ids = prompt_ids(args.prompt, vocab, level)
    new = model.generate(ids, args.max_new_tokens, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, seed=args.seed, greedy=args.greedy)
    text = decode(new, vocab, level)
    sep = "" if level == "char" or not args.prompt else " "
    sys.stdout.write(args.prompt + sep + text + ("\n" if not text.endswith("\n") else ""))
    return 0


__all__ = ["BUNDLED", "add_evaluate_arguments", "add_generate_arguments",
           "add_train_arguments", "bundled_shakespeare", "evaluate", "generate", "load_lm",
           "prompt_ids", "start_id", "train"]


# -- export (ONNX / TorchScript; see rnnkit.export) --------------------------------------------
def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from rnnkit.export import add_export_arguments as add
    add(parser)


def export(args: argparse.Namespace) -> int:
    """``rnnkit export DIR --onnx F.onnx`` / ``--torchscript F.pt``."""
    from rnnkit.export import export_command
    return export_command(args, load_lm(args.run_dir)[0], "lm")
