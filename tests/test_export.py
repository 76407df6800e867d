"""ONNX export: the language model, tagger and classifier exported with dynamic batch size and
sequence length give PyTorch's outputs in onnxruntime at another batch size and length."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rnnkit.cli import main
from rnnkit.data.vocab import Vocabulary
from rnnkit.export import (
    SPECS,
    ExportError,
    export_onnx,
    export_torchscript,
    resize_examples,
    run_onnx,
)
from rnnkit.models.classifier import Classifier, EncoderConfig
from rnnkit.models.lm import LanguageModel, LMConfig
from rnnkit.models.tagger import Tagger, TaggerConfig
from rnnkit.training.checkpoint import RunDir

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "lm": LanguageModel(LMConfig(vocab_size=13, embedding_size=6, hidden_size=8,
                                     num_layers=2, cell="lstm")),
        "tagger": Tagger(TaggerConfig(num_words=20, num_tags=5, num_chars=9, word_dim=6,
                                      char_dim=4, char_hidden=3, hidden_size=5, cell="gru")),
        "classifier": Classifier(EncoderConfig(num_words=20, num_labels=3, embed_dim=6,
                                               hidden_size=5, pooling="max")),
    }


@pytest.mark.parametrize("task", ["lm", "tagger", "classifier"])
def test_onnx_matches_pytorch_at_other_batch_and_length(task: str, tmp_path: Path) -> None:
    model = _models()[task].eval()
    spec = SPECS[task](model)
    path = tmp_path / f"{task}.onnx"
    export_onnx(spec, path)
    traced_batch, traced_steps = spec.inputs[0].shape
    inputs = resize_examples(spec, batch=4, steps=9)
    assert (traced_batch, traced_steps) != (4, 9) and inputs[0].shape == (4, 9)
    got = run_onnx(path, dict(zip(spec.input_names, inputs)))
    with torch.no_grad():
        want = spec.module(*inputs)
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    assert len(got) == len(want)
    if task == "tagger":  # rows past a sentence's length are undefined: compare the rest
        lengths = inputs[1]
        assert int(lengths.min()) < 9  # padding really was exercised
        mask = torch.arange(9)[None, :] < lengths[:, None]
        got, want = [got[0][mask]], [want[0][mask]]
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert float(want[0].abs().sum()) > 0


@pytest.mark.parametrize("cell,task", [("scan-gru", "lm"), ("scan-lstm", "lm"), ("qrnn", "lm"),
                                       ("qrnn", "tagger"), ("scan-gru", "classifier")])
def test_scan_cells_export_as_a_loop_over_any_length(cell: str, task: str,
                                                     tmp_path: Path) -> None:
    """The scan cells export with a dynamic length: the recurrence is an ONNX Loop (not
    unrolled to the traced 5 or 6 steps), checked in onnxruntime at batch 4 and 9 and 40
    steps, with padding (tagger, classifier) and the final states (language model)."""
    import onnx

    torch.manual_seed(0)
    model = {"lm": lambda: LanguageModel(LMConfig(vocab_size=13, embedding_size=6,
                                                  hidden_size=8, num_layers=2, cell=cell)),
             "tagger": lambda: Tagger(TaggerConfig(num_words=20, num_tags=5, num_chars=9,
                                                   word_dim=6, char_dim=4, char_hidden=3,
                                                   hidden_size=5, cell=cell)),
             "classifier": lambda: Classifier(EncoderConfig(num_words=20, num_labels=3,
                                                            embed_dim=6, hidden_size=5,
                                                            pooling="max", cell=cell))}[task]()
    spec = SPECS[task](model.eval())
    path = tmp_path / "m.onnx"
    export_onnx(spec, path)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Loop" in ops
    for steps in (9, 40):
        inputs = resize_examples(spec, batch=4, steps=steps)
        got = run_onnx(path, dict(zip(spec.input_names, inputs)))
        with torch.no_grad():
            want = spec.module(*inputs)
        want = [want] if isinstance(want, torch.Tensor) else list(want)
        if task == "tagger":
            mask = torch.arange(steps)[None, :] < inputs[1][:, None]
            got, want = [got[0][mask]], [want[0][mask]]
        assert len(got) == len(want)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_lm_state_carries_across_exported_windows(tmp_path: Path) -> None:
    model = _models()["lm"].eval()
    spec = SPECS["lm"](model)
    export_onnx(spec, tmp_path / "lm.onnx")
    tokens = torch.randint(0, 13, (3, 12))
    with torch.no_grad():
        full = model(tokens).logits
    zeros = [torch.zeros(3, 8) for _ in spec.input_names[1:]]
    first = run_onnx(tmp_path / "lm.onnx", dict(zip(spec.input_names, [tokens[:, :7], *zeros])))
    second = run_onnx(tmp_path / "lm.onnx",
                      dict(zip(spec.input_names, [tokens[:, 7:], *first[1:]])))
    torch.testing.assert_close(torch.cat([first[0], second[0]], 1), full, rtol=1e-4,
                               atol=1e-5)


def test_torchscript_export_runs_at_other_sizes(tmp_path: Path) -> None:
    model = _models()["classifier"].eval()
    spec = SPECS["classifier"](model)
    export_torchscript(spec, tmp_path / "c.pt")
    inputs = resize_examples(spec, batch=5, steps=11)
    loaded = torch.jit.load(str(tmp_path / "c.pt"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), model(*inputs), rtol=1e-5, atol=1e-6)


def test_cell_without_native_kernel_is_refused(tmp_path: Path) -> None:
    model = Classifier(EncoderConfig(num_words=9, num_labels=2, embed_dim=4, hidden_size=3,
                                     cell="peephole"))
    with pytest.raises(ExportError, match=r"layer .*PeepholeLSTMCell.*native kernel"):
        export_onnx(SPECS["classifier"](model), tmp_path / "x.onnx")


def test_rnnkit_export_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = _models()["classifier"]
    run = RunDir(tmp_path / "run")
    run.write_config({"task": "classifier", "model": model.config.to_dict()})
    run.save_weights(model)
    Vocabulary([f"w{i}" for i in range(20)], specials=()).save(run.path / "vocab.json")
    Vocabulary(["a", "b", "c"], specials=()).save(run.path / "labels.json")
    out = tmp_path / "c.onnx"
    assert main(["export", str(run.path), "--onnx", str(out)]) == 0
    assert out.stat().st_size > 0
    assert "onnxruntime agrees with PyTorch at batch 4, length 9" in capsys.readouterr().err
    assert main(["export", str(run.path)]) == 2  # neither --onnx nor --torchscript


def test_rnnkit_export_command_for_a_language_model(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    model = _models()["lm"]
    run = RunDir(tmp_path / "lm")
    run.write_config({"task": "lm", "model": model.config.to_dict(),
                      "data": {"level": "char"}})
    run.save_weights(model)
    Vocabulary(["<unk>", "<eos>", *"abcdefghijk"]).save(run.path / "vocab.json")
    assert main(["export", str(run.path), "--onnx", str(tmp_path / "lm.onnx"),
                 "--torchscript", str(tmp_path / "lm.pt")]) == 0
    out = capsys.readouterr().err
    assert "inputs tokens, h0_0, c0_0, h0_1, c0_1; outputs logits, h_0, c_0, h_1, c_1" in out
    assert "onnxruntime agrees with PyTorch" in out
