"""One flag vocabulary: each concept has one flag in every ``rnnkit train TASK``, and the
earlier spellings still work as hidden, warned aliases."""

from __future__ import annotations

import argparse
import re

import pytest

from rnnkit.cli import build_parser
from rnnkit.commands import lm

# concept -> the one flag; tasks that split it (encoder / decoder) say so in TASK_SPECIFIC
CANONICAL = {"training data": "--train", "validation data": "--dev",
             "hidden size": "--hidden-size", "layers": "--num-layers",
             "embedding size": "--embedding-size", "rare words": "--min-freq",
             "cell": "--cell", "dropout": "--dropout", "batch size": "--batch-size"}
TASK_SPECIFIC = {"seq2seq": {"--train", "--dev", "--hidden-size", "--num-layers", "--min-freq"},
                 "conditional-lm": {"--dev", "--min-freq"}}
OLD = {"--hidden", "--layers", "--embedding", "--embed-dim", "--word-dim", "--min-count",
       "--valid", "--valid-fraction", "--valid-src", "--valid-tgt", "--valid-tsv", "--data",
       "--encoder-hidden-size"}


def _train_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    train = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    tasks = next(a for a in train.choices["train"]._actions
                 if isinstance(a, argparse._SubParsersAction))
    return dict(tasks.choices)


def _visible(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


@pytest.mark.parametrize("task", ["lm", "tagger", "classifier", "seq2seq", "conditional-lm"])
def test_each_shared_concept_has_one_flag(task) -> None:
    flags = _visible(_train_parsers()[task])
    assert not flags & OLD, f"{task}: old spellings shown by --help: {flags & OLD}"
    for concept, flag in CANONICAL.items():
        if flag in TASK_SPECIFIC.get(task, set()):
            continue
        assert flag in flags, f"rnnkit train {task} has no {flag} ({concept})"
    if task == "seq2seq":
        assert {"--dev-src", "--dev-tgt", "--encoder-hidden", "--decoder-hidden"} <= flags


@pytest.mark.parametrize("old,new,value,dest", [
    ("--hidden", "--hidden-size", "8", "hidden_size"),
    ("--layers", "--num-layers", "3", "num_layers"),
    ("--embedding", "--embedding-size", "5", "embedding_size"),
    ("--valid", "--dev", "v.txt", "dev"),
    ("--valid-fraction", "--dev-fraction", "0.2", "dev_fraction"),
])
def test_old_spellings_are_warned_aliases(old, new, value, dest, capsys) -> None:
    parser = argparse.ArgumentParser()
    lm.add_train_arguments(parser)
    args = parser.parse_args([old, value])
    assert str(getattr(args, dest)) == value
    err = capsys.readouterr().err
    assert err == f"rnnkit: warning: {old} is deprecated; use {new}\n"
    assert not re.search(re.escape(old) + r"[\s\]=]", parser.format_help())
    assert getattr(parser.parse_args([]), dest) is None  # the alias sets no default


@pytest.mark.parametrize("task,old,new", [("tagger", "--word-dim", "--embedding-size"),
                                          ("tagger", "--min-count", "--min-freq"),
                                          ("classifier", "--embed-dim", "--embedding-size"),
                                          ("classifier", "--layers", "--num-layers"),
                                          ("seq2seq", "--valid-src", "--dev-src"),
                                          ("conditional-lm", "--data", "--train")])
def test_every_task_keeps_its_old_spellings(task, old, new, capsys) -> None:
    parser = _train_parsers()[task]
    target = next(a for a in parser._actions if new in a.option_strings)
    args, _ = parser.parse_known_args(["--train", "t", old, "7"])
    assert str(getattr(args, target.dest)) == "7"
    assert f"{old} is deprecated; use {new}" in capsys.readouterr().err
