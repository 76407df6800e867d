"""LanguageModel: the step path equals the full forward, tying, adaptive softmax, training
lowers the loss from log(V), and generation (seeded, greedy, top-k, temperature, top-p)."""

import math

import pytest
import torch

from rnnkit.data.text import build_vocab, encode
from rnnkit.generation.sampling import filter_logits, next_token_distribution, sample
from rnnkit.models.lm import LanguageModel, LMConfig
from rnnkit.tasks.lm import LMTask, evaluate_lm
from rnnkit.training.checkpoint import RunDir
from rnnkit.training.loop import TrainConfig, Trainer

TEXT = ("the cat sat on the mat. the dog sat on the log. a cat and a dog met on a mat.\n"
        "the cat ran to the log and the dog ran to the mat. then the cat sat again.\n") * 12


def tiny(**overrides) -> LanguageModel:
    torch.manual_seed(0)
    options = dict(vocab_size=20, embedding_size=8, hidden_size=8, num_layers=2)
    options.update(overrides)
    return LanguageModel(LMConfig(**options))


@pytest.mark.parametrize("options", [
    dict(cell="lstm"),
    dict(cell="lstm", connection="residual", tie_weights=True),
    dict(cell="lstm", hidden_size=12, tie_weights=True),  # tied through a projection
    dict(cell="gru", connection="dense"),
    dict(cell="gru-simple", connection="highway"),
    dict(cell="peephole", learn_init=True),
    dict(cell="rnn", engine="reference"),
    dict(cell="lstm", cell_options={"layer_norm": True}),
    dict(cell="lstm", adaptive_cutoffs=[6, 12], adaptive_div_value=2.0),
    dict(cell="qrnn", num_layers=3, cell_options={"window": 1},
         layer_cell_options=[{"window": 2}, {}, {"window": 1}]),  # windows 2, 1, 1
])
def test_step_by_step_equals_the_full_forward(options):
    model = tiny(**options).eval()
    x = torch.randint(0, 20, (3, 6))
    with torch.no_grad():
        logits, state = model(x)
    state_step, outs = None, []
    for t in range(6):
        out, state_step = model.step(x[:, t], state_step)
        outs.append(out)
    assert torch.allclose(torch.stack(outs, 1), logits, atol=1e-5)
    flat = [s for layer in state for s in (layer if isinstance(layer, tuple) else (layer,))]
    flat_step = [s for layer in state_step
                 for s in (layer if isinstance(layer, tuple) else (layer,))]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(flat, flat_step))
    # reorder_state picks rows
    picked = model.reorder_state(state_step, torch.tensor([2, 0]))
    first = picked[0][0] if isinstance(picked[0], tuple) else picked[0]
    full = state_step[0][0] if isinstance(state_step[0], tuple) else state_step[0]
    assert torch.equal(first, full[[2, 0]])


def test_step_cache_follows_weight_updates():
    model = tiny().eval()
    tok = torch.tensor([3])
    before, _ = model.step(tok)
    with torch.no_grad():
        model.decoder.bias.add_(1.0)
    after, _ = model.step(tok)
    assert torch.allclose(after, before + 1.0, atol=1e-6)


def test_tied_weights_are_one_parameter_and_loss_skips_padding():
    model = tiny(tie_weights=True)
    assert model.decoder.weight is model.embedding.weight
    untied = tiny()
    assert untied.num_parameters() - model.num_parameters() == 20 * 8
    x = torch.randint(0, 20, (2, 5))
    t = torch.randint(0, 20, (2, 5))
    t_pad = t.clone()
    t_pad[1, 3:] = -100
    loss_sum, _ = model.loss(x, t_pad, reduction="sum")
    logits, _ = model(x)
    logp = logits.log_softmax(-1).gather(-1, t.unsqueeze(-1)).squeeze(-1)
    expected = -(logp[0].sum() + logp[1, :3].sum())
    assert torch.allclose(loss_sum, expected, atol=1e-5)
    mean, _ = model.loss(x, t_pad)
    assert torch.allclose(mean, expected / 8, atol=1e-6)
    with pytest.raises(ValueError, match="adaptive"):
        tiny(tie_weights=True, adaptive_cutoffs=[5])


def test_adaptive_softmax_loss_is_a_distribution():
    model = tiny(adaptive_cutoffs=[6, 12], adaptive_div_value=2.0).eval()
    x = torch.randint(0, 20, (2, 4))
    logits, _ = model(x)
    assert torch.allclose(logits.exp().sum(-1), torch.ones(2, 4), atol=1e-5)
    loss, _ = model.loss(x, x)
    expected = -logits.gather(-1, x.unsqueeze(-1)).mean()
    assert torch.allclose(loss, expected, atol=1e-5)


def test_training_lowers_validation_loss_well_below_log_v(tmp_path):
    vocab = build_vocab(TEXT, "char")
    ids = encode(TEXT, vocab, "char")
    cut = int(0.9 * len(ids))
    torch.manual_seed(0)
    model = LanguageModel(LMConfig(vocab_size=len(vocab), embedding_size=16, hidden_size=48,
                                   num_layers=1))
    log_v = math.log(len(vocab))
    before = evaluate_lm(model, ids[cut:], batch_size=2, bptt=32, level="char")
    assert abs(before["loss"] - log_v) < 0.15  # untrained: close to uniform
    assert before["bits_per_char"] == pytest.approx(before["loss"] / math.log(2))
    task = LMTask(ids[:cut], ids[cut:], batch_size=8, bptt=24, level="char", eval_batch_size=2)
    config = TrainConfig(epochs=20, max_steps=60, lr=1e-2, progress=False, log_every=1)
    result = Trainer(model, task, RunDir(tmp_path / "run"), config).fit()
    assert abs(result.losses[0] - log_v) < 0.15
    assert result.metrics["loss"] < 0.6 * log_v
    assert result.metrics["perplexity"] == pytest.approx(math.exp(result.metrics["loss"]))
    assert result.metrics["tokens"] == len(ids) - cut


def test_generation_is_reproducible_and_top_k_1_is_greedy():
    model = tiny(hidden_size=16)
    prompt = [1, 2, 3]
    a = model.generate(prompt, 30, temperature=1.0, seed=5)
    b = model.generate(prompt, 30, temperature=1.0, seed=5)
    c = model.generate(prompt, 30, temperature=1.0, seed=6)
    assert a.shape == (30,) and torch.equal(a, b) and not torch.equal(a, c)
    greedy = model.generate(prompt, 30, greedy=True)
    assert torch.equal(model.generate(prompt, 30, top_k=1, seed=1), greedy)
    assert torch.equal(model.generate(prompt, 30, temperature=0), greedy)
    # greedy follows the argmax of the step logits
    logits, state = None, None
    for tok in prompt:
        logits, state = model.step(torch.tensor([tok]), state)
    assert greedy[0] == logits.argmax()
    batch = model.generate(torch.tensor([prompt, prompt]), 5, seed=2)
    assert batch.shape == (2, 5)
    with pytest.raises(ValueError, match="at least one token"):
        model.generate([], 5)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(prompt, 5, top_p=1.5)


def test_temperature_top_k_and_top_p_shape_the_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    p = next_token_distribution(logits)
    assert torch.allclose(p, torch.tensor([[0.5, 0.25, 0.15, 0.1]]), atol=1e-6)
    # temperature T: probabilities proportional to p ** (1 / T)
    for T in (0.5, 2.0):
        expected = torch.tensor([0.5, 0.25, 0.15, 0.1]) ** (1 / T)
        assert torch.allclose(next_token_distribution(logits, temperature=T)[0],
                              expected / expected.sum(), atol=1e-6)
    assert torch.equal(next_token_distribution(logits, temperature=0),
                       torch.tensor([[1.0, 0, 0, 0]]))
    # top-k: the k most probable, renormalised
    assert torch.allclose(next_token_distribution(logits, top_k=2),
                          torch.tensor([[2 / 3, 1 / 3, 0, 0]]), atol=1e-6)
    # top-p: the smallest set whose mass reaches p
    assert torch.allclose(next_token_distribution(logits, top_p=0.7),
                          torch.tensor([[0.5 / 0.75, 0.25 / 0.75, 0, 0]]), atol=1e-6)
    assert torch.allclose(next_token_distribution(logits, top_p=0.75),
                          torch.tensor([[0.5 / 0.75, 0.25 / 0.75, 0, 0]]), atol=1e-6)
    assert torch.allclose(next_token_distribution(logits, top_p=0.3),
                          torch.tensor([[1.0, 0, 0, 0]]), atol=1e-6)
    assert torch.isinf(filter_logits(logits, top_p=0.9)[0, 3])
    # sampling follows the distribution (fixed seed, many draws)
    g = torch.Generator().manual_seed(0)
    draws = sample(logits.expand(20000, 4), temperature=2.0, generator=g)
    freq = torch.bincount(draws, minlength=4).float() / 20000
    assert torch.allclose(freq, next_token_distribution(logits, temperature=2.0)[0], atol=0.02)
    for bad in (dict(temperature=-1), dict(top_k=0), dict(top_p=0.0)):
        with pytest.raises(ValueError):
            sample(logits, **bad)


def test_layer_cell_options_reach_each_layer_and_survive_the_config():
    model = tiny(cell="qrnn", num_layers=3, layer_cell_options=[{"window": 2}, {"window": 1},
                                                                 {"window": 1}])
    assert [layer.cell.window for layer in model.rnn.layers] == [2, 1, 1]
    # a window-2 layer reads [x<t-1>, x<t>]: twice the first layer's input columns
    assert model.rnn.layers[0].cell.weight_ih.shape == (24, 16)
    assert model.rnn.layers[1].cell.weight_ih.shape == (24, 8)
    again = LMConfig.from_dict(model.config.to_dict())
    assert again.layer_cell_options == [{"window": 2}, {"window": 1}, {"window": 1}]
    # a config written before the field existed loads with no per-layer options
    old = {k: v for k, v in model.config.to_dict().items() if k != "layer_cell_options"}
    assert LMConfig.from_dict(old).layer_cell_options == []
    with pytest.raises(ValueError, match="one mapping per layer"):
        tiny(cell="qrnn", num_layers=3, layer_cell_options=[{"window": 1}])
