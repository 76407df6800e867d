"""Synthetic long-range tasks: deterministic, and the answer is where the docstring says."""

from __future__ import annotations

import pytest
import torch

from rnnkit.data.synthetic import (
    AGREEMENT_VOCAB,
    IGNORE,
    PLURAL,
    SINGULAR,
    adding_problem,
    agreement_task,
    copy_task,
    make_task,
)


def test_adding_problem_sums_the_marked_values():
    task = adding_problem(50, 20, seed=3)
    values, markers = task.inputs[..., 0], task.inputs[..., 1]
    assert bool((markers.sum(1) == 2).all())
    assert bool((markers[:, :10].sum(1) == 1).all())  # one marker in each half
    torch.testing.assert_close(task.targets, (values * markers).sum(1))
    assert task.mask[:, -1].all() and task.mask.sum() == 50
    again = adding_problem(50, 20, seed=3)
    assert torch.equal(again.inputs, task.inputs) and torch.equal(again.targets, task.targets)
    assert not torch.equal(adding_problem(50, 20, seed=4).inputs, task.inputs)


@pytest.mark.parametrize("distractors", [False, True])
def test_copy_task_asks_for_each_symbol_delay_steps_later(distractors):
    task = copy_task(30, 9, length=3, num_symbols=5, distractors=distractors, seed=1)
    assert task.inputs.shape == (30, 12)
    assert torch.equal(task.targets[:, 9:], task.inputs[:, :3])
    assert bool((task.targets[:, :9] == IGNORE).all())
    assert bool((task.inputs[:, 8] == 1).all())  # "go" right before the first answer
    assert bool((task.inputs[:, 9:] == 0).all())
    assert bool(((task.inputs[:, :3] >= 2) & (task.inputs[:, :3] < 7)).all())
    middle = task.inputs[:, 3:8]
    assert bool((middle == 0).all()) != distractors
    assert task.chance() == pytest.approx(1 / 5)
    assert torch.equal(copy_task(30, 9, length=3, num_symbols=5, distractors=distractors,
                                 seed=1).inputs, task.inputs)


def test_copy_task_rejects_a_delay_shorter_than_the_sequence():
    with pytest.raises(ValueError, match="delay must be an int >= 4"):
        copy_task(4, 3, length=3)


def test_agreement_target_agrees_with_the_subject_not_the_attractors():
    task = agreement_task(200, 8, attractors=0.5, seed=2)
    vocab = task.vocab
    assert vocab == AGREEMENT_VOCAB and task.inputs.shape == (200, 9)
    words = [[vocab[i] for i in row] for row in task.inputs.tolist()]
    answers = [vocab[i] for i in task.targets[:, -1].tolist()]
    for row, answer in zip(words, answers):
        assert row[0] in SINGULAR + PLURAL and row[-1] == "<query>"
        assert answer == ("were" if row[0] in PLURAL else "was")
    assert bool((task.targets[:, :-1] == IGNORE).all())
    # attractors of the other number occur between subject and verb
    mismatched = sum(any((w in PLURAL) != (row[0] in PLURAL) for w in row[1:-1]
                         if w in SINGULAR + PLURAL) for row in words)
    assert mismatched > 100
    plural_share = sum(a == "were" for a in answers) / 200
    assert 0.4 < plural_share < 0.6
    assert torch.equal(make_task("agreement", 200, 8, attractors=0.5, seed=2).inputs,
                       task.inputs)


def test_make_task_names_a_bad_task():
    with pytest.raises(ValueError, match="task must be one of"):
        make_task("sorting", 2, 3)
