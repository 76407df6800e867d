"""Pieces of the shared trainer: weights with tied tensors, optimizer and nested states through
safetensors + JSON, learning-rate schedules, and the common options on resume."""

import argparse
import math

import pytest
import torch

from rnnkit.commands.common import add_common_train_arguments
from rnnkit.errors import CheckpointError
from rnnkit.models.lm import LanguageModel, LMConfig
from rnnkit.training import checkpoint as ckpt
from rnnkit.training.loop import TrainConfig
from rnnkit.training.options import train_config
from rnnkit.training.schedule import Schedule
from rnnkit.training.task import build_optimizer


def test_tied_weights_are_stored_once_and_come_back_tied(tmp_path):
    torch.manual_seed(0)
    model = LanguageModel(LMConfig(vocab_size=30, embedding_size=8, hidden_size=8,
                                   num_layers=1, tie_weights=True))
    ckpt.save_weights(model, tmp_path / "w.safetensors")
    stored = ckpt.load_tensors(tmp_path / "w.safetensors")
    assert "embedding.weight" in stored and "decoder.weight" not in stored
    torch.manual_seed(1)
    other = LanguageModel(model.config)
    ckpt.load_weights(other, tmp_path / "w.safetensors")
    assert other.decoder.weight is other.embedding.weight
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    wrong = LanguageModel(LMConfig(vocab_size=31, embedding_size=8, hidden_size=8,
                                   num_layers=1, tie_weights=True))
    with pytest.raises(CheckpointError, match=r"embedding\.weight: file \(30, 8\), model \(31"):
        ckpt.load_weights(wrong, tmp_path / "w.safetensors")


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
])
def test_optimizer_state_round_trip_is_exact(tmp_path, make):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = make(model.parameters())
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    tensors, plain = ckpt.optimizer_state(opt)
    ckpt.save_tensors(tmp_path / "o.safetensors", tensors)
    ckpt.save_json(tmp_path / "o.json", plain)
    clone = torch.nn.Linear(4, 3)
    clone.load_state_dict(model.state_dict())
    opt2 = make(clone.parameters())
    ckpt.load_optimizer_state(opt2, ckpt.load_tensors(tmp_path / "o.safetensors"),
                              ckpt.load_json(tmp_path / "o.json"), "o.json")
    x = torch.randn(5, 4)
    for m, o in ((model, opt), (clone, opt2)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    assert torch.equal(model.weight, clone.weight) and torch.equal(model.bias, clone.bias)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_build_optimizer_is_fused_and_takes_an_earlier_runs_state(tmp_path, optimizer):
    """The trainer's optimizer is torch's fused one on the CPU; its steps equal the default
    implementation's to float32 rounding, and the state of a run written before (by the
    default implementation) loads into it and goes on as that run would have."""
    config = TrainConfig(optimizer=optimizer, lr=1e-2, weight_decay=0.1, momentum=0.9)

    def steps(model, opt, n, seed):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(n):
            opt.zero_grad()
            model(torch.randn(5, 4, generator=gen)).pow(2).sum().backward()
            opt.step()

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    plain_model = torch.nn.Linear(4, 3)
    plain_model.load_state_dict(model.state_dict())
    opt = build_optimizer(model, config)
    assert opt.defaults["fused"] is True
    kind = torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW
    assert type(opt) is kind
    extra = {"momentum": 0.9} if optimizer == "sgd" else {}
    plain = kind(plain_model.parameters(), lr=1e-2, weight_decay=0.1, **extra)
    assert not plain.defaults.get("fused")
    steps(model, opt, 3, seed=1)
    steps(plain_model, plain, 3, seed=1)
    for a, b in zip(model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # an earlier run's optimizer state (unfused) resumes in the fused optimizer
    resumed_model = torch.nn.Linear(4, 3)
    resumed_model.load_state_dict(plain_model.state_dict())
    resumed = build_optimizer(resumed_model, config)
    tensors, saved = ckpt.optimizer_state(plain)
    ckpt.save_tensors(tmp_path / "o.safetensors", tensors)
    ckpt.save_json(tmp_path / "o.json", saved)
    ckpt.load_optimizer_state(resumed, ckpt.load_tensors(tmp_path / "o.safetensors"),
                              ckpt.load_json(tmp_path / "o.json"), "o.json")
    assert resumed.param_groups[0]["fused"] is True  # the implementation it was built with
    steps(resumed_model, resumed, 2, seed=2)
    steps(plain_model, plain, 2, seed=2)
    for a, b in zip(resumed_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_build_optimizer_is_not_fused_off_its_devices():
    model = torch.nn.Linear(4, 3, device="meta")
    assert not build_optimizer(model, TrainConfig()).defaults.get("fused")


def test_nested_states_flatten_and_come_back():
    state = [(torch.ones(2, 3), torch.zeros(2, 3)), torch.full((2, 4), 2.0), None]
    tensors, structure = ckpt.flatten_state(state)
    assert len(tensors) == 3
    back = ckpt.unflatten_state(tensors, structure)
    assert isinstance(back, list) and isinstance(back[0], tuple) and back[2] is None
    assert torch.equal(back[0][0], state[0][0]) and torch.equal(back[1], state[1])
    assert ckpt.unflatten_state({}, ckpt.flatten_state(None)[1]) is None


def test_schedules():
    cos = Schedule("cosine", base_lr=1.0, total_steps=110, warmup=10, min_ratio=0.1)
    assert cos.lr(0) == pytest.approx(0.1) and cos.lr(9) == pytest.approx(1.0)
    assert cos.lr(10) == pytest.approx(1.0)
    assert cos.lr(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cos.lr(110) == pytest.approx(0.1) and cos.lr(500) == pytest.approx(0.1)
    assert cos.lr(10, time_fraction=0.5) == pytest.approx(0.55)  # time runs out first
    lin = Schedule("linear", base_lr=2.0, total_steps=100)
    assert lin.lr(25) == pytest.approx(1.5)
    plateau = Schedule("plateau", base_lr=1.0, factor=0.25)
    assert not plateau.on_evaluation(improved=True) and plateau.lr(5) == 1.0
    assert plateau.on_evaluation(improved=False) and plateau.lr(5) == 0.25
    again = Schedule("plateau", base_lr=1.0)
    again.load_state_dict(plateau.state_dict())
    assert again.lr(0) == 0.25
    with pytest.raises(ValueError, match="known number of steps"):
        Schedule("cosine", total_steps=None)
    with pytest.raises(ValueError, match="schedule must be one of"):
        Schedule("step")


def test_common_options_defaults_saved_values_and_resume_rules():
    parser = argparse.ArgumentParser()
    add_common_train_arguments(parser)
    defaults = TrainConfig(lr=3e-3, epochs=7)
    cfg = train_config(parser.parse_args(["--max-steps", "5"]), None, defaults)
    # a bound given replaces the default ones (the default 7 epochs no longer apply)
    assert (cfg.lr, cfg.epochs, cfg.max_steps, cfg.optimizer) == (3e-3, None, 5, "adamw")
    saved = {**vars(cfg), "epochs": 7}
    resumed = train_config(parser.parse_args(["--max-steps", "9"]), saved, TrainConfig())
    assert (resumed.lr, resumed.epochs, resumed.max_steps) == (3e-3, 7, 9)
    with pytest.raises(CheckpointError, match=r"--lr 0\.1 differs"):
        train_config(parser.parse_args(["--lr", "0.1"]), saved, TrainConfig())
    assert math.isclose(train_config(parser.parse_args(["--lr", "0.003"]), saved).lr, 3e-3)
