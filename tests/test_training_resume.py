"""Trainer: an interrupted and resumed run gives the same per-step losses as an uninterrupted
one; early stopping; the NaN guard keeps the last good checkpoint."""

import json
import math

import pytest
import torch

from rnnkit.data.text import build_vocab, encode
from rnnkit.errors import CheckpointError, TrainingError
from rnnkit.models.lm import LanguageModel, LMConfig
from rnnkit.tasks.lm import LMTask
from rnnkit.training.checkpoint import RunDir
from rnnkit.training.loop import StepOutput, TrainConfig, Trainer, TrainingTask

TEXT = "to be or not to be, that is the question.\nwhether 'tis nobler in the mind\n" * 8


def setup(tmp_path, name):
    vocab = build_vocab(TEXT, "char")
    ids = encode(TEXT, vocab, "char")
    torch.manual_seed(0)
    model = LanguageModel(LMConfig(vocab_size=len(vocab), embedding_size=8, hidden_size=16,
                                   num_layers=2, dropout=0.3, output_dropout=0.2))
    # variable windows and dropout: the data order and the RNG must both be restored
    task = LMTask(ids[:500], ids[500:], batch_size=4, bptt=10, variable_bptt=True,
                  level="char", eval_batch_size=2)
    return model, task, RunDir(tmp_path / name)


def train_losses(run: RunDir) -> list[float]:
    lines = run.log_path.read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


def config(**kw) -> TrainConfig:
    base = dict(epochs=3, lr=5e-3, schedule="plateau", eval_every=7, progress=False,
                log_every=1, seed=3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("stop_at", [5, 13])
def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path, stop_at):
    model, task, run = setup(tmp_path, "whole")
    whole = Trainer(model, task, run, config(max_steps=20)).fit()
    assert whole.steps == 20 and whole.epochs >= 1  # the run crosses an epoch boundary

    model, task, run = setup(tmp_path, "parts")
    first = Trainer(model, task, run, config(max_steps=stop_at)).fit()
    assert first.stopped_by == "max_steps" and first.steps == stop_at
    model, task, _ = setup(tmp_path, "parts")  # a fresh process: new model, new task
    second = Trainer(model, task, run, config(max_steps=20), resume=True).fit()
    assert second.steps == 20
    assert train_losses(run) == train_losses(RunDir(tmp_path / "whole"))
    assert first.losses + second.losses == whole.losses


def test_resume_needs_a_checkpoint(tmp_path):
    model, task, run = setup(tmp_path, "none")
    with pytest.raises(CheckpointError, match="nothing to resume"):
        Trainer(model, task, run, config(max_steps=2), resume=True).fit()


def test_best_and_last_checkpoints_and_early_stopping(tmp_path):
    model, task, run = setup(tmp_path, "run")
    result = Trainer(model, task, run, config(epochs=50, lr=1e-6, patience=2)).fit()
    assert result.stopped_by == "early_stopping"
    evals = [json.loads(r) for r in run.log_path.read_text().splitlines() if '"eval"' in r]
    assert evals[0]["best"] and not evals[-1]["best"] and not evals[-2]["best"]
    assert result.best == pytest.approx(min(e["loss"] for e in evals))
    assert (run.path / "model.safetensors").is_file() and (run.path / "last").is_dir()
    best = LanguageModel(model.config)
    run.load_weights(best)  # the best weights score the best validation loss
    assert task.evaluate(best)["loss"] == pytest.approx(result.best, abs=1e-6)


class Exploding(TrainingTask):
    """A regression whose loss turns NaN at a given step."""

    def __init__(self, bad_step: int, value: float = math.nan):
        self.bad_step, self.value, self.calls = bad_step, value, 0
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(16, 3, generator=g)

    def train_batches(self, epoch, generator):
        return [self.x[i:i + 4] for i in range(0, 16, 4)]

    def loss(self, model, batch, carry):
        self.calls += 1
        loss = model(batch).pow(2).mean() + 1.0
        if self.calls >= self.bad_step:
            loss = loss * self.value
        return StepOutput(loss, 4)

    def evaluate(self, model):
        return {"loss": float(model(self.x).pow(2).mean())}


@pytest.mark.parametrize("value, message", [(math.nan, "loss is nan"), (1e6, "exploded")])
def test_the_guard_stops_on_nan_or_explosion_and_keeps_the_last_good_checkpoint(
        tmp_path, value, message):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    run = RunDir(tmp_path / "run")
    cfg = TrainConfig(epochs=10, lr=1e-2, eval_every=4, progress=False, log_every=1)
    with pytest.raises(TrainingError, match=message) as err:
        Trainer(model, Exploding(bad_step=7, value=value), run, cfg).fit()
    assert "step 7" in str(err.value) and "step 4" in str(err.value)
    state = json.loads((run.path / "last" / "trainer.json").read_text())
    assert state["step"] == 4  # the good checkpoint, not overwritten by the bad step
    assert all(math.isfinite(p) for p in model.weight.detach().flatten().tolist())


def test_the_hidden_state_is_carried_across_windows_and_detached(tmp_path):
    model, task, _ = setup(tmp_path, "carry")
    batches = list(task.train_batches(0, torch.Generator().manual_seed(0)))
    out = task.loss(model, batches[0], None)
    flat = [t for layer in out.carry for t in layer]  # LSTM layers: (h, c)
    assert all(not t.requires_grad for t in flat)
    assert out.tokens == batches[0].tokens
    model.eval()
    with torch.no_grad():
        # the second window from the carried state equals both windows run as one sequence
        joined_in = torch.cat([batches[0].inputs, batches[1].inputs], dim=1)
        joined_t = torch.cat([batches[0].targets, batches[1].targets], dim=1)
        whole, _ = model.loss(joined_in, joined_t, reduction="sum")
        first, state = model.loss(batches[0].inputs, batches[0].targets, reduction="sum")
        second, _ = model.loss(batches[1].inputs, batches[1].targets, state, reduction="sum")
    assert torch.allclose(first + second, whole, atol=1e-4)


def test_resume_truncates_the_log_to_the_checkpoint(tmp_path):
    """Records an interrupted process wrote after its last checkpoint are dropped on resume
    (they are about to be run again): each step is logged once (issue 13, item 7)."""
    model, task, run = setup(tmp_path, "parts")
    Trainer(model, task, run, config(max_steps=5)).fit()
    with run.log_path.open("a", encoding="utf-8") as f:  # what a killed process left behind
        for step in (6, 7, 8):
            f.write(json.dumps({"kind": "train", "step": step, "loss": 9.0}) + "\n")
        f.write('{"kind": "train", "st')  # and a torn last line
    model, task, _ = setup(tmp_path, "parts")
    Trainer(model, task, run, config(max_steps=10), resume=True).fit()
    records = [json.loads(line) for line in run.log_path.read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == list(range(1, 11)) and 9.0 not in [r["loss"] for r in records
                                                        if r["kind"] == "train"]
    model, task, whole = setup(tmp_path, "whole")
    Trainer(model, task, whole, config(max_steps=10)).fit()
    assert train_losses(whole) == [r["loss"] for r in records if r["kind"] == "train"]


def test_a_step_budget_schedule_never_reads_the_clock(tmp_path, monkeypatch):
    """With --max-steps the cosine schedule spans the steps alone, however much of a time
    budget given beside it has passed (issue 13, item 4): the same run on any machine."""
    model, task, run = setup(tmp_path, "clock")
    cfg = config(max_steps=12, max_minutes=1e6, schedule="cosine", warmup=2)
    # half of the time budget gone already: before, the schedule would jump to mid-decay
    monkeypatch.setattr(Trainer, "_elapsed", lambda self, start: 0.5 * 60 * 1e6)
    trainer = Trainer(model, task, run, cfg)
    trainer.fit()
    lrs = [r["lr"] for r in map(json.loads, run.log_path.read_text().splitlines())
           if r["kind"] == "train"]
    steps = trainer.schedule
    assert lrs == [steps.lr(s, 0.0) for s in range(12)]
    assert lrs[2] > lrs[-1]  # it does decay, over the steps


def test_a_bound_given_replaces_the_default_bounds(tmp_path):
    """The default run's 4.8 minutes and 100 epochs give way to a step budget (and the
    other tasks' default epochs too): --max-steps 1000 runs 1,000 steps."""
    from rnnkit.tasks.lm import train_defaults
    from rnnkit.training.options import train_config

    bundled = train_defaults(True)
    cfg = train_config({}, None, bundled)  # the default run
    assert (cfg.epochs, cfg.max_steps, cfg.max_minutes) == (100, None, 4.8)
    cfg = train_config({"max_steps": 300}, None, bundled)
    assert (cfg.epochs, cfg.max_steps, cfg.max_minutes) == (None, 300, None)
    cfg = train_config({"epochs": 2}, None, bundled)
    assert (cfg.epochs, cfg.max_steps, cfg.max_minutes) == (2, None, None)
    cfg = train_config({"max_steps": 300, "max_minutes": 2.0}, None, bundled)
    assert (cfg.epochs, cfg.max_steps, cfg.max_minutes) == (None, 300, 2.0)
    cfg = train_config({"max_minutes": 20.0}, None, train_defaults(False))
    assert (cfg.epochs, cfg.max_steps, cfg.max_minutes) == (None, None, 20.0)
    # a resumed run keeps its own bounds unless given
    cfg = train_config({"max_steps": 50}, {"epochs": 3, "max_minutes": 1.0}, bundled)
    assert (cfg.epochs, cfg.max_steps, cfg.max_minutes) == (3, 50, 1.0)
    with pytest.raises(ValueError, match="a run needs a bound"):
        TrainConfig(epochs=None)


def test_a_run_bounded_by_time_alone_decays_over_its_time(tmp_path, monkeypatch):
    from rnnkit.training.schedule import Schedule
    schedule = Schedule("cosine", 1.0, None, warmup=0, min_ratio=0.0, by_time=True)
    assert schedule.lr(0, 0.0) == 1.0 and schedule.lr(10**6, 0.5) == pytest.approx(0.5)
    assert schedule.lr(3, 1.0) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="needs a known number of steps"):
        Schedule("cosine", 1.0, None)


def _snapshots(model, task, run, cfg):
    """The parameters after every optimizer step of a run (by a hook on the optimizer)."""
    trainer = Trainer(model, task, run, cfg)
    seen = []
    trainer.optimizer.register_step_post_hook(
        lambda opt, args, kwargs: seen.append({n: p.detach().clone()
                                               for n, p in model.named_parameters()}))
    trainer.fit()
    return seen


def test_ema_keeps_the_warmed_up_moving_average_of_the_weights(tmp_path):
    model, task, run = setup(tmp_path, "plain")
    seen = _snapshots(model, task, run, config(max_steps=9, eval_every=0))
    model, task, run = setup(tmp_path, "ema")
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = Trainer(model, task, run, config(max_steps=9, eval_every=0, ema=0.3)).fit()
    assert result.steps == 9
    # the same steps: averaging changes what is evaluated and kept, not the training
    assert train_losses(run) == train_losses(RunDir(tmp_path / "plain"))
    expected = dict(initial)
    for n, weights in enumerate(seen):
        d = min(0.3, (1 + n) / (10 + n))  # 0.1, 0.18, 0.25, then the decay 0.3
        expected = {k: d * expected[k] + (1 - d) * weights[k] for k in expected}
    kept = LanguageModel(model.config)
    run.load_weights(kept)  # the best (here: the only evaluation's) weights are the average
    for name, p in kept.named_parameters():
        torch.testing.assert_close(p, expected[name], rtol=1e-5, atol=1e-6)
    # the model itself keeps its trained weights, and the evaluation scored the average
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, seen[-1][name])
    assert task.evaluate(kept)["loss"] == pytest.approx(result.best, abs=1e-6)


def test_a_resumed_ema_run_continues_the_same_average(tmp_path):
    model, task, run = setup(tmp_path, "whole")
    Trainer(model, task, run, config(max_steps=20, ema=0.9)).fit()
    model, task, run = setup(tmp_path, "parts")
    Trainer(model, task, run, config(max_steps=13, ema=0.9)).fit()
    model, task, _ = setup(tmp_path, "parts")
    Trainer(model, task, run, config(max_steps=20, ema=0.9), resume=True).fit()
    evals = [{r["step"]: r["loss"] for r in map(json.loads, RunDir(tmp_path / name).log_path
              .read_text().splitlines()) if r["kind"] == "eval"} for name in ("whole", "parts")]
    assert set(evals[1]) == set(evals[0]) | {13}  # and the evaluation where the first part ended
    for step, loss in evals[0].items():  # the averaged weights' losses
        assert evals[1][step] == pytest.approx(loss, abs=1e-6), step
    whole, parts = LanguageModel(model.config), LanguageModel(model.config)
    RunDir(tmp_path / "whole").load_weights(whole)
    run.load_weights(parts)
    for (name, p), q in zip(whole.named_parameters(), parts.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)
    (run.path / "last" / "averaged.safetensors").unlink()
    model, task, _ = setup(tmp_path, "parts")
    with pytest.raises(CheckpointError, match=r"averaged\.safetensors: missing"):
        Trainer(model, task, run, config(max_steps=30, ema=0.9), resume=True).fit()


def test_ema_out_of_range_is_refused():
    with pytest.raises(ValueError, match=r"ema must be in \[0, 1\)"):
        TrainConfig(ema=1.0)


def _records(run: RunDir, kind: str) -> list[dict]:
    return [r for r in map(json.loads, run.log_path.read_text().splitlines())
            if r["kind"] == kind]


def _evaluations(run: RunDir) -> list[tuple[float, int]]:
    """(loss, step) of each evaluated step (an epoch's end on an ``eval_every`` step evaluates
    the same weights twice: one entry)."""
    return list({r["step"]: (r["loss"], r["step"]) for r in _records(run, "eval")}.values())


def _weights_of(path, like) -> dict:
    from rnnkit.training.checkpoint import load_weights
    model = LanguageModel(like.config)
    load_weights(model, path)
    return {n: t.clone() for n, t in model.state_dict().items()}


def test_average_best_keeps_the_n_best_checkpoints_and_keeps_their_average_if_better(tmp_path):
    model, task, run = setup(tmp_path, "avg")
    result = Trainer(model, task, run, config(max_steps=20, eval_every=4, average_best=3)).fit()
    evals = _evaluations(run)
    assert len(evals) >= 5
    ranked = sorted(evals, key=lambda e: e[0])[:3]  # stable: the earlier of equal losses
    nbest = run.path / "nbest"
    assert sorted(p.name for p in nbest.glob("step-*")) == sorted(
        f"step-{s:09d}.safetensors" for _, s in ranked)  # the others were deleted
    snapshots = {s: _weights_of(nbest / f"step-{s:09d}.safetensors", model) for _, s in ranked}
    for loss, step in ranked:  # each file holds the weights its evaluation scored
        m = LanguageModel(model.config)
        m.load_state_dict(snapshots[step])
        assert task.evaluate(m.eval())["loss"] == pytest.approx(loss, abs=1e-6)
    average = _weights_of(nbest / "average.safetensors", model)
    for name, t in average.items():
        mean = sum(snapshots[s][name].double() for _, s in ranked) / 3
        torch.testing.assert_close(t, mean.float(), rtol=1e-6, atol=1e-7, msg=name)
    (record,) = _records(run, "averaged_eval")
    assert record["averaged"] == [s for _, s in ranked]
    m = LanguageModel(model.config)
    m.load_state_dict(average)
    assert task.evaluate(m.eval())["loss"] == pytest.approx(record["loss"], abs=1e-6)
    # the run's best weights are the average exactly when it scores better than the best one
    assert record["best"] == (record["loss"] < ranked[0][0])
    kept = _weights_of(run.path / "model.safetensors", model)
    want = average if record["best"] else snapshots[ranked[0][1]]
    for name, t in kept.items():
        torch.testing.assert_close(t, want[name], rtol=0, atol=0, msg=name)
    assert result.best == pytest.approx(min(record["loss"], ranked[0][0]), abs=1e-9)
    # the model keeps its own (last) weights
    last = _weights_of(run.path / "last" / "model.safetensors", model)
    for name, t in model.state_dict().items():
        torch.testing.assert_close(t, last[name], rtol=0, atol=0, msg=name)


def test_best_snapshots_rank_by_the_task_mode_and_name_the_files_to_drop(tmp_path):
    from rnnkit.training.averaging import BestSnapshots
    accuracy = BestSnapshots(tmp_path, 2, "max")
    dropped = [accuracy.offer(None, v, s, write=False)
               for v, s in [(0.5, 1), (0.7, 2), (0.6, 3), (0.7, 4), (0.9, 5)]]
    assert accuracy.kept == [(0.9, 5), (0.7, 2)]  # of equal accuracies, the earlier first
    assert dropped == [[], [], [accuracy.path(1)], [accuracy.path(3)], [accuracy.path(4)]]
    loss = BestSnapshots(tmp_path, 2, "min")
    for v, s in [(3.0, 1), (2.0, 2), (2.5, 3)]:
        loss.offer(None, v, s, write=False)
    assert loss.kept == [(2.0, 2), (2.5, 3)]
    with pytest.raises(CheckpointError, match=r"step-000000002\.safetensors: missing"):
        loss.average_into(LanguageModel(LMConfig(vocab_size=5, embedding_size=2,
                                                 hidden_size=2, num_layers=1)))


def test_a_resumed_average_best_run_keeps_its_list_and_cleans_stray_snapshots(tmp_path):
    model, task, run = setup(tmp_path, "parts")
    Trainer(model, task, run, config(max_steps=13, eval_every=4, average_best=2)).fit()
    stray = run.path / "nbest" / "step-000000099.safetensors"  # as a kill after writing one
    stray.write_bytes(b"")
    model, task, _ = setup(tmp_path, "parts")
    Trainer(model, task, run, config(max_steps=20, eval_every=4, average_best=2),
            resume=True).fit()
    assert not stray.exists()
    evals = _evaluations(run)
    assert [e[1] for e in evals] == [4, 8, 12, 13, 16, 20]
    ranked = sorted(evals, key=lambda e: e[0])[:2]
    assert _records(run, "averaged_eval")[-1]["averaged"] == [s for _, s in ranked]
    assert sorted(p.name for p in (run.path / "nbest").glob("step-*")) == sorted(
        f"step-{s:09d}.safetensors" for _, s in ranked)


@pytest.mark.parametrize("n", [1, -1])
def test_average_best_of_one_or_fewer_is_refused(n):
    with pytest.raises(ValueError, match="average_best must be"):
        TrainConfig(average_best=n)


class Oscillating(TrainingTask):
    """(w - 1)^2 by SGD at a step size that overshoots: w - 1 changes sign every step and
    shrinks by 0.9, so the average of two neighbouring steps is nearer the minimum than
    either."""

    def train_batches(self, epoch, generator):
        return [None] * 4

    def loss(self, model, batch, carry):
        return StepOutput((model.weight - 1).pow(2).sum(), 1)

    def evaluate(self, model):
        return {"loss": float((model.weight - 1).pow(2).sum())}


def test_an_average_that_scores_better_becomes_the_best_weights(tmp_path):
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(3.0)
    run = RunDir(tmp_path / "osc")
    result = Trainer(model, Oscillating(), run, TrainConfig(
        epochs=2, optimizer="sgd", lr=0.95, clip=0, progress=False, eval_every=1,
        average_best=2)).fit()
    # w - 1 after step n is 2 (-0.9)^n; the two best are steps 8 and 7, their mean 1 + 0.0387
    (record,) = _records(run, "averaged_eval")
    assert record["averaged"] == [8, 7] and record["best"]
    error = 2 * ((-0.9) ** 8 + (-0.9) ** 7) / 2
    assert record["loss"] == pytest.approx(error ** 2, rel=1e-4)
    assert result.best == pytest.approx(error ** 2, rel=1e-4)
    kept = torch.nn.Linear(1, 1, bias=False)
    run.load_weights(kept)
    assert float(kept.weight.detach()) == pytest.approx(1 + error, rel=1e-5)
    assert float(model.weight.detach()) == pytest.approx(1 + 2 * (-0.9) ** 8, rel=1e-5)  # its own
