"""rnnkit's own exceptions: each names the file, line or argument at fault.

The command line prints them as one line (``rnnkit: error: ...``) with no traceback.
"""

from __future__ import annotations

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
