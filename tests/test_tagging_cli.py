"""The tagger and classifier commands end to end, on tiny files, and their errors."""

import json
import random

import numpy as np
import pytest

from rnnkit.cli import main

COMMON = ["--no-progress", "--threads", "1", "--seed", "0"]


def ner_file(path, rng, n):
    """Capitalised words are entities of type by their first letter; BIO; a -DOCSTART-."""
    lines = ["-DOCSTART- O", ""]
    for _ in range(n):
        for _ in range(rng.randint(2, 6)):
            if rng.random() < 0.3:
                first = rng.choice("AB")
                kind = "PER" if first == "A" else "LOC"
                for j in range(rng.randint(1, 2)):
                    word = (first if j == 0 else rng.choice("CD")) + rng.choice("xyz")
                    lines.append(f"{word} {'B' if j == 0 else 'I'}-{kind}")
            lines.append(f"{rng.choice(['the', 'of', 'went', 'to', 'a'])} O")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_tagger_train_evaluate_predict(tmp_path, capsys):
    rng = random.Random(0)
    ner_file(tmp_path / "train.conll", rng, 120)
    ner_file(tmp_path / "dev.conll", rng, 30)
    run = tmp_path / "run"
    assert main(["train", "tagger", "--train", str(tmp_path / "train.conll"), "--dev",
                 str(tmp_path / "dev.conll"), "--crf", "--tag-scheme", "bioes", "--epochs", "8",
                 "--hidden-size", "16", "--embedding-size", "16", "--char-dim", "8",
                 "--char-hidden", "8", "--dropout", "0", "--batch-size", "8", "--lr", "0.01",
                 "--out", str(run), *COMMON]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "tagger" and config["data"]["scheme"] == "bioes"
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(tmp_path / "dev.conll"), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert {"accuracy", "precision", "recall", "f1", "per_type"} <= set(scores)
    assert scores["accuracy"] > 0.95 and scores["f1"] > 0.9
    assert set(scores["per_type"]) == {"PER", "LOC"}
    out = tmp_path / "pred.conll"
    assert main(["predict", str(run), "--input", str(tmp_path / "dev.conll"), "--output",
                 str(out)]) == 0
    pred, gold = out.read_text().splitlines(), (tmp_path / "dev.conll").read_text().splitlines()
    assert len(pred) == len(gold) and pred[0] == "-DOCSTART- O"
    assert [p.split()[0] for p in pred if p] == [g.split()[0] for g in gold if g]
    tags = {p.split()[1] for p in pred if p}
    assert tags <= {"O", "B-PER", "I-PER", "B-LOC", "I-LOC"}  # written back as BIO
    same = sum(p == g for p, g in zip(pred, gold))
    assert same / len(gold) > 0.95


def test_tagger_conllu_upos_and_text_input(tmp_path, capsys):
    rng = random.Random(1)
    rows = []
    for _ in range(80):
        rows.append("# text = x")
        words = [rng.choice(["the", "a"]), rng.choice(["cat", "dog", "man"]),
                 rng.choice(["runs", "sleeps"]), "."]
        tags = ["DET", "NOUN", "VERB", "PUNCT"]
        for i, (w, t) in enumerate(zip(words, tags), 1):
            rows.append(f"{i}\t{w}\t{w}\t{t}\tXX\t_\t0\tdep\t_\t_")
        rows.append("")
    path = tmp_path / "a.conllu"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "tagger", "--train", str(path), "--dev", str(path), "--epochs", "4",
                 "--hidden-size", "8", "--embedding-size", "8", "--char-encoder", "cnn",
                 "--char-hidden", "8", "--dropout", "0", "--lr", "0.02", "--batch-size", "8",
                 "--out", str(run), *COMMON]) == 0
    capsys.readouterr()
    main(["evaluate", str(run), "--data", str(path), "--json"])
    scores = json.loads(capsys.readouterr().out)
    assert scores["accuracy"] == 1.0 and "f1" not in scores
    text = tmp_path / "in.txt"
    text.write_text("the dog sleeps .\n\na cat runs .\n", encoding="utf-8")
    assert main(["predict", str(run), "--input", str(text)]) == 0
    assert capsys.readouterr().out == "DET NOUN VERB PUNCT\n\nDET NOUN VERB PUNCT\n"
    # encode is for classifiers
    assert main(["encode", str(run), "--input", str(text), "--output",
                 str(tmp_path / "v.npy")]) == 2
    assert "does not apply to a tagger run" in capsys.readouterr().err


def test_classifier_train_evaluate_predict_encode(tmp_path, capsys):
    rng = random.Random(2)

    def write(path, n):
        lines = ["sentence\tlabel"]
        for _ in range(n):
            label = rng.choice(["pos", "neg"])
            word = "great" if label == "pos" else "awful"
            words = [rng.choice(["it", "was", "a", "film"]) for _ in range(4)] + [word]
            rng.shuffle(words)
            lines.append(" ".join(words) + f"\t{label}")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    write(tmp_path / "train.tsv", 200)
    write(tmp_path / "dev.tsv", 40)
    run = tmp_path / "run"
    assert main(["train", "classifier", "--train", str(tmp_path / "train.tsv"), "--dev",
                 str(tmp_path / "dev.tsv"), "--epochs", "5", "--embedding-size", "8",
                 "--hidden-size", "8", "--dropout", "0", "--lr", "0.02", "--batch-size", "16",
                 "--pooling", "attention", "--out", str(run), *COMMON]) == 0
    capsys.readouterr()
    main(["evaluate", str(run), "--data", str(tmp_path / "dev.tsv"), "--json"])
    scores = json.loads(capsys.readouterr().out)
    assert scores["accuracy"] == 1.0 and scores["macro_f1"] == 1.0
    text = tmp_path / "in.txt"
    text.write_text("a great film\n\nit was awful\n", encoding="utf-8")
    assert main(["predict", str(run), "--input", str(text)]) == 0
    assert capsys.readouterr().out == "pos\n\nneg\n"
    assert main(["encode", str(run), "--input", str(text), "--output",
                 str(tmp_path / "v.npy")]) == 0
    vecs = np.load(tmp_path / "v.npy")
    assert vecs.shape == (3, 16) and vecs.dtype == np.float32
    assert not vecs[1].any() and vecs[0].any()


@pytest.mark.parametrize("content,args,message", [
    ("a O\nb B-X extra\n", [], r"bad\.conll:2: expected 2 columns"),
    ("a O\nb Q-X\n", ["--scheme", "bio"], r"bad\.conll:2: tag 'Q-X' is not a BIO tag"),
])
def test_tagger_bad_input_named(tmp_path, capsys, content, args, message):
    import re
    path = tmp_path / "bad.conll"
    path.write_text(content, encoding="utf-8")
    assert main(["train", "tagger", "--train", str(path), "--out", str(tmp_path / "r"),
                 *args, *COMMON]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_classifier_missing_label_named(tmp_path, capsys):
    path = tmp_path / "bad.tsv"
    path.write_text("sentence\tlabel\ngood film\t1\nno label\n", encoding="utf-8")
    assert main(["train", "classifier", "--train", str(path), "--out", str(tmp_path / "r"),
                 *COMMON]) == 2
    err = capsys.readouterr().err
    assert "bad.tsv:3:" in err and "label column is missing" in err


def test_classifier_defaults_are_the_benchmark_configuration(tmp_path):
    """Only the data and a bound given: the SST-2 benchmark's configuration
    (benchmarks/classification_quality.py), which reached 84.98% dev accuracy that way."""
    lines = ["sentence\tlabel"] + [f"w{i % 7} w{i % 3} x\t{'ab'[i % 2]}" for i in range(40)]
    lines.append("lonely x\ta")
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "classifier", "--train", str(tmp_path / "train.tsv"), "--max-steps",
                 "1", "--out", str(run), *COMMON]) == 0
    config = json.loads((run / "config.json").read_text())
    t, m = config["train"], config["model"]
    assert (t["lr"], t["weight_decay"], t["schedule"], t["lr_factor"], t["patience"],
            t["eval_every"], t["clip"]) == (3e-3, 0.01, "plateau", 0.5, 6, 500, 5.0)
    assert (m["dropout"], m["pooling"], m["embed_dim"], m["hidden_size"]) == (0.5, "max", 128, 128)
    assert config["data"]["batch_size"] == 64
    words = json.loads((run / "vocab.json").read_text())
    assert "w0" in str(words) and "lonely" not in str(words)  # seen once: <unk> (min-freq 2)


@pytest.mark.parametrize("task", ["tagger", "classifier"])
def test_window_sets_the_qrnn_encoders_convolution_per_layer(tmp_path, capsys, task):
    """`rnnkit train tagger|classifier --cell qrnn --window 2,1` (the flag of `train lm` and
    `train asr`): recorded in the run, both directions of each layer built with it, refused
    for another cell and as a change on resume; a run written before the option (no cell
    options in its config) loads with the cell's default window."""
    from rnnkit.tasks import classification, tagging

    if task == "tagger":
        ner_file(tmp_path / "train.conll", random.Random(0), 20)
        data = [str(tmp_path / "train.conll"), "--char-dim", "4", "--char-hidden", "4",
                "--embedding-size", "8"]
    else:
        lines = ["sentence\tlabel"] + [f"w{i % 7} w{i % 3} x\t{'ab'[i % 2]}" for i in range(40)]
        (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        data = [str(tmp_path / "train.tsv"), "--embedding-size", "8"]
    base = ["train", task, "--train", *data, "--hidden-size", "8", "--max-steps", "2",
            "--num-layers", "2", *COMMON]
    load = tagging.load if task == "tagger" else classification.load

    def layers(model):  # the recurrent stack's layers
        return (model.rnn if task == "tagger" else model.encoder.rnn).layers

    run = tmp_path / "qrnn"
    assert main([*base, "--cell", "qrnn", "--window", "2,1", "--out", str(run)]) == 0
    model, config = load(run)[:2]
    assert config["model"]["layer_cell_options"] == [{"window": 2}, {"window": 1}]
    assert [(layer.fwd.cell.window, layer.bwd.cell.window) for layer in layers(model)] == [
        (2, 2), (1, 1)]
    capsys.readouterr()
    assert main([*base, "--cell", "qrnn", "--window", "1", "--out", str(run), "--resume"]) == 2
    assert "--window" in capsys.readouterr().err
    assert main([*base, "--cell", "lstm", "--window", "1", "--out", str(tmp_path / "b")]) == 2
    assert "only the qrnn cell" in capsys.readouterr().err
    one = tmp_path / "one"
    assert main([*base, "--cell", "qrnn", "--window", "1", "--out", str(one)]) == 0
    model, config = load(one)[:2]
    assert config["model"]["cell_options"] == {"window": 1}
    assert {layer.fwd.cell.window for layer in layers(model)} == {1}
    plain = tmp_path / "plain"
    assert main([*base, "--cell", "qrnn", "--out", str(plain)]) == 0
    model, config = load(plain)[:2]
    assert (config["model"]["cell_options"], config["model"]["layer_cell_options"]) == ({}, [])
    assert {layer.fwd.cell.window for layer in layers(model)} == {2}
    written = json.loads((plain / "config.json").read_text())  # as written before the option
    for key in ("cell_options", "layer_cell_options"):
        del written["model"][key]
    (plain / "config.json").write_text(json.dumps(written))
    model = load(plain)[0]
    assert {layer.fwd.cell.window for layer in layers(model)} == {2}
