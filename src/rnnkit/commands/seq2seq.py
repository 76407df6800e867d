"""train an encoder-decoder with attention on a parallel corpus (translation)

    rnnkit train seq2seq --src train.de --tgt train.en --dev-src val.de --dev-tgt val.en
    rnnkit translate DIR --input test.de [--beam 5] [--output out.en] [--plot-attention a.png]
    rnnkit evaluate DIR --src val.de --ref val.en [--beam 5] [--json]

The options; the task itself is :mod:`rnnkit.tasks.seq2seq`.
"""

from __future__ import annotations

import argparse

from rnnkit.cells import CELL_NAMES
from rnnkit.cells.scan import QRNN_WINDOW
from rnnkit.commands import common
from rnnkit.data.parallel import read_parallel
from rnnkit.engines import ENGINES
from rnnkit.errors import RnnkitError, note
from rnnkit.layers.attention import ATTENTIONS
from rnnkit.layers.stacking import CONNECTIONS
from rnnkit.tasks import seq2seq
from rnnkit.tasks.seq2seq import Seq2SeqOptions


# -- training ---------------------------------------------------------------------------------
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rnnkit train seq2seq``."""
    d = parser.add_argument_group("data")
    d.add_argument("--src", metavar="F", help="training source file (one sentence a line)")
    d.add_argument("--tgt", metavar="F", help="training target file, aligned with --src")
    d.add_argument("--tsv", metavar="F", help="training pairs as source<TAB>target lines "
                   "(instead of --src/--tgt)")
    d.add_argument("--dev-src", metavar="F", help="validation source file")
    d.add_argument("--dev-tgt", metavar="F", help="validation target file")
    d.add_argument("--dev-tsv", metavar="F", help="validation pairs as a TSV file")
    d.add_argument("--vocab-size", type=int,
                   help="sentencepiece vocabulary size (each, when separate; default 8000)")
    d.add_argument("--separate-vocab", action="store_true",
                   help="one subword model per language (default: one joint model)")
    d.add_argument("--spm-type", choices=("unigram", "bpe"),
                   help="sentencepiece model type (default unigram)")
    d.add_argument("--max-src-len", type=int,
                   help="drop training pairs with longer sources, in subwords (default 100)")
    d.add_argument("--max-tgt-len", type=int,
                   help="drop training pairs with longer targets, in subwords (default 100)")
    d.add_argument("--max-tokens", type=int,
                   help="padded tokens per batch (default 3000); --batch-size caps sentences")
    m = parser.add_argument_group("model")
    m.add_argument("--cell", choices=CELL_NAMES,
                   help="recurrent cell (default lstm)")
    common.add_model_arguments(m, {"window": QRNN_WINDOW}, {
        "window": "the qrnn cell's convolution window, 1 or 2, of every layer of the encoder "
                  "and the decoder"})
    m.add_argument("--embedding-size", type=int, help="(default 256)")
    m.add_argument("--encoder-hidden", type=int,
                   help="encoder hidden size per direction (default 256)")
    m.add_argument("--decoder-hidden", type=int, help="decoder hidden size (default 512)")
    m.add_argument("--encoder-layers", type=int, help="(default 2)")
    m.add_argument("--decoder-layers", type=int, help="(default 1)")
    m.add_argument("--unidirectional", action="store_true",
                   help="a forward-only encoder (default bidirectional)")
    m.add_argument("--attention", choices=ATTENTIONS, help="(default general)")
    m.add_argument("--no-input-feeding", action="store_true")
    m.add_argument("--no-tie", action="store_true",
                   help="do not tie the decoder's input and output embeddings")
    m.add_argument("--bridge", choices=("linear", "none"), help="(default linear)")
    m.add_argument("--connection", choices=CONNECTIONS, help="(default none)")
    m.add_argument("--dropout", type=float, help="(default 0.3)")
    m.add_argument("--engine", choices=ENGINES,
                   help="how the recurrences run (rnnkit.engines; default auto)")
    t = parser.add_argument_group("seq2seq training")
    t.add_argument("--sampling-rate", type=float,
                   help="scheduled sampling: feed the model's own prediction with this "
                        "probability (default 0: teacher forcing)")
    t.add_argument("--label-smoothing", type=float, help="(default 0.1)")
    t.add_argument("--dev-beam", type=int,
                   help="beam for the validation BLEU computed at each evaluation "
                        "(default 1: greedy; 0: no BLEU, select on validation loss)")
    common.add_common_train_arguments(parser, default_out="runs/seq2seq-{time}")
    common.renamed(parser, {"--valid-src": "--dev-src", "--valid-tgt": "--dev-tgt",
                            "--valid-tsv": "--dev-tsv", "--valid-beam": "--dev-beam"})


train = common.train_handler(seq2seq.train, Seq2SeqOptions)


# -- translating ------------------------------------------------------------------------------
def _decode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beam", type=int, default=None,
                        help="beam size (1: greedy; default: the run's, 5)")
    parser.add_argument("--length-penalty", type=float, default=None,
                        help="rank hypotheses by log-prob / length**X (default 1.0)")
    parser.add_argument("--max-len-ratio", type=float, default=None,
                        help="at most ceil(X * source length) + 10 subwords (default 1.5)")
    parser.add_argument("--on-long", choices=("truncate", "error"), default="truncate",
                        help="a source longer than the run's maximum: truncate it with a "
                             "warning (default) or stop with an error")
    common.add_run_arguments(parser, batch_size=64, batch_help="sentences per batch")


def _decode(args: argparse.Namespace) -> dict:
    return {"beam": args.beam, "length_penalty": args.length_penalty,
            "max_len_ratio": args.max_len_ratio, "batch_size": args.batch_size}


def add_translate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="F",
                        help="source sentences, one a line (an empty line gives an empty one)")
    parser.add_argument("--output", metavar="F", help="write translations here (default stdout)")
    parser.add_argument("--plot-attention", metavar="PNG",
                        help="save the attention of one sentence as a heat map")
    parser.add_argument("--plot-line", type=int, default=1,
                        help="which input line --plot-attention shows (default 1)")
    _decode_arguments(parser)


@common.run_command
def translate(args: argparse.Namespace) -> int:
    lines = seq2seq.read_input(args.input)
    done = seq2seq.translate_sources(args.run_dir, lines, args.input, on_long=args.on_long,
                                     device=args.device, **_decode(args))
    common.write_output(args.output, "".join(h + "\n" for h in done.hyps))
    note(f"translated {len(lines)} lines in {done.seconds:.1f} s "
         f"({len(lines) / max(done.seconds, 1e-9):.1f} sentences/s, beam "
         f"{done.options['beam']})")
    if args.plot_attention:
        line = args.plot_line
        if not 1 <= line <= len(lines) or not done.sources[line - 1]:
            raise RnnkitError(f"--plot-line {line}: no such non-empty line in {args.input}")
        seq2seq.plot_attention(done.model, done.sources[line - 1],
                               done.tgt_vocab.encode(done.hyps[line - 1]), done.src_vocab,
                               done.tgt_vocab, args.plot_attention)
        note(f"attention of line {line} saved to {args.plot_attention}")
    return 0


# -- evaluation -------------------------------------------------------------------------------
def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", required=True, metavar="F", help="source sentences")
    parser.add_argument("--ref", required=True, metavar="F", help="reference translations")
    parser.add_argument("--json", action="store_true", help="print the scores as one JSON line")
    parser.add_argument("--output", metavar="F", help="also write the translations here")
    _decode_arguments(parser)


@common.run_command
def evaluate(args: argparse.Namespace) -> int:
    from rnnkit.metrics.translation import translation_scores

    pairs = read_parallel(args.src, args.ref)
    done = seq2seq.translate_sources(args.run_dir, [s for s, _ in pairs], args.src,
                                     on_long=args.on_long, device=args.device, **_decode(args))
    hyps, beam = done.hyps, done.options["beam"]
    if args.output:
        common.write_output(args.output, "".join(h + "\n" for h in hyps))
    scores = translation_scores(hyps, [r for _, r in pairs])
    result = {**scores.to_dict(), "beam": beam,
              "sentences_per_second": len(pairs) / max(done.seconds, 1e-9)}
    if args.json:
        print(common.json_line(result))
    else:
        print(f"BLEU {scores.bleu:.2f}  chrF {scores.chrf:.2f}  ({len(pairs)} sentences, beam "
              f"{beam}, {result['sentences_per_second']:.1f} sentences/s)")
        print(scores.signature)
    return 0
