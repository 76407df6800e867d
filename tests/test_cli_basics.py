"""Small promises of the command line (issue 13, items 8, 11 and 12): --version, --help of
the run-directory commands without a run, generation options checked before training, and
run files that follow the user's umask."""

from __future__ import annotations

import os
import stat

import pytest

from rnnkit import __version__
from rnnkit.cli import RUN_COMMANDS, main
from rnnkit.files import write_bytes_atomic, write_text_atomic


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"rnnkit {__version__}\n"


@pytest.mark.parametrize("command", sorted(RUN_COMMANDS))
def test_help_of_a_run_command_needs_no_run(command, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"rnnkit {command} DIR --help" in " ".join(out.split())


@pytest.mark.parametrize("option,value,needle", [("--temperature", "-1", "--temperature"),
                                                 ("--sample-length", "-5", "--sample-length")])
def test_generation_options_are_checked_before_training(option, value, needle, tmp_path,
                                                        capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "lm", option, value, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnkit: error: ") and err.count("\n") == 1 and needle in err
    assert not out.exists()  # nothing was trained or written


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_follow_the_umask(umask, mode, tmp_path) -> None:
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "a.json", "{}")
        write_bytes_atomic(tmp_path / "b.bin", b"x")
    finally:
        os.umask(old)
    for name in ("a.json", "b.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode
