"""The language-model task: its data section, training, evaluation, generation and loading.

Training is stateful truncated backpropagation through time: the corpus is laid out as B
streams (:class:`~rnnkit.data.lm.LMStreams`), each epoch walks through them window by window,
and the hidden state at the end of a window is the (detached) initial state of the next one.
The state is the trainer's ``carry``, so it is saved in checkpoints and restored on resume.

:func:`evaluate_lm` computes, on any id sequence, the loss in nats per token, the perplexity
``exp(loss)``, the number of tokens, and for character models bits per character
``loss / ln 2``. With no training file, :func:`train` trains a character-level LSTM on the
bundled tiny Shakespeare (first 90% to train, last 10% to validate) for about five minutes.

Every default of the task is here: :class:`LMData` (the data section), :data:`MODEL_DEFAULTS`
and :data:`WORD_DEFAULTS` (the model options of the command line, for characters and what
differs for words), :data:`ADAPTIVE_FROM` (when words get an adaptive softmax) and
:func:`train_defaults`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from rnnkit.data.lm import IGNORE, LMBatch, LMStreams
from rnnkit.data.text import (
    BUNDLED,
    Detokenizer,
    build_vocab,
    bundled_shakespeare,
    decode,
    encode,
    hold_out,
    prompt_ids,
    read_text,
    start_id,
    unknown_share,
)
from rnnkit.data.vocab import Vocabulary
from rnnkit.diagnostics.task_model import window_losses
from rnnkit.errors import CheckpointError, RnnkitError, TrainingError, note, suspect, warn
from rnnkit.generation.sampling import check_sampling
from rnnkit.layers.recurrent import detach_states
from rnnkit.models.lm import LanguageModel, LMConfig
from rnnkit.training.checkpoint import RunDir
from rnnkit.training.checks import check_options, qrnn_windows, window_option
from rnnkit.training.loop import StepOutput, TrainConfig, Trainer, TrainingTask
from rnnkit.training.options import (
    RunRequest,
    open_run,
    option_changes,
    refuse_changed_options,
    train_config,
)
from rnnkit.training.runconfig import RunConfig, section

TASK = "lm"


@dataclass
class LMData:
    """The data section of a language-model run (``config.json``'s ``"data"``).

    Attributes:
        train: the training text's absolute path, or :data:`BUNDLED`.
        valid: the validation text's absolute path, or None (hold out ``valid_fraction``).
        valid_fraction: the share of ``train`` held out when there is no ``valid``.
        level: ``"char"`` or ``"word"``.
        batch_size: B parallel streams.
        bptt: the truncated-BPTT window (the mean with ``variable_bptt``).
        variable_bptt: AWD-LSTM's randomised window lengths.
    """

    train: str = BUNDLED
    valid: str | None = None
    valid_fraction: float = 0.1
    level: str = "char"
    batch_size: int = 32
    bptt: int = 64
    variable_bptt: bool = False


#: the model options of ``rnnkit train lm`` when not given, for characters
MODEL_DEFAULTS = dict(cell="lstm", num_layers=2, hidden_size=384, embedding_size=64,
                      dropout=0.1, embedding_dropout=0.0, output_dropout=0.1)
#: the model options that differ for words: the configuration of ``benchmarks/lm_quality.py``'s
#: WikiText-2 run (2 x 512 LSTM, 256-dim embeddings, stronger dropout), so that a user who gives
#: only the data and a time budget gets the benchmark's model
WORD_DEFAULTS = dict(hidden_size=512, embedding_size=256, dropout=0.3, embedding_dropout=0.1,
                     output_dropout=0.3)
#: the truncated-BPTT window for words (characters: :class:`LMData`'s)
WORD_BPTT = 70
#: a word vocabulary of at least this many types gets an adaptive softmax (Grave et al. 2017)
#: with :data:`ADAPTIVE_CUTOFFS` unless ``--adaptive`` or ``--tie-weights`` says otherwise: the
#: full softmax over WikiText-2's 33,278 words is 4/5 of a step's time
ADAPTIVE_FROM = 20_000
ADAPTIVE_CUTOFFS = [2000, 10000]


def model_defaults(level: str) -> dict:
    """The model options when not given, at ``level`` (``"char"`` or ``"word"``)."""
    return {**MODEL_DEFAULTS, **WORD_DEFAULTS} if level == "word" else dict(MODEL_DEFAULTS)


def train_defaults(bundled: bool, level: str = "char") -> TrainConfig:
    """The training options when not given: the 5-minute default run on the bundled text
    (on 2 cores), else 10 epochs (for words, the WikiText-2 benchmark's learning rate, warm-up
    and clipping)."""
    if bundled:
        return TrainConfig(epochs=100, max_minutes=4.8, lr=4e-3, schedule="cosine",
                           warmup=30, min_lr_ratio=0.05, clip=1.0, eval_every=0,
                           log_every=10)
    if level == "word":
        return TrainConfig(epochs=10, lr=2e-3, schedule="cosine", warmup=100,
                           min_lr_ratio=0.02, clip=0.5, eval_every=2000)
    return TrainConfig(epochs=10, lr=2e-3, schedule="cosine", warmup=50, min_lr_ratio=0.05,
                       clip=1.0)


@dataclass
class LMOptions:
    """What ``rnnkit train lm`` was given; None: not given (the default above, or on resume
    the run's own value)."""

    train: str | None = None
    dev: str | None = None
    dev_fraction: float | None = None
    level: str | None = None
    max_vocab: int | None = None
    min_freq: int = 1
    batch_size: int | None = None
    bptt: int | None = None
    variable_bptt: bool = False
    cell: str | None = None
    num_layers: int | None = None
    hidden_size: int | None = None
    embedding_size: int | None = None
    engine: str | None = None
    connection: str | None = None
    dropout: float | None = None
    embedding_dropout: float | None = None
    output_dropout: float | None = None
    variational: bool = False
    dropconnect: float = 0.0
    layer_norm: bool = False
    window: str | None = None
    tie_weights: bool = False
    adaptive: str | None = None
    sample_length: int | None = None
    temperature: float = 0.8
    #: the options the command line set (``rnnkit.commands.common.options_from``)
    given: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        check_options(self)


# -- data ---------------------------------------------------------------------------------------
def load_texts(data: LMData) -> tuple[str, str | None]:
    """The training and validation texts of a data section."""
    if data.train == BUNDLED:
        text, source = bundled_shakespeare(), BUNDLED
    else:
        text, source = read_text(data.train), data.train
    if data.valid:
        return text, read_text(data.valid)
    return hold_out(text, data.valid_fraction, source)


# -- training -----------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_lm(model: LanguageModel, ids: Tensor, *, batch_size: int = 10, bptt: int = 100,
                start_id: int = 0, level: str | None = None, progress: bool = False
                ) -> dict[str, float]:
    """Metrics of ``model`` on ``ids`` (N,): every token is predicted once, from the state
    carried along its stream (B = ``batch_size`` streams, windows of ``bptt`` tokens).
    ``progress``: a progress bar with the time left on stderr, when it is a terminal.

    Returns ``{"loss", "perplexity", "tokens"}`` plus ``"bits_per_char"`` when ``level`` is
    ``"char"``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    streams = LMStreams.from_ids(ids, batch_size, start_id=start_id)
    total, state = 0.0, None
    bar = tqdm(total=streams.num_windows(bptt), unit="window", leave=False,
               disable=None if progress else True)  # None: only on a terminal
    try:
        with torch.no_grad():
            for batch in streams.windows(bptt):
                loss, state = model.loss(batch.inputs.to(device), batch.targets.to(device),
                                         state, reduction="sum")
                total += float(loss)
                bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    n = streams.num_tokens
    mean = total / n
    # exp overflows a float beyond 709.78: the perplexity is then infinite, not capped
    metrics = {"loss": mean, "perplexity": math.exp(mean) if mean < 709.0 else math.inf,
               "tokens": n}
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


def _pick(value: object, default: object) -> object:
    return default if value is None else value


def model_config(opts: LMOptions, vocab_size: int, level: str) -> LMConfig:
    """The model options: those given, else :func:`model_defaults` of ``level``; a word
    vocabulary of :data:`ADAPTIVE_FROM` types or more gets an adaptive softmax unless
    ``--adaptive none`` or ``--tie-weights``."""
    cutoffs = None
    if opts.adaptive and opts.adaptive.lower() != "none":
        try:
            cutoffs = [int(c) for c in opts.adaptive.split(",")]
        except ValueError:
            raise RnnkitError(f"--adaptive: expected comma-separated integers or none, got "
                              f"{opts.adaptive!r}") from None
        if sorted(cutoffs) != cutoffs or cutoffs[-1] >= vocab_size or cutoffs[0] < 1:
            raise RnnkitError(f"--adaptive: cutoffs must increase and lie in [1, {vocab_size})"
                              f" (the vocabulary size), got {cutoffs}")
    elif (opts.adaptive is None and level == "word" and vocab_size >= ADAPTIVE_FROM
          and not opts.tie_weights):
        cutoffs = list(ADAPTIVE_CUTOFFS)
    d = model_defaults(level)
    cell, num_layers = _pick(opts.cell, d["cell"]), _pick(opts.num_layers, d["num_layers"])
    options, layer_options = qrnn_windows(opts.window, cell, num_layers)
    return LMConfig(vocab_size=vocab_size,
                    embedding_size=_pick(opts.embedding_size, d["embedding_size"]),
                    hidden_size=_pick(opts.hidden_size, d["hidden_size"]),
                    num_layers=num_layers, cell=cell, engine=opts.engine or "auto",
                    connection=opts.connection or "none",
                    dropout=_pick(opts.dropout, d["dropout"]),
                    embedding_dropout=_pick(opts.embedding_dropout, d["embedding_dropout"]),
                    output_dropout=_pick(opts.output_dropout, d["output_dropout"]),
                    variational=opts.variational, dropconnect=opts.dropconnect,
                    cell_options={**({"layer_norm": True} if opts.layer_norm else {}),
                                  **options},
                    layer_cell_options=layer_options, tie_weights=opts.tie_weights,
                    adaptive_cutoffs=cutoffs)


def _refuse_changes(run: RunDir, opts: LMOptions, data: LMData, model: LMConfig) -> None:
    """``--resume`` with a model or data option that differs from the run's: refused."""
    saved = {**asdict(model), **asdict(data), "dev": data.valid,
             "dev_fraction": data.valid_fraction,
             "layer_norm": bool(model.cell_options.get("layer_norm")),
             "window": window_option(asdict(model)),
             "adaptive": ",".join(map(str, model.adaptive_cutoffs or [])) or None}
    paths = ("train", "dev") if data.train != BUNDLED else ("dev",)
    changes = option_changes(opts, saved, paths)
    refuse_changed_options(run, changes)


def _data_section(opts: LMOptions) -> LMData:
    defaults = LMData()
    level = _pick(opts.level, defaults.level)
    bptt = WORD_BPTT if level == "word" else defaults.bptt
    data = LMData(train=opts.train or BUNDLED, valid=opts.dev,
                  valid_fraction=_pick(opts.dev_fraction, defaults.valid_fraction),
                  level=level, batch_size=_pick(opts.batch_size, defaults.batch_size),
                  bptt=_pick(opts.bptt, bptt), variable_bptt=opts.variable_bptt)
    if data.train != BUNDLED:
        data.train = str(Path(data.train).resolve())
    if data.valid:
        data.valid = str(Path(data.valid).resolve())
    return data


def train(opts: LMOptions, request: RunRequest) -> int:
    """Train a language model into the run directory of ``request``: its metrics on stderr,
    a sample on stdout. The sampling options are checked before anything is written."""
    try:
        check_sampling(opts.temperature, None, None)
    except ValueError as err:
        raise RnnkitError(f"--temperature: {err}") from None
    run, saved = open_run(request, TASK)
    if saved is None:
        data = _data_section(opts)
        train_text, valid_text = load_texts(data)
        vocab = build_vocab(train_text, data.level, max_size=opts.max_vocab,
                            min_freq=opts.min_freq)
        config_model = model_config(opts, len(vocab), data.level)
        config = train_config(request.train, None,
                              train_defaults(opts.train is None, data.level))
        run.save_vocab(vocab)
    else:
        source = str(run.path / "config.json")
        data = section(LMData, saved["data"], "data", source)
        config_model = LMConfig.from_dict(saved["model"])
        _refuse_changes(run, opts, data, config_model)
        train_text, valid_text = load_texts(data)
        vocab = run.load_vocab()
        config = train_config(request.train, saved.get("train"), train_defaults(True))
    torch.manual_seed(config.seed)
    model = LanguageModel(config_model)
    run.write_config(RunConfig(TASK, config_model.to_dict(), asdict(data), asdict(config)))
    level = data.level
    start = start_id(vocab, level)
    train_ids = encode(train_text, vocab, level)
    valid_ids = encode(valid_text, vocab, level) if valid_text else None
    task = LMTask(train_ids, valid_ids, batch_size=data.batch_size, bptt=data.bptt,
                  variable_bptt=data.variable_bptt, start_id=start, level=level,
                  eval_batch_size=32)
    note(f"train lm: {data.train}, {level} level, {len(train_ids):,} training and "
         f"{0 if valid_ids is None else len(valid_ids):,} validation tokens, vocabulary "
         f"{len(vocab):,} (log V = {math.log(len(vocab)):.3f} nats)")
    note(f"model: {config_model.num_layers} x {config_model.hidden_size} "
         f"{config_model.cell}, {model.num_parameters():,} parameters; "
         f"{'resuming' if saved else 'writing'} {run.path}")
    result = Trainer(model, task, run, config, resume=saved is not None).fit()
    m = result.metrics
    if m:
        extra = f", {m['bits_per_char']:.3f} bits/char" if "bits_per_char" in m else ""
        note(f"validation: loss {m['loss']:.4f} nats/token, perplexity "
             f"{m['perplexity']:.2f}{extra}")
    elif result.losses:
        note(f"last training loss {result.losses[-1]:.4f}")
    note(result.summary(task.monitor, run.path))
    note(f"saved {run.path}/model.safetensors (best), {run.path}/last/ (resume with --resume)")
    length = _pick(opts.sample_length, 500 if level == "char" else 100)
    if length:
        run.load_weights(model)
        try:
            ids = model.generate([start], length, temperature=opts.temperature,
                                 seed=config.seed)
        except RnnkitError as err:  # the run is saved; only its sample fails
            warn(f"no sample: {err}")
            return 0
        note("sample:")
        print(decode(ids, vocab, level), flush=True)
    return 0


# -- a trained run ------------------------------------------------------------------------------
def load_lm(run_dir: str | Path, device: str = "cpu"
            ) -> tuple[LanguageModel, Vocabulary, dict]:
    """The model (best weights, eval mode), vocabulary and config of a language-model run.

    :class:`CheckpointError` when the directory is missing a file, a file is corrupt, the run
    is of another task, or the vocabulary does not match the weights."""
    run = RunDir(run_dir)
    config = run.read_config(task=TASK)
    try:
        config_model = LMConfig.from_dict(config["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{run.path / 'config.json'}: invalid model section ({err})"
                              ) from None
    vocab = run.load_vocab()
    if len(vocab) != config_model.vocab_size:
        raise CheckpointError(f"{run.path / 'vocab.json'}: {len(vocab)} tokens, but the model "
                              f"was built for {config_model.vocab_size}: the vocabulary does "
                              f"not match the weights")
    try:
        model = LanguageModel(config_model)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{run.path / 'config.json'}: invalid model ({err})") from None
    run.load_weights(model)
    return model.to(device).eval(), vocab, config


def run_data(config: dict) -> LMData:
    """The data section of a loaded run's config."""
    return section(LMData, config.get("data") or {}, "data")


def evaluate_file(run_dir: str | Path, path: str, *, batch_size: int = 10, bptt: int = 200,
                  device: str = "cpu", max_unknown: float = 1.0, strict: bool = False
                  ) -> dict[str, float]:
    """:func:`evaluate_lm` of a run on a UTF-8 text file, with ``"unknown_share"``: the
    share of its tokens outside the model's vocabulary. Above ``max_unknown`` the result
    says little of the model (a warning, or with ``strict`` a
    :class:`~rnnkit.errors.MeaninglessResult`). An empty file is a :class:`DataError`."""
    model, vocab, config = load_lm(run_dir, device)
    level = run_data(config).level
    text = read_text(path)
    ids = encode(text, vocab, level, source=path)
    share = unknown_share(text, ids, vocab, level)
    if share > max_unknown:
        suspect(f"{path}: {100 * share:.1f}% of its {len(ids):,} tokens are not in the "
                f"model's vocabulary (scored as <unk>)", strict)
    metrics = evaluate_lm(model, ids, batch_size=batch_size, bptt=bptt,
                          start_id=start_id(vocab, level), level=level, progress=True)
    return {**metrics, "unknown_share": share}


def stream_text(run_dir: str | Path, prompt: str = "", max_new_tokens: int = 200, *,
                temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                seed: int | None = None, greedy: bool = False, device: str = "cpu"
                ) -> Iterator[str]:
    """The prompt and its continuation by a run's model, piece by piece as the tokens are
    drawn, in constant memory however many tokens are asked for. The options are checked
    before the first piece is returned."""
    model, vocab, config = load_lm(run_dir, device)
    level = run_data(config).level
    tokens = model.stream(prompt_ids(prompt, vocab, level), max_new_tokens,
                          temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                          greedy=greedy)

    def pieces() -> Iterator[str]:
        detok = Detokenizer(vocab, level, after_text=bool(prompt))
        yield prompt
        for token in tokens:
            yield detok.piece(token[0])

    return pieces()


def generate_text(run_dir: str | Path, prompt: str = "", max_new_tokens: int = 200,
                  **options: object) -> str:
    """The prompt and its continuation by a run's model (:func:`stream_text`, joined)."""
    return "".join(stream_text(run_dir, prompt, max_new_tokens, **options))


def diagnostic_losses(run_dir: str | Path, batch_size: int, length: int,
                      text_path: str | None = None):
    """A run's model and a function giving the per-step loss (B, T) on ``batch_size``
    windows of ``length`` tokens of its validation text (or of ``text_path``), for
    ``rnnkit diagnose``."""
    model, vocab, config = load_lm(run_dir)
    data = run_data(config)
    if text_path:
        text = read_text(text_path)
    else:
        train_text, valid_text = load_texts(data)
        text = valid_text or train_text
    return model, window_losses(model, encode(text, vocab, data.level), batch_size, length)


__all__ = ["ADAPTIVE_CUTOFFS", "ADAPTIVE_FROM", "BUNDLED", "LMData", "LMOptions", "LMTask",
           "MODEL_DEFAULTS", "WORD_BPTT", "WORD_DEFAULTS", "model_defaults", "bundled_shakespeare",
           "diagnostic_losses", "evaluate_file", "evaluate_lm", "generate_text", "load_lm",
           "load_texts", "model_config", "prompt_ids", "start_id", "train", "train_defaults"]
