"""rnnkit's own exceptions: each names the file, line or argument at fault.

The command line prints them as one line (``rnnkit: error: ...``) with no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path


class RnnkitError(Exception):
    """Base class of every error rnnkit raises on bad input."""


class DataError(RnnkitError, ValueError):
    """A data file that cannot be read as asked: names the file and, where known, the line."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class CheckpointError(RnnkitError, ValueError):
    """A run directory or checkpoint that is missing, corrupt, foreign or of another task."""


class TrainingError(RnnkitError, RuntimeError):
    """Training cannot go on (NaN or exploding loss); the last good checkpoint is kept."""


class MeaninglessResult(RnnkitError):
    """An evaluation whose numbers would mean nothing (``--strict`` turns the warning into
    this error): most tokens unknown to the model, label sets that do not overlap."""


def note(message: str) -> None:
    """Print ``rnnkit: message`` on stderr: progress and notes go there, results to stdout."""
    print(f"rnnkit: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Print ``rnnkit: warning: message`` on stderr (notes never go to stdout)."""
    print(f"rnnkit: warning: {message}", file=sys.stderr, flush=True)


def suspect(message: str, strict: bool = False) -> None:
    """A result that may mean nothing: a warning, or with ``strict`` a
    :class:`MeaninglessResult`."""
    if strict:
        raise MeaninglessResult(message + " (--strict)")
    warn(message + " (--strict makes this an error)")
