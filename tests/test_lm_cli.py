"""The command line: rnnkit train lm / evaluate / generate, and one-line errors on bad input."""

import json
import math
import shutil

import pytest

from rnnkit.cli import main

TRAIN = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n"
         "Speak, speak.\n\n") * 20
VALID = "First Citizen:\nBefore we proceed, hear me speak.\n\nAll:\nSpeak, speak.\n"
SMALL = ["--num-layers", "1", "--hidden-size", "16", "--embedding-size", "8", "--batch-size", "4",
         "--bptt", "16", "--no-progress", "--seed", "1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained character model."""
    tmp = tmp_path_factory.mktemp("lm")
    (tmp / "train.txt").write_text(TRAIN, encoding="utf-8")
    (tmp / "valid.txt").write_text(VALID, encoding="utf-8")
    out = tmp / "run"
    rc = main(["train", "lm", "--train", str(tmp / "train.txt"), "--dev",
               str(tmp / "valid.txt"), "--max-steps", "60", "--lr", "0.02", "--warmup", "0",
               "--out", str(out), "--sample-length", "20", *SMALL])
    assert rc == 0
    return out


def one_line_error(capsys, argv, *needles):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("rnnkit: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_train_writes_a_complete_run(run_dir):
    for name in ("config.json", "vocab.json", "model.safetensors", "log.jsonl",
                 "last/trainer.json", "last/optimizer.safetensors", "last/rng.safetensors"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["task"] == "lm" and config["data"]["level"] == "char"
    assert config["model"]["hidden_size"] == 16 and config["train"]["max_steps"] == 60


def test_evaluate_json(run_dir, tmp_path, capsys):
    (tmp_path / "v.txt").write_text(VALID, encoding="utf-8")
    assert main(["evaluate", str(run_dir), "--data", str(tmp_path / "v.txt"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"loss", "perplexity", "tokens", "bits_per_char", "unknown_share"}
    assert metrics["unknown_share"] == 0.0
    assert metrics["tokens"] == len(VALID)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
    assert metrics["bits_per_char"] == pytest.approx(metrics["loss"] / math.log(2))
    vocab_size = len(json.loads((run_dir / "vocab.json").read_text())["tokens"])
    assert metrics["loss"] < math.log(vocab_size) - 0.5  # it learned something
    # scored as during training (32 streams, windows of 16): the best weights were loaded
    assert main(["evaluate", str(run_dir), "--data", str(tmp_path / "v.txt"), "--json",
                 "--batch-size", "32", "--bptt", "16"]) == 0
    as_trained = json.loads(capsys.readouterr().out)
    logged = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    best = min(r["loss"] for r in logged if r["kind"] == "eval")
    assert as_trained["loss"] == pytest.approx(best, abs=1e-5)


def test_generate_is_reproducible(run_dir, capsys):
    argv = ["generate", str(run_dir), "--prompt", "First", "--max-new-tokens", "40",
            "--temperature", "0.8", "--top-k", "5", "--top-p", "0.9", "--seed", "3"]
    assert main(argv) == 0
    a = capsys.readouterr().out
    assert main(argv) == 0
    b = capsys.readouterr().out
    assert a == b and a.startswith("First") and len(a) in (45, 46)  # + a final newline
    assert main(["generate", str(run_dir), "--prompt", "All", "--greedy",
                 "--max-new-tokens", "10"]) == 0
    g = capsys.readouterr().out
    assert main(["generate", str(run_dir), "--prompt", "All", "--top-k", "1",
                 "--max-new-tokens", "10", "--seed", "9"]) == 0
    assert capsys.readouterr().out == g


def test_bad_input_gives_one_line_errors(run_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    one_line_error(capsys, ["train", "lm", "--train", str(empty), "--out",
                            str(tmp_path / "x")], "empty.txt", "empty")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"abc\ndef\xff\n")
    one_line_error(capsys, ["evaluate", str(run_dir), "--data", str(latin)],
                   "latin.txt:2", "not valid UTF-8")
    one_line_error(capsys, ["evaluate", str(run_dir), "--data", str(tmp_path)],
                   "is a directory")
    one_line_error(capsys, ["generate", str(run_dir), "--prompt", "Speak§Z"],
                   "--prompt", "'§'", "not in the character vocabulary")
    one_line_error(capsys, ["generate", str(run_dir), "--top-p", "2"], "--top-p")
    one_line_error(capsys, ["train", "lm", "--out", str(run_dir), *SMALL],
                   "already holds a run", "--resume")


def test_broken_run_directories(run_dir, tmp_path, capsys):
    data = tmp_path / "v.txt"
    data.write_text(VALID, encoding="utf-8")

    def broken(name):
        target = tmp_path / name
        shutil.copytree(run_dir, target)
        return target

    missing = broken("missing")
    (missing / "model.safetensors").unlink()
    one_line_error(capsys, ["evaluate", str(missing), "--data", str(data)],
                   "model.safetensors: missing")
    no_vocab = broken("no_vocab")
    (no_vocab / "vocab.json").unlink()
    one_line_error(capsys, ["generate", str(no_vocab)], "vocab.json: missing")
    other = broken("other_vocab")
    vocab = json.loads((other / "vocab.json").read_text())
    vocab["tokens"].append("§")
    (other / "vocab.json").write_text(json.dumps(vocab))
    one_line_error(capsys, ["generate", str(other)], "does not match the weights")
    corrupt = broken("corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    one_line_error(capsys, ["evaluate", str(corrupt), "--data", str(data)], "corrupt")
    pickled = broken("pickled")
    (pickled / "model.safetensors").write_bytes(b"PK\x03\x04torch.save archive")
    one_line_error(capsys, ["generate", str(pickled)], "pickle", "never unpickles")
    config = broken("tagger")
    cfg = json.loads((config / "config.json").read_text())
    cfg["task"] = "tagger"
    (config / "config.json").write_text(json.dumps(cfg))
    one_line_error(capsys, ["train", "lm", "--resume", "--out", str(config)],
                   "is a 'tagger' run, not a 'lm' run")
    one_line_error(capsys, ["evaluate", str(tmp_path / "nowhere"), "--data", str(data)],
                   "nowhere")


def test_resume_from_the_command_line(run_dir, tmp_path, capsys):
    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    assert main(["train", "lm", "--resume", "--out", str(resumed), "--max-steps", "65",
                 "--no-progress", "--sample-length", "0", "--log-every", "1"]) == 0
    out = capsys.readouterr().err  # notes go to stderr
    assert "resuming" in out and "65 steps" in out
    steps = [json.loads(r)["step"] for r in (resumed / "log.jsonl").read_text().splitlines()
             if '"train"' in r]
    assert steps[-1] == 65


def test_generation_streams_in_constant_memory(run_dir, capsys):
    """`rnnkit generate` writes tokens as they are drawn (issue 13, item 14): a request for
    a billion tokens yields its first pieces at once, and the streamed text is exactly the
    model's generate() decoded."""
    import itertools

    import torch

    from rnnkit.data.text import decode
    from rnnkit.tasks import lm

    pieces = lm.stream_text(run_dir, "First", 10**9, temperature=0.8, seed=3)
    head = list(itertools.islice(pieces, 6))
    assert head[0] == "First" and all(len(p) == 1 for p in head[1:])
    pieces.close()
    model, vocab, _ = lm.load_lm(run_dir)
    ids = lm.prompt_ids("First", vocab, "char")
    want = "First" + decode(model.generate(ids, 40, temperature=0.8, seed=3), vocab, "char")
    assert lm.generate_text(run_dir, "First", 40, temperature=0.8, seed=3) == want
    assert main(["generate", str(run_dir), "--prompt", "First", "--max-new-tokens", "40",
                 "--temperature", "0.8", "--seed", "3"]) == 0
    assert capsys.readouterr().out == want + ("" if want.endswith("\n") else "\n")
    assert torch.equal(model.generate(ids, 5, seed=1), model.generate(ids, 5, seed=1))


def test_word_level_defaults_are_the_benchmark_configuration():
    """--level word with no model option: the WikiText-2 benchmark's model and schedule; an
    adaptive softmax from 20,000 words (not below, not with --tie-weights or --adaptive none);
    the character defaults unchanged."""
    from rnnkit.tasks.lm import (
        ADAPTIVE_CUTOFFS,
        ADAPTIVE_FROM,
        LMOptions,
        _data_section,
        model_config,
        train_defaults,
    )

    word = model_config(LMOptions(level="word"), 33_278, "word")
    assert (word.num_layers, word.hidden_size, word.embedding_size) == (2, 512, 256)
    assert (word.dropout, word.embedding_dropout, word.output_dropout) == (0.3, 0.1, 0.3)
    assert word.adaptive_cutoffs == ADAPTIVE_CUTOFFS == [2000, 10000]
    assert model_config(LMOptions(level="word"), ADAPTIVE_FROM - 1, "word").adaptive_cutoffs \
        is None
    assert model_config(LMOptions(level="word", adaptive="none"), 33_278,
                        "word").adaptive_cutoffs is None
    assert model_config(LMOptions(level="word", tie_weights=True, embedding_size=512), 33_278,
                        "word").adaptive_cutoffs is None
    assert model_config(LMOptions(level="word", hidden_size=200), 33_278,
                        "word").hidden_size == 200
    char = model_config(LMOptions(), 65, "char")
    assert (char.hidden_size, char.embedding_size, char.dropout, char.adaptive_cutoffs) == \
        (384, 64, 0.1, None)
    assert _data_section(LMOptions(level="word", train="x")).bptt == 70
    assert _data_section(LMOptions(level="word", train="x", bptt=35)).bptt == 35
    assert _data_section(LMOptions(train="x")).bptt == 64
    words = train_defaults(False, "word")
    assert (words.lr, words.warmup, words.clip, words.min_lr_ratio) == (2e-3, 100, 0.5, 0.02)
    assert train_defaults(False).clip == 1.0


def test_qrnn_windows_per_layer_from_the_command_line(tmp_path, capsys):
    """`--window 2,1`: AWD-LSTM's QRNN, window 2 in the first layer and 1 above; recorded in
    the run, refused for another cell, a bad value or count, and a change on resume."""
    (tmp_path / "train.txt").write_text(TRAIN, encoding="utf-8")
    out = tmp_path / "qrnn"
    small = [*SMALL, "--num-layers", "2", "--cell", "qrnn"]
    assert main(["train", "lm", "--train", str(tmp_path / "train.txt"), "--max-steps", "3",
                 "--out", str(out), "--sample-length", "5", "--window", "2,1", *small]) == 0
    model = json.loads((out / "config.json").read_text())["model"]
    assert model["layer_cell_options"] == [{"window": 2}, {"window": 1}]
    from rnnkit.tasks import lm
    loaded, _, _ = lm.load_lm(out)
    assert [layer.cell.window for layer in loaded.rnn.layers] == [2, 1]
    capsys.readouterr()
    train = ["train", "lm", "--train", str(tmp_path / "train.txt"), "--max-steps", "3"]
    one_line_error(capsys, [*train, "--out", str(tmp_path / "a"), *SMALL, "--window", "1"],
                   "--window 1", "only the qrnn cell")
    one_line_error(capsys, [*train, "--out", str(tmp_path / "b"), *small, "--window", "3"],
                   "--window", "'3'")
    one_line_error(capsys, [*train, "--out", str(tmp_path / "c"), *small, "--window",
                            "2,1,1"], "one per layer (2 layers)")
    one_line_error(capsys, ["train", "lm", "--resume", "--out", str(out), "--window", "1"],
                   "--window 1 (the run has 2,1)")
