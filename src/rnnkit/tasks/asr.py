"""Speech recognition: a recurrent acoustic model trained with CTC, decoded greedily or by a
prefix beam search with an rnnkit character LM, judged by word error rate.

Data are manifests (:mod:`rnnkit.data.audio`: TSV ``audio<TAB>text`` or NeMo's JSON lines).
Audio becomes log-mel frames (:mod:`rnnkit.data.features`), the model is
:class:`~rnnkit.models.asr.AcousticModel` over the characters of the training transcripts, and
training keeps the checkpoint of the best dev WER. The run directory holds ``config.json``
(the model section records the sample rate the model was trained at, its alphabet and, for a
streaming model, the training set's feature statistics) and the weights.

Training utterances too short for their transcripts (CTC needs at least one step per
character, two between repeated characters) are skipped and counted, never a silent infinite
loss; lines with an empty transcript are skipped and counted by the manifest reader.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.data.audio import Utterance, change_speed, read_audio, read_manifest
from rnnkit.data.features import FeatureConfig, LogMel, normalise, spec_augment
from rnnkit.data.padding import length_batches
from rnnkit.errors import DataError, RnnkitError, note, warn
from rnnkit.generation.ctc import (
    CharLMScorer,
    GreedyStream,
    Lexicon,
    PrefixBeamSearch,
    greedy_ids,
)
from rnnkit.metrics.wer import ErrorCounts, error_counts
from rnnkit.models.asr import BLANK, AcousticModel, ASRConfig
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

TASK = "asr"
DEFAULT_TRAIN = TrainConfig(epochs=60, lr=2e-3, clip=5.0, schedule="cosine", warmup=200,
                            min_lr_ratio=0.02, patience=0)


@dataclass
class ASRData:
    """The data section of a speech run (``config.json``'s ``"data"``).

    Attributes:
        train, dev: the manifests (absolute paths).
        batch_size: utterances per batch.
        spec_augment: frequency and time masks on the training features.
        speed_perturb: speed factors (Kaldi's 0.9, 1.0, 1.1): each epoch trains on each
            utterance at one of them, drawn (:func:`~rnnkit.data.audio.change_speed`); empty:
            as recorded.
    """

    train: str = ""
    dev: str | None = None
    batch_size: int = 16
    spec_augment: bool = True
    speed_perturb: list[float] = field(default_factory=list)


@dataclass
class ASROptions:
    """What ``rnnkit train asr`` was given (None: the default, or the resumed run's)."""

    train: str
    dev: str | None = None
    cell: str = "lstm"
    hidden_size: int = 256
    num_layers: int = 3
    unidirectional: bool = False
    delay: int | None = None
    subsample: int = 3
    n_mels: int = 40
    dropout: float = 0.2
    window: str | None = None
    batch_size: int | None = None
    no_spec_augment: bool = False
    speed_perturb: list[float] | None = None
    #: the options the command line set (``rnnkit.commands.common.options_from``)
    given: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        check_options(self)
        if self.speed_perturb is not None and not (
                1.0 in self.speed_perturb and all(0.5 <= f <= 2.0 for f in self.speed_perturb)):
            raise RnnkitError(f"--speed-perturb takes factors in [0.5, 2], 1.0 (as recorded) "
                              f"among them, got {self.speed_perturb}")  # NaN fails too
        if self.delay and not self.unidirectional:
            raise RnnkitError("--delay is for a streaming model: give --unidirectional too "
                              "(a bidirectional one hears each utterance to its end)")


# -- features -----------------------------------------------------------------------------------
class Featurizer:
    """Audio file -> normalised frames (T, n_mels) for one model's :class:`ASRConfig`."""

    def __init__(self, config: ASRConfig) -> None:
        self.config = config
        self.logmel = LogMel(config.features)
        self.mean = None if config.mean is None else torch.tensor(config.mean)
        self.std = None if config.std is None else torch.tensor(config.std)

    def raw(self, utt: Utterance | str, speed: float = 1.0) -> tuple[Tensor, float]:
        """Unnormalised log-mel frames of a file (played ``speed`` times as fast) and its
        duration in seconds (as recorded)."""
        path, source = (utt.audio, utt.source) if isinstance(utt, Utterance) else (utt, None)
        samples, rate = read_audio(path, self.config.features.rate, source)
        seconds = len(samples) / rate
        if speed != 1.0:
            samples = change_speed(samples, speed)
        return self.logmel(torch.from_numpy(samples)), seconds

    def normalised(self, frames: Tensor) -> Tensor:
        return normalise(frames, self.mean, self.std)

    def __call__(self, utt: Utterance | str) -> tuple[Tensor, float]:
        frames, seconds = self.raw(utt)
        return self.normalised(frames), seconds


def _encode_text(text: str, ids: dict[str, int], where: str | Path,
                 line: int | None = None, what: str = "") -> list[int]:
    """``text``'s output indices; a character outside the alphabet ``ids`` is a
    :class:`DataError` naming ``where`` (and ``line``), after ``what`` it is."""
    unknown = sorted({c for c in text if c not in ids})
    if unknown:
        raise DataError(f"{what}characters the model does not know: {''.join(unknown)!r} "
                        f"(its alphabet: {''.join(sorted(ids))!r})", where, line)
    return [ids[c] for c in text]


def encode_texts(utts: Sequence[Utterance], config: ASRConfig) -> list[list[int]]:
    """The output indices of every transcript; a character outside the model's alphabet is
    a :class:`DataError` naming the manifest line."""
    ids = config.char_ids
    return [_encode_text(u.text, ids, u.source) for u in utts]


def ctc_steps_needed(ids: Sequence[int]) -> int:
    """The fewest CTC steps that can emit ``ids``: one a symbol, plus a blank between equal
    neighbours."""
    return len(ids) + sum(1 for a, b in itertools.pairwise(ids) if a == b)


def _batch(frames: list[Tensor]) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([f.shape[0] for f in frames])
    return torch.nn.utils.rnn.pad_sequence(frames, batch_first=True), lengths


class ASRTask(TrainingTask):
    """CTC training of an :class:`AcousticModel`; the dev set is scored by greedy WER.

    ``perturbed[i]``: other versions of utterance i's frames (speed perturbed); each epoch
    trains on one of ``frames[i], *perturbed[i]``, drawn."""

    monitor = "wer"
    mode = "min"

    def __init__(self, frames: list[Tensor], targets: list[list[int]], dev: tuple | None,
                 config: ASRConfig, batch_size: int, augment: bool,
                 perturbed: list[list[Tensor]] | None = None) -> None:
        self.frames, self.targets, self.dev = frames, targets, dev
        self.config, self.batch_size, self.augment = config, batch_size, augment
        self.perturbed = perturbed

    def _versions(self, generator: torch.Generator) -> list[Tensor]:
        if not self.perturbed:
            return self.frames
        return [versions[int(torch.randint(0, len(versions), (1,), generator=generator))]
                for versions in ([f, *p] for f, p in zip(self.frames, self.perturbed))]

    def train_batches(self, epoch: int, generator: torch.Generator) -> Iterator[tuple]:
        versions = self._versions(generator)
        for idx in length_batches([f.shape[0] for f in versions], self.batch_size, generator):
            frames = [versions[i] for i in idx]
            if self.augment:
                frames = [spec_augment(f, generator) for f in frames]
            x, lengths = _batch(frames)
            targets = [self.targets[i] for i in idx]
            yield (x, lengths, torch.tensor([t for ts in targets for t in ts]),
                   torch.tensor([len(t) for t in targets]))

    def steps_per_epoch(self) -> int:
        return -(-len(self.frames) // self.batch_size)

    def loss(self, model: AcousticModel, batch: tuple, carry: object) -> StepOutput:
        device = next(model.parameters()).device
        x, lengths, targets, target_lengths = (t.to(device) for t in batch)
        log_probs, out_lengths, _ = model(x, lengths)
        loss = F.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths.to(device),
                          target_lengths, blank=BLANK, reduction="mean", zero_infinity=False)
        return StepOutput(loss, int(lengths.shape[0]))

    def evaluate(self, model: AcousticModel) -> dict[str, float] | None:
        if self.dev is None:
            return None
        frames, refs = self.dev
        hyps = decode_frames(model, frames, self.batch_size * 4)
        words, chars = error_counts(refs, hyps, "word"), error_counts(refs, hyps, "char")
        return {"wer": words.rate, "cer": chars.rate}


# -- training -----------------------------------------------------------------------------------
def _features_of(utts: Sequence[Utterance], featurizer: Featurizer, raw: bool
                 ) -> tuple[list[Tensor], float]:
    out, seconds = [], 0.0
    for u in utts:
        frames, s = featurizer.raw(u) if raw else featurizer(u)
        out.append(frames)
        seconds += s
    return out, seconds


#: a streaming model's output delay unless ``--delay`` says: 10 steps, 300 ms at 30 ms steps
#: (RESULTS.md: dev WER 28.2% at 0, 5.8% at 10, 15 minutes of training)
STREAMING_DELAY = 10


def _delay(opts: ASROptions) -> int:
    if opts.delay is not None:
        return opts.delay
    return STREAMING_DELAY if opts.unidirectional else 0


def _perturbed(utts: Sequence[Utterance], keep: list[int], targets: list[list[int]],
               featurizer: Featurizer, speeds: Sequence[float]) -> list[list[Tensor]] | None:
    """The normalised frames of ``utts[keep[j]]`` at each speed but 1.0 that still fit
    ``targets[j]`` (None without ``speeds``)."""
    speeds = [s for s in speeds if s != 1.0]
    if not speeds:
        return None
    out, dropped = [], 0
    for i, t in zip(keep, targets):
        versions = [featurizer.normalised(featurizer.raw(utts[i], s)[0]) for s in speeds]
        fit = [v for v in versions if featurizer.config.output_steps(v.shape[0])
               >= ctc_steps_needed(t)]
        dropped += len(versions) - len(fit)
        out.append(fit)
    note(f"speed perturbation: {', '.join(map(str, speeds))} besides 1.0"
         + (f" ({dropped} version(s) too short for their transcripts left out)"
            if dropped else ""))
    return out


def train(opts: ASROptions, request: RunRequest) -> int:
    """Train an acoustic model into the run directory of ``request``; progress and the result
    on stderr."""
    run, saved = open_run(request, task=TASK)
    config = train_config(request.train, saved_train_options(saved), DEFAULT_TRAIN)
    train_utts = read_manifest(opts.train)
    dev_utts = read_manifest(opts.dev) if opts.dev else None
    if saved is not None:
        m, d = saved["model"], saved["data"]
        was = {"cell": m.get("cell"), "hidden_size": m.get("hidden_size"),
               "num_layers": m.get("num_layers"), "unidirectional": not m.get("bidirectional"),
               "delay": m.get("delay", 0),
               "subsample": m.get("subsample"), "n_mels": m.get("features", {}).get("n_mels"),
               "dropout": m.get("dropout"), "batch_size": d.get("batch_size"),
               "window": window_option(m),
               "no_spec_augment": not d.get("spec_augment", True), "train": d.get("train"),
               "speed_perturb": d.get("speed_perturb", []),
               "dev": d.get("dev")}
        refuse_changed_options(run, option_changes(opts, was, ("train", "dev"), ("train",)))
        model_config = ASRConfig.from_dict(m)
        data = ASRData(**d)
    else:
        rate = read_audio(train_utts[0].audio, None, train_utts[0].source)[1]
        alphabet = sorted({c for u in train_utts for c in u.text})
        features = FeatureConfig(rate=rate, n_mels=opts.n_mels,
                                 normalisation="global" if opts.unidirectional else "utterance")
        options, layer_options = qrnn_windows(opts.window, opts.cell, opts.num_layers)
        model_config = ASRConfig(alphabet=alphabet, features=features, subsample=opts.subsample,
                                 cell=opts.cell, hidden_size=opts.hidden_size,
                                 num_layers=opts.num_layers,
                                 bidirectional=not opts.unidirectional,
                                 delay=_delay(opts), dropout=opts.dropout,
                                 cell_options=options, layer_cell_options=layer_options)
        data = ASRData(train=str(Path(opts.train).resolve()),
                       dev=str(Path(opts.dev).resolve()) if opts.dev else None,
                       batch_size=opts.batch_size or ASRData.batch_size,
                       spec_augment=not opts.no_spec_augment,
                       speed_perturb=list(opts.speed_perturb or []))
    featurizer = Featurizer(model_config)
    start = time.perf_counter()
    raw, seconds = _features_of(train_utts, featurizer, raw=True)
    if saved is None and model_config.features.normalisation == "global":
        every = torch.cat(raw)
        model_config.mean = every.mean(0).tolist()
        model_config.std = every.std(0, unbiased=False).clamp_min(1e-5).tolist()
        featurizer = Featurizer(model_config)
    frames = [featurizer.normalised(f) for f in raw]
    targets = encode_texts(train_utts, model_config)
    fits = [model_config.output_steps(f.shape[0]) >= ctc_steps_needed(t)
            for f, t in zip(frames, targets)]
    keep = [i for i, ok in enumerate(fits) if ok]
    if len(keep) < len(frames):
        first = fits.index(False)
        warn(f"{opts.train}: skipped {len(frames) - len(keep)} utterance(s) too short for "
             f"their transcripts (CTC needs a step per character; first: "
             f"{train_utts[first].source})")
    if not keep:
        raise DataError("no training utterance is long enough for its transcript", opts.train)
    frames, targets = [frames[i] for i in keep], [targets[i] for i in keep]
    perturbed = _perturbed(train_utts, keep, targets, featurizer, data.speed_perturb)
    dev = None
    if dev_utts:
        encode_texts(dev_utts, model_config)  # characters it cannot score: before any work
        dev_frames, dev_seconds = _features_of(dev_utts, featurizer, raw=False)
        dev = (dev_frames, [u.text for u in dev_utts])
        note(f"dev: {opts.dev}: {len(dev_utts)} utterances, {dev_seconds / 60:.1f} minutes")
    note(f"train asr: {opts.train}: {len(frames)} utterances, {seconds / 60:.1f} minutes of "
         f"audio at {model_config.features.rate} Hz, alphabet {''.join(model_config.alphabet)!r}"
         f" (features in {time.perf_counter() - start:.0f} s)")
    run.write_config(RunConfig(TASK, model_config.to_dict(), asdict(data), asdict(config)))
    torch.manual_seed(config.seed)
    model = AcousticModel(model_config)
    n_params = sum(p.numel() for p in model.parameters())
    note(f"model: {model_config.num_layers} x {model_config.hidden_size} "
         f"{'bidirectional ' if model_config.bidirectional else ''}{model_config.cell}, "
         f"{n_params:,} parameters; writing {run.path}")
    task = ASRTask(frames, targets, dev, model_config, data.batch_size, data.spec_augment,
                   perturbed)
    result = Trainer(model, task, run, config, resume=request.resume).fit()
    if result.metrics:
        note(f"dev: WER {100 * result.metrics['wer']:.2f}%, CER "
             f"{100 * result.metrics['cer']:.2f}% (greedy)")
    note(result.summary(task.monitor, run.path))
    return 0


# -- decoding -----------------------------------------------------------------------------------
def load(run_dir: str | Path, device: str = "cpu") -> tuple[AcousticModel, dict]:
    """``(model (eval mode, best weights, on device), config)`` of a speech run."""
    run = RunDir(run_dir)
    model, config = run.load_model(TASK, lambda m: AcousticModel(ASRConfig.from_dict(m)))
    return model.to(device), config


def _text(model: AcousticModel, ids: Sequence[int]) -> str:
    alphabet = model.config.alphabet
    return " ".join("".join(alphabet[i - 1] for i in ids).split())


@torch.no_grad()
def log_probs_of(model: AcousticModel, frames: list[Tensor], batch_size: int = 64
                 ) -> list[Tensor]:
    """Per-utterance log-probabilities (T'_i, V), in order, batched by length."""
    model.eval()
    device = next(model.parameters()).device
    out: list[Tensor | None] = [None] * len(frames)
    for idx in length_batches([f.shape[0] for f in frames], batch_size):
        x, lengths = _batch([frames[i] for i in idx])
        lp, out_lengths, _ = model(x.to(device), lengths)
        for row, i in enumerate(idx):
            out[i] = lp[row, :int(out_lengths[row])].cpu()
    return out  # type: ignore[return-value]


Decoder = Callable[[], "GreedyStream | PrefixBeamSearch"]


def read_lexicon(path: str | Path, config: ASRConfig) -> Lexicon:
    """The words of the UTF-8 file ``path`` (separated by whitespace, any number a line; a
    repeat is one word) as a :class:`~rnnkit.generation.ctc.Lexicon` over the model's
    alphabet. A character the model cannot write is a :class:`DataError` naming the line."""
    from rnnkit.data.text import read_text

    ids = config.char_ids
    words: dict[str, list[int]] = {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        for w in line.split():
            if w not in words:
                words[w] = _encode_text(w, ids, path, n, what=f"the word {w!r} has ")
    return Lexicon(list(words.values()), ids.get(" "))


def make_decoder(model: AcousticModel, beam: int = 1, lm: str | Path | None = None,
                 lm_weight: float = 0.5, word_bonus: float = 0.0,
                 lexicon: str | Path | None = None) -> Decoder:
    """A factory of incremental decoders: greedy (``beam`` 1, no LM, no lexicon) or the
    prefix beam search, with the character LM of run directory ``lm`` fused in and the
    words of the file ``lexicon`` (:func:`read_lexicon`) the only ones it writes."""
    if beam < 1:
        raise RnnkitError(f"--beam must be a positive int, got {beam}")
    words = None if lexicon is None else read_lexicon(lexicon, model.config)
    if lm is None and words is None and beam == 1:
        return GreedyStream
    scorer_args = None
    if lm is not None:
        from rnnkit.data.text import start_id
        from rnnkit.tasks.lm import load_lm

        lm_model, vocab, lm_config = load_lm(lm)
        if lm_config["data"].get("level") != "char":
            raise RnnkitError(f"--lm {lm}: a character-level language model is needed, this "
                              f"one is {lm_config['data'].get('level')}-level")
        unk = vocab.unk_id if vocab.unk_id is not None else 0
        lm_ids = [0] + [vocab.stoi.get(c, unk) for c in model.config.alphabet]
        scorer_args = (lm_model.eval(), lm_ids, start_id(vocab, "char"))
    space = (model.config.alphabet.index(" ") + 1) if " " in model.config.alphabet else None

    def new() -> PrefixBeamSearch:
        scorer = None if scorer_args is None else CharLMScorer(*scorer_args)
        return PrefixBeamSearch(beam=beam, blank=BLANK, lm=scorer, lm_weight=lm_weight,
                                word_bonus=word_bonus, space=space, lexicon=words)
    return new


def decode_frames(model: AcousticModel, frames: list[Tensor], batch_size: int = 64,
                  decoder: Decoder | None = None) -> list[str]:
    """Transcripts of normalised frame sequences (greedy unless ``decoder`` says)."""
    out = []
    for lp in log_probs_of(model, frames, batch_size):
        if decoder is None:
            out.append(_text(model, greedy_ids(lp)))
        else:
            d = decoder()
            d.advance(lp)
            out.append(_text(model, d.best()))
    return out


@dataclass
class Transcription:
    """Transcripts of files and what they cost."""

    texts: list[str]
    audio_seconds: float
    seconds: float  # wall time: reading, features, the model and decoding

    @property
    def real_time_factor(self) -> float:
        return self.seconds / self.audio_seconds if self.audio_seconds else math.inf


def transcribe(model: AcousticModel, items: Sequence[Utterance | str], batch_size: int = 64,
               decoder: Decoder | None = None) -> Transcription:
    """Transcribe sound files (paths or manifest lines), timed."""
    start = time.perf_counter()
    featurizer = Featurizer(model.config)
    frames, seconds = _features_of(list(items), featurizer, raw=False)
    texts = decode_frames(model, frames, batch_size, decoder)
    return Transcription(texts, seconds, time.perf_counter() - start)


def stream(model: AcousticModel, path: str, chunk_ms: float = 100.0,
           decoder: Decoder | None = None) -> Iterator[tuple[str, float]]:
    """A unidirectional model on a file read ``chunk_ms`` at a time, as audio arrives:
    ``(hypothesis so far, seconds this chunk took)`` after each chunk; the last is the
    transcript, equal to the whole-file decode of the same model and decoder. A model with a
    ``delay`` D lags its input by D steps and is flushed by D steps of zeros at the end."""
    cfg = model.config
    if cfg.bidirectional:
        raise RnnkitError("--stream needs a unidirectional model (train asr "
                          "--unidirectional): a bidirectional one reads each utterance to its "
                          "end")
    featurizer = Featurizer(cfg)
    samples = torch.from_numpy(read_audio(path, cfg.features.rate)[0])
    chunk = max(1, int(cfg.features.rate * chunk_ms / 1000))
    fc = cfg.features
    decode = (decoder or GreedyStream)()
    state, framed, pending = None, 0, []  # frames made so far; frames not yet stacked
    unheard = cfg.delay  # outputs still to drop: those before the first step's
    k = cfg.subsample
    model.eval()
    with torch.no_grad():
        for end in range(chunk, len(samples) + chunk, chunk):
            t0 = time.perf_counter()
            have = min(end, len(samples))
            total = featurizer.logmel.num_frames(have)
            if total > framed:  # the new frames: their samples only
                lo = framed * fc.hop
                hi = (total - 1) * fc.hop + fc.window
                new = featurizer.normalised(featurizer.logmel(samples[lo:hi]))
                pending.extend(new.unbind(0))
                framed = total
            steps = len(pending) // k
            stacked = torch.stack(pending[:steps * k]).reshape(1, steps, k * fc.n_mels
                                                                ) if steps else None
            pending = pending[steps * k:]
            if have == len(samples) and cfg.delay:  # the end: D steps of zeros after it
                tail = torch.zeros(1, cfg.delay, k * fc.n_mels)
                stacked = tail if stacked is None else torch.cat([stacked, tail], 1)
            if stacked is not None:
                lp, state = model.stream_step(stacked, state)
                lp = lp[0, min(unheard, lp.shape[1]):]  # a delay's first outputs are not ours
                unheard = max(0, unheard - stacked.shape[1])
                if lp.shape[0]:
                    decode.advance(lp)
            yield _text(model, decode.best()), time.perf_counter() - t0


def whole_file(model: AcousticModel, path: str, decoder: Decoder | None = None) -> str:
    """The transcript of one file decoded at once (what :func:`stream` ends with)."""
    return transcribe(model, [path], 1, decoder).texts[0]


def evaluate_manifest(run_dir: str | Path, manifest: str, *, beam: int = 1,
                      lm: str | None = None, lm_weight: float = 0.5, word_bonus: float = 0.0,
                      lexicon: str | None = None,
                      batch_size: int = 64, device: str = "cpu") -> dict:
    """WER, CER and their operations on a manifest, with the real-time factor."""
    model, _ = load(run_dir, device)
    utts = read_manifest(manifest)
    encode_texts(utts, model.config)  # characters it cannot score: before any work
    decoder = make_decoder(model, beam, lm, lm_weight, word_bonus, lexicon)
    result = transcribe(model, utts, batch_size, decoder)
    refs = [u.text for u in utts]
    words: ErrorCounts = error_counts(refs, result.texts, "word")
    chars = error_counts(refs, result.texts, "char")
    return {"wer": words.rate, "cer": chars.rate, "substitutions": words.substitutions,
            "deletions": words.deletions, "insertions": words.insertions,
            "reference_words": words.reference, "utterances": len(utts),
            "sentence_accuracy": sum(r == h for r, h in zip(refs, result.texts)) / len(utts),
            "audio_seconds": result.audio_seconds, "real_time_factor": result.real_time_factor}


__all__ = ["ASRData", "ASROptions", "ASRTask", "DEFAULT_TRAIN", "Featurizer",
           "STREAMING_DELAY", "TASK", "Transcription", "ctc_steps_needed", "decode_frames",
           "encode_texts", "evaluate_manifest", "load", "log_probs_of", "make_decoder",
           "read_lexicon",
           "stream", "train", "transcribe", "whole_file"]
