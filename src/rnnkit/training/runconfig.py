"""One run configuration for every task.

``config.json`` of every run directory is::

    {"format": 1, "task": "lm" | "tagger" | ..., "model": {...}, "data": {...}, "train": {...}}

``model`` is the task's model dataclass (``LMConfig``, ``TaggerConfig``, ...), ``data`` its data
dataclass (``rnnkit.tasks.<task>``), ``train`` the :class:`~rnnkit.training.loop.TrainConfig`;
seq2seq runs add a ``decode`` section (the decoding defaults of ``rnnkit translate``). Every
loader reads it through :meth:`rnnkit.training.checkpoint.RunDir.read_config`, which refuses
a run directory that holds pickles and upgrades what earlier releases wrote:

- format 0 (no ``"format"`` key, rnnkit up to commit eb35df5): the tagger and the classifier
  kept ``batch_size`` at the top level; it moves into ``data``;
- format 1 (up to 2026-12-02): a model whose ``cell`` is a name since renamed
  (``rnnkit.cells.DEPRECATED_CELLS``: ``mingru``, the notes' simplified GRU, is now
  ``gru-simple``) gets today's name, so the run loads as the cell it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from rnnkit.errors import CheckpointError

#: the format this release writes
FORMAT = 2
SECTIONS = ("model", "data", "train")


@dataclass
class RunConfig:
    """The contents of ``config.json`` (see the module docstring)."""

    task: str
    model: dict
    data: dict
    train: dict
    decode: dict | None = None
    format: int = FORMAT

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"format": self.format, "task": self.task, "model": self.model,
                               "data": self.data, "train": self.train}
        if self.decode is not None:
            out["decode"] = self.decode
        return out

    @classmethod
    def from_dict(cls, raw: object, source: str = "config.json") -> RunConfig:
        """Validate (and upgrade from an earlier format) what ``config.json`` holds; a
        :class:`CheckpointError` naming ``source`` and the problem otherwise."""
        if not isinstance(raw, dict) or "task" not in raw:
            raise CheckpointError(f"{source}: not an rnnkit run config (no \"task\" key)")
        raw = dict(raw)
        version = raw.pop("format", 0)
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise CheckpointError(f"{source}: \"format\" must be a non-negative int, got "
                                  f"{version!r}")
        if version > FORMAT:
            raise CheckpointError(f"{source}: format {version} was written by a newer rnnkit "
                                  f"(this one reads formats up to {FORMAT}); upgrade rnnkit")
        if version == 0:
            raw = _upgrade_from_0(raw)
        if version <= 1:
            raw = _upgrade_from_1(raw)
        known = {f.name for f in fields(cls)} - {"format"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise CheckpointError(f"{source}: unknown keys {unknown}")
        for name in SECTIONS:
            raw.setdefault(name, {})
            if not isinstance(raw[name], dict):
                raise CheckpointError(f"{source}: \"{name}\" must be an object, got "
                                      f"{type(raw[name]).__name__}")
        if not isinstance(raw["task"], str):
            raise CheckpointError(f"{source}: \"task\" must be a string")
        return cls(**raw)


def _upgrade_from_0(raw: dict) -> dict:
    """Format 0 -> 1: a top-level ``batch_size`` belongs to the data section."""
    if "batch_size" in raw:
        data = dict(raw.get("data") or {})
        data.setdefault("batch_size", raw.pop("batch_size"))
        raw["data"] = data
    return raw


def _renamed_cells(value: object) -> object:
    from rnnkit.cells import DEPRECATED_CELLS

    if isinstance(value, dict):
        return {k: (DEPRECATED_CELLS.get(v, v) if k == "cell" and isinstance(v, str)
                    else _renamed_cells(v)) for k, v in value.items()}
    return value


def _upgrade_from_1(raw: dict) -> dict:
    """Format 1 -> 2: renamed cells get today's names in the model section."""
    if isinstance(raw.get("model"), dict):
        raw["model"] = _renamed_cells(raw["model"])
    return raw


def section(cls: type, values: dict, name: str, source: str = "config.json") -> Any:
    """The dataclass ``cls`` from a config section; unknown keys are a
    :class:`CheckpointError` naming them."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CheckpointError(f"{source}: unknown {name} options {unknown}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: invalid {name} section ({err})") from None


__all__ = ["FORMAT", "RunConfig", "section"]
