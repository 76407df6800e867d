"""100,000 steps in one sequence in bounded memory: evaluation runs in chunks carrying the state
(checked by the chunk sizes each call sees, and against one unchunked pass), training in
truncated-BPTT windows whose carried state holds no autograd graph."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rnnkit.layers import stack
from rnnkit.models.lm import LanguageModel, LMConfig
from rnnkit.tasks.lm import LMTask, evaluate_lm
from rnnkit.training import RunDir, TrainConfig, Trainer
from rnnkit.training.chunked import check_chunkable, reduce_chunked, run_chunked

LONG = 100_000


def _spy(module: torch.nn.Module, dim: int = 1) -> list[int]:
    seen: list[int] = []
    module.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[dim]))
    return seen


def test_long_sequence_runs_in_chunks_with_the_state_carried() -> None:
    torch.manual_seed(0)
    layer = stack("lstm", 3, 8, num_layers=2).eval()
    x = torch.randn(2, LONG, 3)
    seen = _spy(layer)
    total, state = reduce_chunked(layer, x, 2_000, lambda c: c.output.sum())
    assert max(seen) == 2_000 and sum(seen) == LONG and len(seen) == LONG // 2_000
    with torch.no_grad():  # the same numbers as one pass over the whole sequence
        full, full_state = layer(x)
    assert total == pytest.approx(float(full.sum()), rel=1e-4)
    for a, b in zip(state, full_state):
        for s, t in zip(a, b):
            torch.testing.assert_close(s, t, rtol=1e-4, atol=1e-5)
    assert all(not s.requires_grad for layer_state in state for s in layer_state)


def test_chunks_match_a_single_pass_exactly_on_a_prefix() -> None:
    torch.manual_seed(1)
    layer = stack("gru", 4, 5).eval()
    x = torch.randn(3, 1_000, 4)
    chunks = list(run_chunked(layer, x, 300))
    assert [c.start for c in chunks] == [0, 300, 600, 900]
    assert [c.output.shape[1] for c in chunks] == [300, 300, 300, 100]
    with torch.no_grad():
        full = layer(x).output
    torch.testing.assert_close(torch.cat([c.output for c in chunks], 1), full, rtol=1e-5,
                               atol=1e-6)


def test_bidirectional_models_are_refused() -> None:
    with pytest.raises(ValueError, match="reads sequences backwards"):
        check_chunkable(stack("lstm", 3, 4, bidirectional=True))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        next(run_chunked(stack("lstm", 3, 4), torch.zeros(1, 5, 3), 0))


def _lm() -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(LMConfig(vocab_size=7, embedding_size=4, hidden_size=8, num_layers=1))


def test_lm_evaluation_of_one_long_stream_is_windowed() -> None:
    model = _lm()
    ids = torch.randint(0, 7, (LONG,), generator=torch.Generator().manual_seed(0))
    seen = _spy(model.rnn)
    metrics = evaluate_lm(model, ids, batch_size=1, bptt=5_000)
    assert max(seen) == 5_000 and sum(seen) == LONG
    assert metrics["tokens"] == LONG and 1.0 < metrics["loss"] < 3.0


def test_lm_training_on_one_long_stream_uses_truncated_bptt(tmp_path: Path) -> None:
    model = _lm()
    ids = torch.randint(0, 7, (LONG,), generator=torch.Generator().manual_seed(0))
    task = LMTask(ids, None, batch_size=1, bptt=50)
    seen = _spy(model.rnn)
    trainer = Trainer(model, task, RunDir(tmp_path / "run"),
                      TrainConfig(max_steps=4, progress=False, lr=0.01))
    result = trainer.fit()
    assert result.steps == 4 and seen == [50, 50, 50, 50]
    carry = trainer.carry  # the state handed to the next window holds no graph
    assert all(t.grad_fn is None and not t.requires_grad
               for layer_state in carry for t in layer_state)
