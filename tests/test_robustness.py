"""Never losing work: checkpoints load without unpickling and refuse pickles, corrupt files and
runs of another task with clear errors; an interrupted write leaves the previous checkpoint
usable; a NaN loss is skipped, rolled back or stops the run, as configured, and is logged."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from rnnkit.cli import main
from rnnkit.errors import CheckpointError, TrainingError
from rnnkit.training import RunDir, StepOutput, TrainConfig, Trainer, TrainingTask
from rnnkit.training import checkpoint as ckpt

PICKLE = b"\x80\x04K\x01."  # pickle.dumps(1), protocol 4
ZIP = b"PK\x03\x04" + b"\x00" * 40  # the start of a torch.save zip archive


class Toy(TrainingTask):
    """Linear regression on 12 fixed examples, batches of 3; ``poison`` batch numbers (global
    call counts) return a NaN loss the first time they are seen."""

    def __init__(self, poison: tuple[int, ...] = ()) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(12, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
        self.poison, self.calls = set(poison), 0

    def train_batches(self, epoch: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        yield from torch.randperm(12, generator=generator).split(3)

    def steps_per_epoch(self) -> int:
        return 4

    def loss(self, model: nn.Module, batch: torch.Tensor, carry: object) -> StepOutput:
        self.calls += 1
        loss = ((model(self.x[batch]).squeeze(-1) - self.y[batch]) ** 2).mean()
        if self.calls in self.poison:
            self.poison.discard(self.calls)
            loss = loss * math.nan
        return StepOutput(loss, len(batch))

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"loss": float(((model(self.x).squeeze(-1) - self.y) ** 2).mean())}


def _train(tmp_path: Path, on_nan: str, poison: tuple[int, ...], **kw) -> tuple[Trainer, list]:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    config = TrainConfig(epochs=3, lr=0.05, progress=False, on_nan=on_nan, log_every=1, **kw)
    trainer = Trainer(model, Toy(poison), RunDir(tmp_path / "run"), config)
    try:
        trainer.fit()
    finally:
        log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    return trainer, log


# -- NaN / inf losses -------------------------------------------------------------------------
def test_nan_stop_raises_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"step 6: loss is nan; training stopped.*step 4"):
        _train(tmp_path, "stop", (6,))
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1] == {"kind": "bad_step", "step": 6, "reason": "loss is nan", "action": "stop"}
    state, _ = RunDir(tmp_path / "run").load_last(nn.Linear(4, 1),
                                                  torch.optim.AdamW(nn.Linear(4, 1).parameters()))
    assert state["step"] == 4  # the evaluation at the end of epoch 0


def test_nan_skip_drops_the_step_and_logs_it(tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    trainer, log = _train(tmp_path, "skip", (3, 7))
    assert trainer.state["step"] == 12 - 2  # two steps skipped
    skips = [r for r in log if r["kind"] == "bad_step"]
    assert [(r["step"], r["action"]) for r in skips] == [(3, "skip"), (6, "skip")]
    assert "step skipped (--on-nan skip)" in capsys.readouterr().err
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert trainer.metrics["loss"] < 0.8 * trainer.state["first_loss"]  # it still learned


def test_nan_rollback_reloads_the_last_checkpoint_with_half_the_lr(tmp_path: Path) -> None:
    trainer, log = _train(tmp_path, "rollback", (7,))
    rollbacks = [r for r in log if r["kind"] == "bad_step"]
    assert len(rollbacks) == 1
    assert rollbacks[0]["action"] == "rollback" and rollbacks[0]["to_step"] == 4
    assert rollbacks[0]["lr_scale"] == 0.5
    assert trainer.state["step"] == 12  # steps 5 and 6 were redone after the rollback
    steps = [r["step"] for r in log if r["kind"] == "train"]
    assert steps.count(5) == 2 and steps.count(6) == 2
    lrs = {r["step"]: r["lr"] for r in log if r["kind"] == "train"}
    assert lrs[12] == pytest.approx(0.025)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_rollback_before_any_evaluation_goes_back_to_the_start(tmp_path: Path) -> None:
    trainer, log = _train(tmp_path, "rollback", (2,))
    back = next(r for r in log if r["kind"] == "bad_step")
    assert back["to_step"] == 0 and trainer.state["step"] == 12


# -- pickles, corrupt files, other tasks -----------------------------------------------------
def _run_dir(tmp_path: Path, task: str = "classifier") -> RunDir:
    from rnnkit.data.vocab import Vocabulary
    from rnnkit.models.classifier import Classifier, EncoderConfig
    model = Classifier(EncoderConfig(num_words=5, num_labels=2, embed_dim=3, hidden_size=2))
    run = RunDir(tmp_path / "run")
    run.write_config({"task": task, "model": model.config.to_dict(),
                      "data": {"text_column": 0, "label_column": 1, "header": False,
                               "lower": False}})
    run.save_weights(model)
    Vocabulary(list("abcde"), specials=()).save(run.path / "vocab.json")
    Vocabulary(["neg", "pos"], specials=()).save(run.path / "labels.json")
    return run


def _cli_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rnnkit: error: ") and "\n" not in err
    return err


@pytest.mark.parametrize("content", [PICKLE, ZIP])
def test_a_pickle_in_place_of_weights_is_refused(tmp_path: Path, content: bytes,
                                                  capsys: pytest.CaptureFixture) -> None:
    run = _run_dir(tmp_path)
    (run.path / "model.safetensors").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"is a pickle file.*never unpickles"):
        ckpt.load_tensors(run.path / "model.safetensors")
    assert "never unpickles" in _cli_error(capsys, "export", str(run.path), "--onnx",
                                           str(tmp_path / "x.onnx"))


def test_a_run_holding_only_a_pickle_is_refused(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    (run.path / "model.safetensors").unlink()
    (run.path / "model.pt").write_bytes(PICKLE)
    with pytest.raises(CheckpointError, match=r"missing.*model\.pt.*pickle files are never"):
        run.load_weights(nn.Linear(1, 1))
    with pytest.raises(CheckpointError, match="pickle"):
        ckpt.load_tensors(run.path / "model.pt")


@pytest.mark.parametrize("name", ["model.pt", "last/weights.pth", "extra.pkl"])
def test_a_run_holding_a_pickle_beside_its_weights_is_refused(
        tmp_path: Path, name: str, capsys: pytest.CaptureFixture) -> None:
    run = _run_dir(tmp_path)
    (run.path / name).parent.mkdir(exist_ok=True)
    (run.path / name).write_bytes(PICKLE)
    with pytest.raises(CheckpointError, match=rf"holds pickle files \({name}\).*refuses"):
        run.read_config()
    err = _cli_error(capsys, "export", str(run.path), "--onnx", str(tmp_path / "x.onnx"))
    assert "holds pickle files" in err and name in err
    assert not (tmp_path / "x.onnx").exists()


def test_a_pickled_resume_checkpoint_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    Trainer(nn.Linear(4, 1), Toy(), RunDir(tmp_path / "run"),
            TrainConfig(epochs=1, progress=False)).fit()
    (tmp_path / "run" / "last" / "optimizer.safetensors").write_bytes(PICKLE)
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors: is a pickle file"):
        Trainer(nn.Linear(4, 1), Toy(), RunDir(tmp_path / "run"),
                TrainConfig(epochs=2, progress=False), resume=True).fit()


@pytest.mark.parametrize("damage", ["random", "truncated", "empty"])
def test_corrupt_weights_are_a_clear_error(tmp_path: Path, damage: str,
                                           capsys: pytest.CaptureFixture) -> None:
    run = _run_dir(tmp_path)
    path = run.path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"random": os.urandom(64).replace(b"\x80", b"\x81").replace(b"PK", b"pk"),
                      "truncated": data[: len(data) // 2], "empty": b""}[damage])
    err = _cli_error(capsys, "export", str(run.path), "--onnx", str(tmp_path / "x.onnx"))
    assert str(path) in err and "corrupt" in err


def test_truncated_json_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _run_dir(tmp_path)
    config = run.path / "config.json"
    config.write_text(config.read_text()[:25], encoding="utf-8")
    err = _cli_error(capsys, "export", str(run.path), "--onnx", str(tmp_path / "x.onnx"))
    assert str(config) in err and "not a valid rnnkit config" in err
    with pytest.raises(CheckpointError, match=r"config\.json: corrupt, not valid JSON"):
        run.read_config()
    vocab = run.path / "vocab.json"
    vocab.write_text(vocab.read_text()[:10], encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"vocab\.json.*not a valid JSON"):
        run.load_vocab()


def test_a_checkpoint_of_another_task_is_refused(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    from rnnkit.tasks.tagging import load as load_tagger
    run = _run_dir(tmp_path)
    with pytest.raises(CheckpointError, match="is a 'classifier' run, not a 'tagger' run"):
        load_tagger(run.path)
    err = _cli_error(capsys, "train", "lm", "--out", str(run.path), "--resume")
    assert "is a 'classifier' run, not a 'lm' run" in err
    err = _cli_error(capsys, "generate", str(run.path))
    assert "does not apply to a classifier run" in err


# -- atomic writes ----------------------------------------------------------------------------
def _fit(tmp_path: Path, epochs: int) -> Trainer:
    torch.manual_seed(0)
    trainer = Trainer(nn.Linear(4, 1), Toy(), RunDir(tmp_path / "run"),
                      TrainConfig(epochs=epochs, progress=False))
    trainer.fit()
    return trainer


def _load(tmp_path: Path) -> tuple[dict, nn.Linear]:
    model = nn.Linear(4, 1)
    state, _ = RunDir(tmp_path / "run").load_last(model, torch.optim.AdamW(model.parameters()))
    return state, model


@pytest.mark.parametrize("fail_at", ["trainer.json", "rng.safetensors", "model.safetensors"])
def test_a_crash_while_writing_the_checkpoint_keeps_the_previous_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str) -> None:
    trainer = _fit(tmp_path, 1)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    real = os.replace

    def crash(src: str, dst: str) -> None:
        if Path(dst).name == fail_at and "last.tmp" in str(dst):
            raise OSError("simulated crash (disk full, power cut)")
        real(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    trainer.config.epochs = 2
    with pytest.raises(OSError, match="simulated crash"):
        trainer.fit()  # the end-of-epoch checkpoint fails half-way through
    monkeypatch.setattr(os, "replace", real)
    state, model = _load(tmp_path)
    assert state["step"] == 4
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert not [p for p in (tmp_path / "run" / "last").iterdir() if p.name.endswith(".tmp")]


def test_a_crash_during_the_swap_keeps_a_usable_checkpoint(tmp_path: Path) -> None:
    _fit(tmp_path, 1)
    run = tmp_path / "run"
    (run / "last").rename(run / "last.old")  # killed between the two renames of the swap
    (run / "last.tmp").mkdir()  # and a half-written new one
    assert RunDir(run).has_last()
    state, _ = _load(tmp_path)
    assert state["step"] == 4


def test_a_crash_mid_file_leaves_the_old_file(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.safetensors"
    ckpt.save_tensors(path, {"a": torch.ones(3)})

    def crash(src: str, dst: str) -> None:
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        ckpt.save_tensors(path, {"a": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(ckpt.load_tensors(path)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_repeated_rollbacks_keep_halving_the_lr(tmp_path: Path) -> None:
    trainer, log = _train(tmp_path, "rollback", (2, 4))
    backs = [r for r in log if r["kind"] == "bad_step"]
    assert [(r["to_step"], r["lr_scale"]) for r in backs] == [(0, 0.5), (0, 0.25)]
    assert trainer.state["step"] == 12


# -- clipping events in the log -----------------------------------------------------------------
def test_every_clipped_step_is_counted_in_the_log(tmp_path: Path) -> None:
    from rnnkit.diagnostics import read_training_log

    torch.manual_seed(0)
    run = RunDir(tmp_path / "run")
    config = TrainConfig(epochs=3, clip=1e-6, log_every=5, progress=False)
    Trainer(nn.Linear(4, 1), Toy(), run, config).fit()  # 12 steps, every one clipped
    records = [json.loads(line) for line in run.log_path.read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 5, 10]
    assert [r["clipped_steps"] for r in train] == [1, 4, 5]
    assert all(r["clipped"] for r in train)
    log = read_training_log(run.log_path)
    assert log.clip_count() == 10 and log.clip_steps() == [1, 5, 10]
    assert log.summary()["clipped_steps_total"] == 10
