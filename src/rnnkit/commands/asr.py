"""train a speech recogniser (CTC) on audio manifests

    rnnkit prepare-digits ../shared/data/fsdd --out data/digits      connected-digit sets
    rnnkit train asr --train data/digits/train.tsv --dev data/digits/dev.tsv
    rnnkit evaluate DIR --data dev.tsv [--beam 8 --lm LM_DIR] [--json]   WER, CER, RTF
    rnnkit transcribe DIR --input a.wav b.wav | --manifest M [--output hyp.tsv]
    rnnkit transcribe DIR --input a.wav --stream      partial hypotheses as audio arrives
    rnnkit export DIR --onnx am.onnx                  features in, log-probabilities out

The options; the task itself is :mod:`rnnkit.tasks.asr`.
"""

from __future__ import annotations

import argparse
import sys

from rnnkit.cells.scan import QRNN_WINDOW
from rnnkit.commands import common
from rnnkit.data.audio import read_manifest
from rnnkit.errors import RnnkitError, note
from rnnkit.tasks import asr
from rnnkit.tasks.asr import TASK, ASROptions

_OPTS = ASROptions(train="")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rnnkit train asr``."""
    parser.add_argument("--train", required=True, metavar="M",
                        help="training manifest (TSV audio<TAB>text, or NeMo JSON lines)")
    parser.add_argument("--dev", metavar="M", help="dev manifest (best checkpoint by WER)")
    m = parser.add_argument_group("model")
    common.add_model_arguments(m, {"cell": _OPTS.cell, "hidden_size": _OPTS.hidden_size,
                                   "num_layers": _OPTS.num_layers, "dropout": _OPTS.dropout,
                                   "window": QRNN_WINDOW})
    m.add_argument("--unidirectional", action="store_true",
                   help="a streaming model (one direction; global feature statistics)")
    m.add_argument("--delay", type=int, metavar="D",
                   help="with --unidirectional: steps the model hears past each output "
                        f"before emitting it (latency D x the step; default "
                        f"{asr.STREAMING_DELAY})")
    m.add_argument("--subsample", type=int, metavar="K",
                   help=f"frames stacked into one step (default {_OPTS.subsample}: 30 ms)")
    m.add_argument("--n-mels", type=int, metavar="N",
                   help=f"log-mel channels (default {_OPTS.n_mels})")
    m.add_argument("--no-spec-augment", action="store_true",
                   help="no frequency and time masks in training")
    m.add_argument("--speed-perturb", type=float, nargs="+", metavar="F",
                   help="train on each utterance at one of these speeds (1.0 among them) each "
                        "epoch, drawn (Kaldi's: 0.9 1.0 1.1; default: as recorded)")
    common.add_common_train_arguments(parser, default_out="runs/asr-{time}")


train = common.train_handler(asr.train, ASROptions)


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """``--beam --lm --lm-weight --word-bonus --lexicon``."""
    d = parser.add_argument_group("decoding")
    d.add_argument("--beam", type=int, default=1, metavar="K",
                   help="prefix beam search with K prefixes (default 1 without --lm: greedy)")
    d.add_argument("--lm", metavar="DIR", help="a character LM run directory (shallow fusion)")
    d.add_argument("--lm-weight", type=float, default=0.5, metavar="W",
                   help="weight of the LM's log-probabilities (default 0.5)")
    d.add_argument("--word-bonus", type=float, default=0.0, metavar="B",
                   help="added to a hypothesis's score for each word (default 0)")
    d.add_argument("--lexicon", metavar="F",
                   help="a file of words (whitespace-separated): the beam search writes "
                        "only these (default beam 8)")


def _decoder_options(args: argparse.Namespace) -> dict:
    if args.beam < 1:
        raise RnnkitError(f"--beam must be a positive int, got {args.beam}")
    if args.lm is None and (args.lm_weight != 0.5 or args.word_bonus != 0.0):
        raise RnnkitError("--lm-weight and --word-bonus need --lm DIR")
    if (args.lm is not None or args.lexicon is not None) and args.beam == 1:
        args.beam = 8  # fusion and a lexicon need hypotheses to choose among
    return {"beam": args.beam, "lm": args.lm, "lm_weight": args.lm_weight,
            "word_bonus": args.word_bonus, "lexicon": args.lexicon}


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="M", help="a manifest")
    add_decoding_arguments(parser)
    common.add_run_arguments(parser, batch_size=64, batch_help="utterances per batch",
                             json=True)


@common.run_command
def evaluate(args: argparse.Namespace) -> int:
    """WER and CER (corpus level) with their operations, and the real-time factor."""
    r = asr.evaluate_manifest(args.run_dir, args.data, batch_size=args.batch_size,
                              device=args.device, **_decoder_options(args))
    if args.json:
        print(common.json_line(r))
        return 0
    print(f"{args.data}: {r['utterances']} utterances, {r['audio_seconds'] / 60:.1f} minutes")
    print(f"WER {100 * r['wer']:6.2f}%  ({r['substitutions']} substitutions, {r['deletions']} "
          f"deletions, {r['insertions']} insertions of {r['reference_words']} words)")
    print(f"CER {100 * r['cer']:6.2f}%")
    print(f"real-time factor {r['real_time_factor']:.4f}")
    return 0


def add_transcribe_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", metavar="F", help="sound files")
    src.add_argument("--manifest", metavar="M", help="a manifest (its texts are ignored)")
    parser.add_argument("--output", metavar="F",
                        help="audio<TAB>transcript lines (default: stdout)")
    parser.add_argument("--stream", action="store_true",
                        help="read each file in chunks as it would arrive, printing the "
                             "hypothesis whenever it changes (unidirectional models)")
    parser.add_argument("--chunk-ms", type=float, default=100.0, metavar="MS",
                        help="chunk length with --stream (default 100)")
    add_decoding_arguments(parser)
    common.add_run_arguments(parser, batch_size=64, batch_help="utterances per batch")


@common.run_command
def transcribe(args: argparse.Namespace) -> int:
    """One ``audio<TAB>transcript`` line per file, in order."""
    if not args.chunk_ms > 0:
        raise RnnkitError(f"--chunk-ms must be positive, got {args.chunk_ms}")
    model, _ = asr.load(args.run_dir, args.device)
    decoder = asr.make_decoder(model, **_decoder_options(args))
    if args.manifest:
        items = read_manifest(args.manifest)
        names = [u.audio for u in items]
    else:
        items = names = list(args.input)
    if args.stream:
        if args.output:
            raise RnnkitError("--stream prints as it goes: it takes no --output")
        for name in names:
            shown, latency = None, []
            for text, seconds in asr.stream(model, name, args.chunk_ms, decoder):
                latency.append(seconds)
                if text != shown:
                    print(f"{name}\t{text}", file=sys.stderr, flush=True)
                    shown = text
            print(f"{name}\t{shown or ''}", flush=True)
            latency.sort()
            note(f"{name}: {len(latency)} chunks of {args.chunk_ms:g} ms, median "
                 f"{1e3 * latency[len(latency) // 2]:.2f} ms, slowest "
                 f"{1e3 * latency[-1]:.2f} ms per chunk")
        return 0
    result = asr.transcribe(model, items, args.batch_size, decoder)
    common.write_output(args.output, "".join(f"{n}\t{t}\n" for n, t in zip(names,
                                                                              result.texts)))
    note(f"{len(names)} file(s), {result.audio_seconds:.1f} s of audio in {result.seconds:.2f} "
         f"s (real-time factor {result.real_time_factor:.4f})")
    return 0


# -- export (ONNX / TorchScript; see rnnkit.export) --------------------------------------------
def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from rnnkit.commands.export import add_export_arguments as add
    add(parser)


def export(args: argparse.Namespace) -> int:
    """``rnnkit export DIR --onnx F.onnx``: normalised features (B, T, n_mels) and their
    lengths in, log-probabilities (B, T', V) out."""
    from rnnkit.commands.export import export_command
    return export_command(args, asr.load(args.run_dir)[0], TASK)


# -- rnnkit prepare-digits (a tool) ------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rnnkit prepare-digits``."""
    parser.add_argument("fsdd", metavar="FSDD", help="the Free Spoken Digit Dataset's folder")
    parser.add_argument("--out", required=True, metavar="DIR", help="where to write the sets")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--train-utterances", type=int, default=3000, metavar="N",
                        help="training utterances (default 3000)")
    parser.add_argument("--dev-utterances", type=int, default=300, metavar="N",
                        help="dev utterances (default 300)")
    parser.add_argument("--max-digits", type=int, default=7, metavar="N",
                        help="digits per utterance at most (default 7)")
    parser.add_argument("--isolated-train", action="store_true",
                        help="also train on every training recording alone (train-isolated/)")


@common.one_line
def main(args: argparse.Namespace) -> int:
    """Build the connected-digit train and dev sets (rnnkit.data.digits)."""
    from rnnkit.data.digits import prepare_digits

    prepare_digits(args.fsdd, args.out, seed=args.seed, train_utterances=args.train_utterances,
                   dev_utterances=args.dev_utterances, max_digits=args.max_digits,
                   isolated_train=args.isolated_train)
    return 0
