"""The translation commands end to end on a tiny synthetic corpus: train, translate (with an
empty and a too-long line), evaluate (JSON scores equal sacrebleu's on the written output),
and bad input at the command line."""

import json
import random
from pathlib import Path

import pytest

from rnnkit.cli import main

pytest.importorskip("sentencepiece")
pytest.importorskip("sacrebleu")

DE = ["hund", "katze", "mann", "frau", "haus", "baum", "rot", "gross", "klein", "blau"]
EN = ["dog", "cat", "man", "woman", "house", "tree", "red", "big", "small", "blue"]


def corpus(n, seed):
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        idx = [rng.randrange(len(DE)) for _ in range(rng.randint(1, 4))]
        src.append(" ".join(DE[i] for i in idx))
        tgt.append(" ".join(EN[i] for i in idx))
    return src, tgt


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("s2s")
    src, tgt = corpus(300, 0)
    vsrc, vtgt = corpus(30, 1)
    files = {k: write(d / k, v) for k, v in
             {"tr.de": src, "tr.en": tgt, "va.de": vsrc, "va.en": vtgt}.items()}
    out = d / "run"
    rc = main(["train", "seq2seq", "--src", files["tr.de"], "--tgt", files["tr.en"],
               "--dev-src", files["va.de"], "--dev-tgt", files["va.en"],
               "--vocab-size", "60", "--embedding-size", "16", "--encoder-hidden", "16",
               "--decoder-hidden", "32", "--encoder-layers", "1", "--dropout", "0",
               "--max-src-len", "12", "--max-tokens", "400", "--epochs", "12", "--lr", "0.01",
               # a constant rate for all 12 epochs (the defaults are the Multi30k benchmark's
               # plateau schedule and early stopping, for hours, not 12 tiny epochs)
               "--schedule", "constant", "--patience", "0",
               "--cell", "gru", "--out", str(out), "--no-progress", "--log-every", "50"])
    assert rc == 0
    return out, files


def test_train_writes_a_run_with_its_subword_model(run):
    out, _ = run
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "seq2seq" and config["model"]["cell"] == "gru"
    assert (out / "spm.model").is_file() and (out / "model.safetensors").is_file()
    evals = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()
             if '"eval"' in x]
    assert len(evals) == 12 and max(e["bleu"] for e in evals) > 50


def test_translate_keeps_lines_aligned(run, tmp_path, capsys):
    out, _ = run
    inp = write(tmp_path / "in.de", ["hund katze", "", "rot " * 20])
    dest = tmp_path / "out.en"
    assert main(["translate", str(out), "--input", inp, "--beam", "3",
                 "--output", str(dest)]) == 0
    lines = dest.read_text().split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""
    assert lines[0] == "dog cat"
    assert "in.de:3: source has" in capsys.readouterr().err
    assert main(["translate", str(out), "--input", inp, "--on-long", "error"]) == 2
    assert "in.de:3: source has" in capsys.readouterr().err


def test_evaluate_json_equals_sacrebleu_on_the_output(run, tmp_path, capsys):
    import sacrebleu
    out, files = run
    hyp = tmp_path / "hyp.en"
    assert main(["evaluate", str(out), "--src", files["va.de"], "--ref", files["va.en"],
                 "--beam", "2", "--json", "--output", str(hyp)]) == 0
    scores = json.loads(capsys.readouterr().out)
    hyps = hyp.read_text().splitlines()
    refs = Path(files["va.en"]).read_text(encoding="utf-8").splitlines()
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert scores["bleu"] > 50


def test_bad_input_at_the_command_line(run, tmp_path, capsys):
    out, files = run
    short = write(tmp_path / "short.en", ["dog"])
    assert main(["evaluate", str(out), "--src", files["va.de"], "--ref", short]) == 2
    err = capsys.readouterr().err
    assert "has 30 lines" in err and "short.en has 1 lines" in err
    assert main(["train", "seq2seq", "--src", files["tr.de"], "--tgt", short,
                 "--out", str(tmp_path / "r")]) == 2
    assert "tr.de has 300 lines, " in capsys.readouterr().err
    empty = write(tmp_path / "e.de", ["", ""])
    assert main(["train", "seq2seq", "--src", empty, "--tgt", write(tmp_path / "e.en",
                                                                     ["a", "b"]),
                 "--out", str(tmp_path / "r2"), "--vocab-size", "10"]) == 2
    err = capsys.readouterr().err
    assert "no non-empty sentences" in err or "every training pair was dropped" in err


def test_empty_and_too_long_training_pairs_are_reported(tmp_path, capsys):
    src, tgt = corpus(60, 2)
    src[5], tgt[9] = "", ""
    src[7] = " ".join(DE * 3)  # 30 words: more than --max-src-len 12
    out = tmp_path / "run"
    assert main(["train", "seq2seq", "--src", write(tmp_path / "a.de", src),
                 "--tgt", write(tmp_path / "a.en", tgt), "--vocab-size", "60",
                 "--embedding-size", "8", "--encoder-hidden", "8", "--decoder-hidden", "16",
                 "--max-src-len", "12", "--max-steps", "1", "--out", str(out),
                 "--no-progress"]) == 0
    assert "kept 57 pairs, dropped 3 (2 with an empty side, 1 too long)" in \
        capsys.readouterr().err


def test_plot_attention_writes_a_heat_map(run, tmp_path):
    import torch

    from rnnkit.tasks.seq2seq import attention_matrix, load_run
    out, _ = run
    png = tmp_path / "att.png"
    inp = write(tmp_path / "in.de", ["", "hund katze rot"])
    assert main(["translate", str(out), "--input", inp, "--plot-attention", str(png),
                 "--plot-line", "2", "--output", str(tmp_path / "o.en")]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, src_vocab, tgt_vocab, _ = load_run(out)
    src = src_vocab.encode("hund katze rot")
    alpha = attention_matrix(model, src, tgt_vocab.encode("dog cat red"))
    assert alpha.shape[1] == len(src)
    assert torch.allclose(alpha.sum(-1), torch.ones(alpha.shape[0]), atol=1e-5)
    assert main(["translate", str(out), "--input", inp, "--plot-attention", str(png),
                 "--plot-line", "1"]) == 2  # an empty line has nothing to show


def test_window_sets_the_qrnn_encoders_and_decoders_convolution(run, tmp_path, capsys):
    """`rnnkit train seq2seq --cell qrnn --window 1`: every layer of the encoder (both
    directions) and of the decoder built with it, recorded in the run; a per-layer list, the
    flag with another cell and another window on resume are refused."""
    from rnnkit.tasks.seq2seq import load_run

    _, files = run
    out = tmp_path / "qrnn"
    base = ["train", "seq2seq", "--src", files["tr.de"], "--tgt", files["tr.en"],
            "--vocab-size", "60", "--embedding-size", "8", "--encoder-hidden", "8",
            "--decoder-hidden", "16", "--max-tokens", "400", "--max-steps", "2",
            "--no-progress", "--out", str(out)]
    assert main([*base, "--cell", "qrnn", "--window", "1"]) == 0
    model, _, _, config = load_run(out)
    assert config["model"]["cell_options"] == {"window": 1}
    windows = [c.window for layer in model.encoder.layers for c in (layer.fwd.cell,
                                                                    layer.bwd.cell)]
    windows += [layer.cell.window for layer in model.decoder.layers]
    assert windows == [1] * (2 * 2 + 1)  # 2 bidirectional encoder layers, 1 decoder layer
    hyp = tmp_path / "hyp.en"
    assert main(["translate", str(out), "--input", files["va.de"], "--beam", "3", "--output",
                 str(hyp)]) == 0  # the decoder's step path on the QRNN
    assert len(hyp.read_text().splitlines()) == 30
    capsys.readouterr()
    assert main([*base, "--cell", "qrnn", "--window", "2", "--resume"]) == 2
    assert "--window" in capsys.readouterr().err
    assert main([*base[:-1], str(tmp_path / "b"), "--cell", "qrnn", "--window", "2,1"]) == 2
    assert "one window, for every layer" in capsys.readouterr().err
    assert main([*base[:-1], str(tmp_path / "c"), "--window", "1"]) == 2
    assert "only the qrnn cell" in capsys.readouterr().err
