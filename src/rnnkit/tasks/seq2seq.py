"""The translation task: an encoder-decoder with attention trained on a parallel corpus; its
data section, training, decoding, evaluation and loading.

The run directory holds, besides the usual ``config.json`` / ``model.safetensors`` / ``last/``,
the sentencepiece model(s): ``spm.model`` (joint) or ``spm.src.model`` and ``spm.tgt.model``;
``config.json`` adds a ``decode`` section with the decoding defaults.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

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
from rnnkit.errors import DataError, RnnkitError, note
from rnnkit.models.seq2seq import Seq2Seq, Seq2SeqConfig, sequence_loss
from rnnkit.training import RunDir, StepOutput, TrainConfig, Trainer, TrainingTask
from rnnkit.training.checks import check_options, qrnn_windows, window_option
from rnnkit.training.distributed import info as dist_info
from rnnkit.training.distributed import main_first
from rnnkit.training.options import (
    RunRequest,
    open_run,
    option_changes,
    refuse_changed_options,
    saved_train_options,
    train_config,
)
from rnnkit.training.runconfig import RunConfig, section

TASK = "seq2seq"
#: the Multi30k benchmark's schedule (``benchmarks/translation_quality.py``, 39.9 greedy
#: validation BLEU, best at epoch 19 of 23): Adam 2e-3 halved whenever a dev evaluation does
#: not improve, stopped after 4 such evaluations; the model options' defaults are its model
DEFAULT_TRAIN = TrainConfig(epochs=30, lr=2e-3, clip=1.0, schedule="plateau", lr_factor=0.5,
                            patience=4)


@dataclass
class Seq2SeqData:
    """The data section of a seq2seq run: the subword vocabulary and the length limits."""

    max_src_len: int = 100
    max_tgt_len: int = 100
    joint_vocab: bool = True
    vocab_size: int = 8000


@dataclass
class DecodeDefaults:
    """The decoding defaults of a run (``config.json``'s ``"decode"``)."""

    beam: int = 5
    max_len_ratio: float = 1.5
    max_len_offset: int = 10
    length_penalty: float = 1.0


@dataclass
class Seq2SeqOptions:
    """What ``rnnkit train seq2seq`` was given (None: the default, or the resumed run's)."""

    src: str | None = None
    tgt: str | None = None
    tsv: str | None = None
    dev_src: str | None = None
    dev_tgt: str | None = None
    dev_tsv: str | None = None
    vocab_size: int = 8000
    separate_vocab: bool = False
    spm_type: str = "unigram"
    max_src_len: int = 100
    max_tgt_len: int = 100
    max_tokens: int = 3000
    cell: str = "lstm"
    #: the qrnn's convolution window, ``--window`` (None: the cell's default), every layer's
    window: str | None = None
    embedding_size: int = 256
    encoder_hidden: int = 256
    decoder_hidden: int = 512
    encoder_layers: int = 2
    decoder_layers: int = 1
    unidirectional: bool = False
    attention: str = "general"
    no_input_feeding: bool = False
    no_tie: bool = False
    bridge: str = "linear"
    connection: str = "none"
    dropout: float = 0.3
    engine: str = "auto"
    sampling_rate: float = 0.0
    label_smoothing: float = 0.1
    dev_beam: int = 1
    batch_size: int | None = None
    #: the options the command line set (``rnnkit.commands.common.options_from``)
    given: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        check_options(self)


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
                 tgt_vocab: SubwordVocab, opts: Seq2SeqOptions) -> None:
        self.train, self.valid, self.valid_text = train, valid, valid_text
        self.tgt_vocab = tgt_vocab
        self.max_tokens, self.max_sentences = opts.max_tokens, opts.batch_size
        self.sampling_rate, self.smoothing = opts.sampling_rate, opts.label_smoothing
        self.dev_beam = opts.dev_beam
        if valid_text is not None and self.dev_beam > 0:
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
            hyps = translate_ids(model, srcs, self.tgt_vocab, beam=self.dev_beam)
            scores = translation_scores(hyps, refs)
            metrics.update(bleu=scores.bleu, chrf=scores.chrf)
        return metrics


def train(opts: Seq2SeqOptions, request: RunRequest) -> int:
    """Train a seq2seq model into the run directory of ``request``; progress on stderr."""
    run, saved = open_run(request, TASK)
    train_pairs = _pairs(opts.src, opts.tgt, opts.tsv, "")
    if train_pairs is None:
        raise RnnkitError("rnnkit train seq2seq needs --src and --tgt (or --tsv)")
    valid_pairs = _pairs(opts.dev_src, opts.dev_tgt, opts.dev_tsv, "dev-")
    if saved is None:
        with main_first():  # rank 0 trains the subword models, the other ranks read them
            if dist_info().is_main:
                train_vocabs(train_pairs, run.path, opts.vocab_size,
                             joint=not opts.separate_vocab, model_type=opts.spm_type)
            src_vocab, tgt_vocab = load_vocabs(run.path)
        model_cfg = Seq2SeqConfig(
            len(src_vocab), len(tgt_vocab), cell=opts.cell, embedding_size=opts.embedding_size,
            encoder_hidden_size=opts.encoder_hidden, decoder_hidden_size=opts.decoder_hidden,
            encoder_layers=opts.encoder_layers, decoder_layers=opts.decoder_layers,
            bidirectional=not opts.unidirectional, attention=opts.attention,
            input_feeding=not opts.no_input_feeding, tie_embeddings=not opts.no_tie,
            bridge=opts.bridge, dropout=opts.dropout, connection=opts.connection,
            engine=opts.engine, cell_options=qrnn_windows(opts.window, opts.cell, None)[0])
        data_cfg = asdict(Seq2SeqData(opts.max_src_len, opts.max_tgt_len,
                                      not opts.separate_vocab, opts.vocab_size))
    else:
        model_cfg = Seq2SeqConfig.from_dict(saved["model"])
        data_cfg = asdict(section(Seq2SeqData, saved["data"], "data"))
        m = model_cfg
        was = {"cell": m.cell, "embedding_size": m.embedding_size,
               "encoder_hidden": m.encoder_hidden_size, "decoder_hidden": m.decoder_hidden_size,
               "encoder_layers": m.encoder_layers, "decoder_layers": m.decoder_layers,
               "unidirectional": not m.bidirectional, "attention": m.attention,
               "no_input_feeding": not m.input_feeding, "no_tie": not m.tie_embeddings,
               "bridge": m.bridge, "dropout": m.dropout, "connection": m.connection,
               "engine": m.engine, "separate_vocab": not data_cfg["joint_vocab"],
               "window": window_option(saved["model"]),
               **{k: data_cfg[k] for k in ("max_src_len", "max_tgt_len", "vocab_size")}}
        refuse_changed_options(run, option_changes(opts, was))
        src_vocab, tgt_vocab = load_vocabs(run.path)
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
    config = train_config(request.train, saved_train_options(saved), DEFAULT_TRAIN)
    run.write_config(RunConfig(TASK, model_cfg.to_dict(), data_cfg, asdict(config),
                               decode=asdict(DecodeDefaults())))
    torch.manual_seed(config.seed)
    model = Seq2Seq(model_cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"rnnkit: seq2seq with {n_params:,} parameters, vocabularies {len(src_vocab)} / "
          f"{len(tgt_vocab)}", file=sys.stderr)
    task = TranslationTask(train_ids, valid_ids, valid_text, tgt_vocab, opts)
    result = Trainer(model, task, run, config, resume=request.resume).fit()
    note(result.summary(task.monitor, run.path))
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


def read_input(path: str) -> list[str]:
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


def decode_options(config: dict, beam: int | None = None, length_penalty: float | None = None,
                   max_len_ratio: float | None = None, batch_size: int = 64) -> dict:
    """The keyword options of :func:`translate_ids`: those given, else the run's defaults."""
    d = config.get("decode", {})
    beam = beam if beam is not None else d.get("beam", 5)
    if beam < 1:
        raise RnnkitError(f"--beam must be at least 1, got {beam}")
    if batch_size < 1:
        raise RnnkitError(f"--batch-size must be a positive int, got {batch_size}")
    if max_len_ratio is not None and not max_len_ratio > 0:
        raise RnnkitError(f"--max-len-ratio must be > 0, got {max_len_ratio}")
    if length_penalty is not None and not 0 <= length_penalty < math.inf:
        raise RnnkitError(f"--length-penalty must be a number >= 0, got {length_penalty}")
    return {"beam": beam, "batch_size": batch_size,
            "max_len_ratio": max_len_ratio or d.get("max_len_ratio", 1.5),
            "max_len_offset": d.get("max_len_offset", 10),
            "length_penalty": (length_penalty if length_penalty is not None
                               else d.get("length_penalty", 1.0))}


class Translations(NamedTuple):
    """What :func:`translate_sources` returns: the translations, the decoding options used,
    the seconds decoding took, and the run's model, the source ids and the vocabularies (for
    plotting attention)."""

    hyps: list[str]
    options: dict
    seconds: float
    model: Seq2Seq
    sources: list[list[int]]
    src_vocab: SubwordVocab
    tgt_vocab: SubwordVocab


def translate_sources(run_dir: str | Path, lines: Sequence[str], source_name: str, *,
                      on_long: str = "truncate", device: str = "cpu", **decode: object
                      ) -> Translations:
    """Translate ``lines`` (source sentences) with a run (see :class:`Translations`)."""
    model, src_vocab, tgt_vocab, config = load_run(run_dir)
    model.to(device)
    sources = prepare_sources(list(lines), src_vocab, config["data"]["max_src_len"],
                              source_name, on_long)
    opts = decode_options(config, **decode)
    start = time.perf_counter()
    hyps = translate_ids(model, sources, tgt_vocab, **opts)
    return Translations(hyps, opts, time.perf_counter() - start, model, sources, src_vocab,
                        tgt_vocab)


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
