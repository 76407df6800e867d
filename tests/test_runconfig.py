"""One run configuration: every task writes format 1, and run directories written by the
previous release (format 0, committed under tests/data/legacy_runs, made by commit eb35df5)
still load and evaluate to the numbers that release printed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rnnkit.cli import main
from rnnkit.errors import CheckpointError
from rnnkit.training.checkpoint import RunDir
from rnnkit.training.runconfig import FORMAT, RunConfig

LEGACY = Path(__file__).parent / "data" / "legacy_runs"
DATA = {"lm": "text.txt", "tagger": "dev.conll", "classifier": "dev.tsv"}


def _close(a: object, b: object) -> None:
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _close(a[k], b[k])
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)
    else:
        assert a == b


@pytest.mark.parametrize("task", sorted(DATA))
def test_a_run_of_the_previous_release_loads_and_evaluates(task, tmp_path, capsys) -> None:
    run = tmp_path / task
    shutil.copytree(LEGACY / task, run)
    assert "format" not in json.loads((run / "config.json").read_text())
    assert main(["evaluate", str(run), "--data", str(LEGACY / DATA[task]), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    # added since that release: the share of tokens / tags unknown to the model
    added = {k: got.pop(k) for k in ("unknown_share", "unknown_tags") if k in got}
    assert all(v == 0.0 for v in added.values()) and len(added) == (task != "classifier")
    _close(got, json.loads((LEGACY / f"{task}.expected.json").read_text()))
    config = RunDir(run).read_config(task)
    assert config["format"] == FORMAT
    if task != "lm":  # format 0 kept the tagger's and classifier's batch size at the top
        assert config["data"]["batch_size"] == 8 and "batch_size" not in config


def test_every_task_writes_the_same_schema(tmp_path) -> None:
    run = tmp_path / "lm"
    shutil.copytree(LEGACY / "lm", run)
    RunDir(run).write_config(RunDir(run).read_run_config())
    raw = json.loads((run / "config.json").read_text())
    assert list(raw) == ["format", "task", "model", "data", "train"]
    assert raw["format"] == FORMAT


def test_bad_configs_are_refused_with_the_file_named(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"c\.json: format 99 was written by a newer"):
        RunConfig.from_dict({"format": 99, "task": "lm"}, "c.json")
    with pytest.raises(CheckpointError, match=r"c\.json: unknown keys \['extra'\]"):
        RunConfig.from_dict({"format": 1, "task": "lm", "extra": 1}, "c.json")
    with pytest.raises(CheckpointError, match=r"c\.json: \"data\" must be an object"):
        RunConfig.from_dict({"format": 1, "task": "lm", "data": [1]}, "c.json")
    with pytest.raises(CheckpointError, match=r"no \"task\" key"):
        RunConfig.from_dict({"format": 1}, "c.json")
    upgraded = RunConfig.from_dict({"task": "tagger", "batch_size": 7, "data": {"dev": None}})
    assert upgraded.data == {"dev": None, "batch_size": 7} and upgraded.format == FORMAT
