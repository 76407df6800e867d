"""Train an encoder-decoder with attention on a parallel corpus (translation).

    rnnkit train seq2seq --src train.de --tgt train.en --valid-src val.de --valid-tgt val.en
    rnnkit translate DIR --input test.de [--beam 5] [--output out.en] [--plot-attention a.png]
    rnnkit evaluate DIR --src val.de --ref val.en [--beam 5] [--json]

The run directory holds, besides the usual ``config.json`` / ``model.safetensors`` / ``last/``,
the sentencepiece model(s): ``spm.model`` (joint) or ``spm.src.model`` and ``spm.tgt.model``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from rnnkit.cells import CELL_NAMES
from rnnkit.data.parallel import (
    Batch,
    SubwordVocab,
    batches,
    encode_pairs,
    filter_pairs,
    load_vocabs,
    make_batch,
    pad,
    prepare_sources,
    read_parallel,
    train_vocabs,
)
from rnnkit.errors import DataError, RnnkitError
from rnnkit.layers.attention import ATTENTIONS
from rnnkit.layers.stacking import CONNECTIONS
from rnnkit.models.seq2seq import Seq2Seq, Seq2SeqConfig, sequence_loss
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
from rnnkit.training.distributed import info as dist_info
from rnnkit.training.distributed import main_first
from rnnkit.training.options import saved_train_options

TASK = "seq2seq"


# -- training ---------------------------------------------------------------------------------
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    d = parser.add_argument_group("data")
    d.add_argument("--src", metavar="F", help="training source file (one sentence a line)")
    d.add_argument("--tgt", metavar="F", help="training target file, aligned with --src")
    d.add_argument("--tsv", metavar="F", help="training pairs as source<TAB>target lines "
                   "(instead of --src/--tgt)")
    d.add_argument("--valid-src", metavar="F", help="validation source file")
    d.add_argument("--valid-tgt", metavar="F", help="validation target file")
    d.add_argument("--valid-tsv", metavar="F", help="validation pairs as a TSV file")
    d.add_argument("--vocab-size", type=int, default=8000,
                   help="sentencepiece vocabulary size (each, when separate; default 8000)")
    d.add_argument("--separate-vocab", action="store_true",
                   help="one subword model per language (default: one joint model)")
    d.add_argument("--spm-type", choices=("unigram", "bpe"), default="unigram",
                   help="sentencepiece model type (default unigram)")
    d.add_argument("--max-src-len", type=int, default=100,
                   help="drop training pairs with longer sources, in subwords (default 100)")
    d.add_argument("--max-tgt-len", type=int, default=100,
                   help="drop training pairs with longer targets, in subwords (default 100)")
    d.add_argument("--max-tokens", type=int, default=3000,
                   help="padded tokens per batch (default 3000); --batch-size caps sentences")
    m = parser.add_argument_group("model")
    m.add_argument("--cell", choices=CELL_NAMES, default="lstm",
                   help="recurrent cell (default lstm)")
    m.add_argument("--embedding-size", type=int, default=256)
    m.add_argument("--encoder-hidden", type=int, default=256,
                   help="encoder hidden size per direction (default 256)")
    m.add_argument("--decoder-hidden", type=int, default=512)
    m.add_argument("--encoder-layers", type=int, default=2)
    m.add_argument("--decoder-layers", type=int, default=1)
    m.add_argument("--unidirectional", action="store_true",
                   help="a forward-only encoder (default bidirectional)")
    m.add_argument("--attention", choices=ATTENTIONS, default="general")
    m.add_argument("--no-input-feeding", action="store_true")
    m.add_argument("--no-tie", action="store_true",
                   help="do not tie the decoder's input and output embeddings")
    m.add_argument("--bridge", choices=("linear", "none"), default="linear")
    m.add_argument("--connection", choices=CONNECTIONS, default="none")
    m.add_argument("--dropout", type=float, default=0.3)
    m.add_argument("--engine", default="auto")
    t = parser.add_argument_group("seq2seq training")
    t.add_argument("--sampling-rate", type=float, default=0.0,
                   help="scheduled sampling: feed the model's own prediction with this "
                        "probability (default 0: teacher forcing)")
    t.add_argument("--label-smoothing", type=float, default=0.1)
    t.add_argument("--valid-beam", type=int, default=1,
                   help="beam for the validation BLEU computed at each evaluation "
                        "(default 1: greedy; 0: no BLEU, select on validation loss)")
    add_common_train_arguments(parser, default_out="runs/seq2seq-{time}")


def _pairs(src: str | None, tgt: str | None, tsv: str | None, what: str
           ) -> list[tuple[str, str]] | None:
    if tsv:
        if src or tgt:
            raise RnnkitError(f"give either --{what}tsv or --{what}src and --{what}tgt")
        return read_parallel(tsv)
    if bool(src) != bool(tgt):
        raise RnnkitError(f"--{what}src and --{what}tgt go together")
    return read_parallel(src, tgt) if src else None


class TranslationTask(TrainingTask):
    """Teacher-forced cross-entropy on token batches; validation loss and BLEU."""

    def __init__(self, train: list, valid: list | None, valid_text: list | None,
                 tgt_vocab: SubwordVocab, args: argparse.Namespace) -> None:
        self.train, self.valid, self.valid_text = train, valid, valid_text
        self.tgt_vocab = tgt_vocab
        self.max_tokens, self.max_sentences = args.max_tokens, args.batch_size
        self.sampling_rate, self.smoothing = args.sampling_rate, args.label_smoothing
        self.valid_beam = args.valid_beam
        if valid_text is not None and self.valid_beam > 0:
            self.monitor, self.mode = "bleu", "max"
        self._steps = sum(1 for _ in batches(train, self.max_tokens, False,
                                             max_sentences=self.max_sentences))

    def steps_per_epoch(self) -> int:
        return self._steps

    def train_batches(self, epoch: int, generator: torch.Generator) -> Iterable[Batch]:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return batches(self.train, self.max_tokens, True, seed, self.max_sentences)

    def loss(self, model: nn.Module, batch: Batch, carry: object) -> StepOutput:
        b = batch.to(next(model.parameters()).device)
        out = model(b.src, b.src_lengths, b.tgt_in, sampling_rate=self.sampling_rate)
        loss = sequence_loss(out.logits, b.tgt_out, model.config.pad_id, self.smoothing)
        return StepOutput(loss, int((b.tgt_out != model.config.pad_id).sum()))

    def evaluate(self, model: nn.Module) -> dict[str, float] | None:
        if not self.valid:
            return None
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for batch in batches(self.valid, self.max_tokens, False):
            b = batch.to(device)
            logits = model(b.src, b.src_lengths, b.tgt_in).logits
            n = int((b.tgt_out != model.config.pad_id).sum())
            total += float(sequence_loss(logits, b.tgt_out, model.config.pad_id)) * n
            count += n
        metrics = {"loss": total / max(count, 1), "ppl": math.exp(min(total / max(count, 1),
                                                                      50))}
        if self.monitor == "bleu":
            from rnnkit.metrics.translation import translation_scores
            srcs, refs = self.valid_text
            hyps = translate_ids(model, srcs, self.tgt_vocab, beam=self.valid_beam)
            scores = translation_scores(hyps, refs)
            metrics.update(bleu=scores.bleu, chrf=scores.chrf)
        return metrics


def train(args: argparse.Namespace) -> int:
    run, saved = open_run(args, TASK)
    train_pairs = _pairs(args.src, args.tgt, args.tsv, "")
    if train_pairs is None:
        raise RnnkitError("rnnkit train seq2seq needs --src and --tgt (or --tsv)")
    valid_pairs = _pairs(args.valid_src, args.valid_tgt, args.valid_tsv, "valid-")
    if saved is None:
        with main_first():  # rank 0 trains the subword models, the other ranks read them
            if dist_info().is_main:
                train_vocabs(train_pairs, run.path, args.vocab_size,
                             joint=not args.separate_vocab, model_type=args.spm_type)
            src_vocab, tgt_vocab = load_vocabs(run.path)
        model_cfg = Seq2SeqConfig(
            len(src_vocab), len(tgt_vocab), cell=args.cell, embedding_size=args.embedding_size,
            encoder_hidden_size=args.encoder_hidden, decoder_hidden_size=args.decoder_hidden,
            encoder_layers=args.encoder_layers, decoder_layers=args.decoder_layers,
            bidirectional=not args.unidirectional, attention=args.attention,
            input_feeding=not args.no_input_feeding, tie_embeddings=not args.no_tie,
            bridge=args.bridge, dropout=args.dropout, connection=args.connection,
            engine=args.engine)
        data_cfg = {"max_src_len": args.max_src_len, "max_tgt_len": args.max_tgt_len,
                    "joint_vocab": not args.separate_vocab, "vocab_size": args.vocab_size}
    else:
        src_vocab, tgt_vocab = load_vocabs(run.path)
        model_cfg = Seq2SeqConfig.from_dict(saved["model"])
        data_cfg = saved["data"]
    train_ids, report = filter_pairs(encode_pairs(train_pairs, src_vocab, tgt_vocab),
                                     data_cfg["max_src_len"], data_cfg["max_tgt_len"])
    print(f"rnnkit: training data: {report}", file=sys.stderr)
    if not train_ids:
        raise DataError("every training pair was dropped (empty or too long); "
                        "raise --max-src-len / --max-tgt-len")
    valid_ids = valid_text = None
    if valid_pairs:
        valid_ids, vrep = filter_pairs(encode_pairs(valid_pairs, src_vocab, tgt_vocab),
                                       10**9, 10**9)
        if vrep.dropped:
            print(f"rnnkit: validation data: {vrep}", file=sys.stderr)
        kept = [(s, t) for s, t in valid_pairs if s and t]
        valid_text = ([src_vocab.encode(s)[:data_cfg["max_src_len"]] for s, _ in kept],
                      [t for _, t in kept])
    config = train_config(args, saved_train_options(saved),
                          TrainConfig(epochs=20, lr=1e-3, clip=1.0, patience=5))
    run.write_config({"task": TASK, "model": model_cfg.to_dict(), "data": data_cfg,
                      "train": asdict(config),
                      "decode": {"beam": 5, "max_len_ratio": 1.5, "max_len_offset": 10,
                                 "length_penalty": 1.0}})
    torch.manual_seed(config.seed)
    model = Seq2Seq(model_cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"rnnkit: seq2seq with {n_params:,} parameters, vocabularies {len(src_vocab)} / "
          f"{len(tgt_vocab)}", file=sys.stderr)
    task = TranslationTask(train_ids, valid_ids, valid_text, tgt_vocab, args)
    result = Trainer(model, task, run, config, resume=args.resume).fit()
    print(f"rnnkit: {result.steps} steps, {result.epochs} epochs, stopped by "
          f"{result.stopped_by}; best validation {task.monitor} {result.best}; "
          f"run in {run.path}", file=sys.stderr)
    return 0


# -- loading and translating ------------------------------------------------------------------
def load_run(run_dir: str | Path) -> tuple[Seq2Seq, SubwordVocab, SubwordVocab, dict]:
    """The trained model (best weights, eval mode), its vocabularies and its config."""
    run = RunDir(run_dir)
    model, config = run.load_model(TASK, lambda m: Seq2Seq(Seq2SeqConfig.from_dict(m)))
    src_vocab, tgt_vocab = load_vocabs(run.path)
    return model, src_vocab, tgt_vocab, config


@torch.no_grad()
def translate_ids(model: Seq2Seq, sources: Sequence[list[int]], tgt_vocab: SubwordVocab,
                  beam: int = 5, batch_size: int = 64, max_len_ratio: float = 1.5,
                  max_len_offset: int = 10, length_penalty: float = 1.0) -> list[str]:
    """Detokenised translations of source id lists, in order; ``[]`` gives ``""``. Sentences
    are decoded in batches of similar length."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [""] * len(sources)
    order = sorted((i for i, s in enumerate(sources) if s), key=lambda i: len(sources[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        src = pad([sources[i] for i in idx]).to(device)
        lengths = torch.tensor([len(sources[i]) for i in idx], device=device)
        hyps = model.translate(src, lengths, beam_size=beam, max_len_ratio=max_len_ratio,
                               max_len_offset=max_len_offset, length_penalty=length_penalty)
        for i, h in zip(idx, hyps):
            out[i] = tgt_vocab.decode(h)
    model.train(was)
    return out


def _read_input(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("no such file", path) from None
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text ({err.reason})", path) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _decode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beam", type=int, default=None,
                        help="beam size (1: greedy; default: the run's, 5)")
    parser.add_argument("--length-penalty", type=float, default=None,
                        help="rank hypotheses by log-prob / length**X (default 1.0)")
    parser.add_argument("--max-len-ratio", type=float, default=None,
                        help="at most ceil(X * source length) + 10 subwords (default 1.5)")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per batch")
    parser.add_argument("--on-long", choices=("truncate", "error"), default="truncate",
                        help="a source longer than the run's maximum: truncate it with a "
                             "warning (default) or stop with an error")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _decode_options(args: argparse.Namespace, config: dict) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    d = config.get("decode", {})
    beam = args.beam if args.beam is not None else d.get("beam", 5)
    if beam < 1:
        raise RnnkitError(f"--beam must be at least 1, got {beam}")
    return {"beam": beam, "batch_size": args.batch_size,
            "max_len_ratio": args.max_len_ratio or d.get("max_len_ratio", 1.5),
            "max_len_offset": d.get("max_len_offset", 10),
            "length_penalty": (args.length_penalty if args.length_penalty is not None
                               else d.get("length_penalty", 1.0))}


def add_translate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="F",
                        help="source sentences, one a line (an empty line gives an empty one)")
    parser.add_argument("--output", metavar="F", help="write translations here (default stdout)")
    parser.add_argument("--plot-attention", metavar="PNG",
                        help="save the attention of one sentence as a heat map")
    parser.add_argument("--plot-line", type=int, default=1,
                        help="which input line --plot-attention shows (default 1)")
    _decode_arguments(parser)


def translate(args: argparse.Namespace) -> int:
    model, src_vocab, tgt_vocab, config = load_run(args.run_dir)
    model.to(args.device)
    lines = _read_input(args.input)
    sources = prepare_sources(lines, src_vocab, config["data"]["max_src_len"], args.input,
                              args.on_long)
    opts = _decode_options(args, config)
    start = time.perf_counter()
    hyps = translate_ids(model, sources, tgt_vocab, **opts)
    seconds = time.perf_counter() - start
    text = "".join(h + "\n" for h in hyps)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    print(f"rnnkit: translated {len(lines)} lines in {seconds:.1f} s "
          f"({len(lines) / max(seconds, 1e-9):.1f} sentences/s, beam {opts['beam']})",
          file=sys.stderr)
    if args.plot_attention:
        line = args.plot_line
        if not 1 <= line <= len(lines) or not sources[line - 1]:
            raise RnnkitError(f"--plot-line {line}: no such non-empty line in {args.input}")
        plot_attention(model, sources[line - 1], tgt_vocab.encode(hyps[line - 1]), src_vocab,
                       tgt_vocab, args.plot_attention)
        print(f"rnnkit: attention of line {line} saved to {args.plot_attention}",
              file=sys.stderr)
    return 0


@torch.no_grad()
def attention_matrix(model: Seq2Seq, src: list[int], tgt: list[int]) -> torch.Tensor:
    """alpha (T + 1, S): the attention of each target token (and EOS) over the source."""
    device = next(model.parameters()).device
    batch = make_batch([(src, tgt)], [0]).to(device)
    out = model.eval()(batch.src, batch.src_lengths, batch.tgt_in)
    return out.attention[0].cpu()


def plot_attention(model: Seq2Seq, src: list[int], tgt: list[int], src_vocab: SubwordVocab,
                   tgt_vocab: SubwordVocab, path: str | Path) -> None:
    """Save the attention of ``tgt`` (ids) translating ``src`` as a heat-map PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RnnkitError('--plot-attention needs matplotlib: pip install -e ".[plot]"') from None
    weights = attention_matrix(model, src, tgt).numpy()
    xs = src_vocab.pieces(src)
    ys = [*tgt_vocab.pieces(tgt), "</s>"]
    fig, ax = plt.subplots(figsize=(1 + 0.45 * len(xs), 1 + 0.4 * len(ys)))
    ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(xs)), xs, rotation=60, ha="right")
    ax.set_yticks(range(len(ys)), ys)
    ax.set_xlabel("source")
    ax.set_ylabel("translation")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- evaluation -------------------------------------------------------------------------------
def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", required=True, metavar="F", help="source sentences")
    parser.add_argument("--ref", required=True, metavar="F", help="reference translations")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    parser.add_argument("--output", metavar="F", help="also write the translations here")
    _decode_arguments(parser)


def evaluate(args: argparse.Namespace) -> int:
    from rnnkit.metrics.translation import translation_scores

    model, src_vocab, tgt_vocab, config = load_run(args.run_dir)
    model.to(args.device)
    pairs = read_parallel(args.src, args.ref)
    sources = prepare_sources([s for s, _ in pairs], src_vocab, config["data"]["max_src_len"],
                              args.src, args.on_long)
    opts = _decode_options(args, config)
    start = time.perf_counter()
    hyps = translate_ids(model, sources, tgt_vocab, **opts)
    seconds = time.perf_counter() - start
    if args.output:
        Path(args.output).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    scores = translation_scores(hyps, [r for _, r in pairs])
    result = {**scores.to_dict(), "beam": opts["beam"],
              "sentences_per_second": len(pairs) / max(seconds, 1e-9)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"BLEU {scores.bleu:.2f}  chrF {scores.chrf:.2f}  ({len(pairs)} sentences, beam "
              f"{opts['beam']}, {result['sentences_per_second']:.1f} sentences/s)")
        print(scores.signature)
    return 0
