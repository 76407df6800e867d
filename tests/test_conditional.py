"""One-to-many: the ABC reader and well-formedness checker, ConditionalLM's conditioning,
and the conditional-lm commands."""

import json

import pytest
import torch
import torch.nn.functional as F

from rnnkit.cli import main
from rnnkit.data.abc import check_abc, label_from_filename, read_abc_tunes
from rnnkit.generation import beam_search, greedy
from rnnkit.models.conditional import ConditionalLM, ConditionalLMConfig
from rnnkit.models.lm import LMConfig

JIG = """X: 1
T:Test Jig
M:6/8
K:G
d|"G"g2g B^AB|d2d G3|"Em"GAB "Am"A2A|"D7"ABc "G"BAG|
"G"g2g B^AB|d2d G2G|[1"D7"FGA "G"G2:|[2"D7"FGA "G"G3||"""

REEL = """X: 7
T:Test Reel
M:4/4
L:1/8
K:D
A2|(3Bcd ed B>A FA|d2 fd [df]2 e/2f/2g|"A"a4 z4|gfed cBAG:|"""


def test_label_from_filename():
    assert label_from_filename("x/jigs.abc") == "jigs"
    assert label_from_filename("reelsa-c.abc") == "reels"
    assert label_from_filename("waltzes.abc") == "waltzes"


def test_well_formed_tunes_pass():
    for tune in (JIG, REEL):
        res = check_abc(tune)
        assert res.ok, res.problems
    assert check_abc(JIG).bars == 9


@pytest.mark.parametrize("tune,problem", [
    (JIG.replace("M:6/8\n", ""), "header has no M: field"),
    (JIG.replace("K:G\n", ""), "header has no K: field"),
    (JIG.replace("X: 1\n", ""), "does not start with an X: field"),
    (JIG.replace("M:6/8", "M:x"), "unreadable metre M:x"),
    (JIG.replace("d2d G3|", "d2d G3 A|"), "bar 3 lasts 7/8 of a whole note, more than the "
                                         "metre 3/4"),
    (JIG.replace("d2d G3|", "d2d G|"), "bar 3 lasts 1/2 of a whole note, less than the "
                                       "metre 3/4"),
    ("X:1\nM:4/4\nK:C\n", "no bars in the body"),
])
def test_malformed_tunes_are_named(tune, problem):
    res = check_abc(tune)
    assert not res.ok and problem in res.problems


def test_real_tunes_are_almost_all_well_formed(shared_data):
    tunes = read_abc_tunes(shared_data / "nottingham_abc")
    assert len(tunes) == 1034
    labels = {t.label for t in tunes}
    assert {"jigs", "reels", "waltzes", "hpps"} <= labels and "reelsa-c" not in labels
    share = sum(check_abc(t.text).ok for t in tunes) / len(tunes)
    assert share > 0.98


def tiny_clm(cell="gru"):
    torch.manual_seed(0)
    lm = LMConfig(6, embedding_size=8, hidden_size=16, num_layers=2, cell=cell)
    return ConditionalLM(ConditionalLMConfig(lm.to_dict(), ["a", "b"], label_size=4))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_the_label_alone_decides_the_sequence(cell):
    # ids: 0 unk, 1 eos, 2 bos, 3..5 symbols; label 0 -> 3 4 5 3, label 1 -> 5 5 4
    seqs = {0: [2, 3, 4, 5, 3, 1], 1: [2, 5, 5, 4, 1, 1]}
    model = tiny_clm(cell)
    opt = torch.optim.Adam(model.parameters(), 0.03)
    labels = torch.tensor([0, 1])
    x = torch.tensor([seqs[0][:-1], seqs[1][:-1]])
    y = torch.tensor([seqs[0][1:], [5, 5, 4, 1, -100]])
    for _ in range(150):
        loss = F.cross_entropy(model(labels, x).reshape(-1, 6), y.reshape(-1),
                               ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.generate(labels, 2, 1, 10, temperature=0) == [[3, 4, 5, 3], [5, 5, 4]]
    assert model.generate(labels, 2, 1, 10, temperature=0.5, seed=3) == [[3, 4, 5, 3],
                                                                           [5, 5, 4]]
    # the same model through rnnkit.generation's search
    state = model.initial_state(labels)
    start = torch.tensor([2, 2])
    assert [h.tokens for h in greedy(model, state, start, 1, 10)] == [[3, 4, 5, 3], [5, 5, 4]]
    best = beam_search(model, state, start, 1, 10, beam_size=3)
    assert [h[0].tokens for h in best] == [[3, 4, 5, 3], [5, 5, 4]]


def test_unknown_label_is_named():
    with pytest.raises(ValueError, match="unknown condition 'c'; this model knows a, b"):
        tiny_clm().label_id("c")


def test_commands(tmp_path, capsys):
    d = tmp_path / "abc"
    d.mkdir()
    (d / "jigs.abc").write_text((JIG + "\n\n\n") * 6)
    (d / "reelsa-c.abc").write_text((REEL + "\n\n") * 6)
    out = tmp_path / "run"
    assert main(["train", "conditional-lm", "--train", str(d), "--out", str(out),
                 "--hidden-size", "16", "--embedding-size", "8", "--num-layers", "1",
                 "--max-steps", "3", "--no-progress", "--batch-size", "4"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "conditional-lm" and config["model"]["labels"] == ["jigs", "reels"]
    capsys.readouterr()
    assert main(["generate", str(out), "--condition", "reels", "--num", "3", "--max-len", "50",
                 "--check"]) == 0
    err = capsys.readouterr().err
    assert "of 3 tunes well-formed ABC" in err
    assert main(["generate", str(out), "--condition", "polkas"]) == 2
    assert "unknown condition 'polkas'" in capsys.readouterr().err


def test_window_sets_the_qrnn_conditional_lms_convolution_per_layer(tmp_path, capsys):
    """`rnnkit train conditional-lm --cell qrnn --window 2,1` (the flag of `train lm`):
    recorded in the run's LM config, each layer built with it, generation runs on it; another
    window on resume and the flag with another cell are refused."""
    from rnnkit.tasks.conditional import load_run

    d = tmp_path / "abc"
    d.mkdir()
    (d / "jigs.abc").write_text((JIG + "\n\n\n") * 6)
    (d / "reels.abc").write_text((REEL + "\n\n") * 6)
    out = tmp_path / "run"
    base = ["train", "conditional-lm", "--train", str(d), "--hidden-size", "16",
            "--embedding-size", "8", "--num-layers", "2", "--max-steps", "3", "--no-progress",
            "--batch-size", "4"]
    assert main([*base, "--cell", "qrnn", "--window", "2,1", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["lm"]["layer_cell_options"] == [{"window": 2}, {"window": 1}]
    model, _ = load_run(str(out))
    assert [layer.cell.window for layer in model.lm.rnn.layers] == [2, 1]
    capsys.readouterr()
    assert main(["generate", str(out), "--condition", "reels", "--num", "2", "--max-len",
                 "20"]) == 0
    assert main([*base, "--cell", "qrnn", "--window", "1", "--out", str(out), "--resume"]) == 2
    assert "--window" in capsys.readouterr().err
    assert main([*base, "--window", "1", "--out", str(tmp_path / "b")]) == 2
    assert "only the qrnn cell" in capsys.readouterr().err
