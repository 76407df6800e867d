"""Run directories and checkpoints: safetensors for tensors, JSON for the rest, never pickle.

A run directory (what ``rnnkit train <task> --out DIR`` writes)::

    DIR/config.json           {"format": 1, "task": "lm", "model": {...}, "data": {...},
                              "train": {...}} (rnnkit.training.runconfig)
    DIR/vocab.json            the Vocabulary (tasks may add more, e.g. tags.json)
    DIR/model.safetensors     the best weights (lowest validation loss), used by evaluate etc.
    DIR/last/                 the last checkpoint, for --resume:
        model.safetensors       weights
        optimizer.safetensors   optimizer tensors (moments, step counts)
        optimizer.json          optimizer param groups and non-tensor state
        rng.safetensors         torch's random-number state (CPU, and CUDA when present)
        carry.safetensors       state carried between batches (an LM's hidden state)
        trainer.json            step, epoch, best metric, schedule, Python's RNG state, ...
    DIR/log.jsonl             one JSON object per logged step / evaluation

Every file is written atomically (temporary file + ``os.replace``); ``last/`` is written as a
whole into ``last.tmp/`` and then swapped in, so an interrupted write leaves the previous
checkpoint intact. Loading reads safetensors and JSON only; pickle files (``torch.save``) are
refused with a :class:`CheckpointError`, as are missing, corrupt or foreign files and a run
of another task.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from rnnkit.data.vocab import Vocabulary
from rnnkit.errors import CheckpointError, DataError
from rnnkit.files import write_bytes_atomic, write_text_atomic
from rnnkit.training.runconfig import RunConfig

CONFIG = "config.json"
VOCAB = "vocab.json"
WEIGHTS = "model.safetensors"
LAST = "last"
#: the moving average of the weights in ``last/`` (``--ema``)
AVERAGED = "averaged.safetensors"
LOG = "log.jsonl"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".tar")
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2; torch.save's zip archive


# -- JSON and tensors ----------------------------------------------------------------------
def save_json(path: str | Path, obj: object) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def load_json(path: str | Path) -> Any:
    """Read a JSON file; :class:`CheckpointError` when missing or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, expected a JSON file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: corrupt, not valid JSON ({err})") from None


def refuse_pickle(path: str | Path) -> None:
    """Raise :class:`CheckpointError` if ``path`` is (or looks like) a pickle file."""
    path = Path(path)
    head = b""
    if path.is_file():
        with path.open("rb") as f:
            head = f.read(9)
    # a safetensors file starts with its header's 8-byte length, whose first byte may be 0x80;
    # its JSON header then starts with "{" (byte 8)
    safetensors = len(head) == 9 and head[8:9] == b"{"
    if path.suffix in PICKLE_SUFFIXES or (
            not safetensors and any(head.startswith(m) for m in _PICKLE_MAGIC)):
        raise CheckpointError(f"{path}: is a pickle file (torch.save); rnnkit never unpickles "
                              f"(it can run arbitrary code). Save tensors with safetensors.")


#: the metadata key of a tensor file's checksum: SHA-256 of its data section (the bytes after
#: the header), written by :func:`save_tensors` and verified by :func:`load_tensors`
CHECKSUM = "sha256"


def _with_checksum(raw: bytes) -> bytes:
    """A safetensors file ``raw`` with the SHA-256 of its data section in its metadata (the
    header is rewritten; data offsets are relative to the data section, so they stay)."""
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    header.setdefault("__metadata__", {})[CHECKSUM] = hashlib.sha256(data).hexdigest()
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data section to 8 bytes
    return len(text).to_bytes(8, "little") + text + data


def _verify_checksum(path: Path, raw: bytes) -> None:
    """:class:`CheckpointError` when the data section of ``raw`` does not hash to the
    checksum its header records (files written before checksums carry none: not checked)."""
    try:
        n = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8:8 + n]).get("__metadata__") or {}
    except (ValueError, AttributeError):
        return  # not a header: safetensors' own reader names the problem
    want = meta.get(CHECKSUM) if isinstance(meta, dict) else None
    if want is not None and hashlib.sha256(raw[8 + n:]).hexdigest() != want:
        raise CheckpointError(f"{path}: corrupt: its tensors do not match the SHA-256 "
                              f"checksum recorded when it was written (the file was changed "
                              f"or damaged)")


def save_tensors(path: str | Path, tensors: Mapping[str, Tensor],
                 metadata: Mapping[str, str] | None = None) -> None:
    """Write named tensors as a safetensors file, atomically, with the SHA-256 of its data in
    its metadata (tensors are copied to contiguous CPU memory first)."""
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    raw = st_save(data, metadata=dict(metadata) if metadata else None)
    write_bytes_atomic(path, _with_checksum(raw))


def load_tensors(path: str | Path) -> dict[str, Tensor]:
    """Read a safetensors file; :class:`CheckpointError` when missing, pickled, corrupt or
    not matching its checksum."""
    path = Path(path)
    refuse_pickle(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, expected a safetensors file") from None
    _verify_checksum(path, raw)
    try:
        return st_load(raw)
    except Exception as err:  # safetensors raises its own error type for every bad header
        raise CheckpointError(f"{path}: corrupt or not a safetensors file ({err})") from None


# -- model weights -------------------------------------------------------------------------
def save_weights(model: nn.Module, path: str | Path) -> None:
    """Save ``model.state_dict()`` as safetensors. Tensors shared by several names (tied
    weights) are stored once; the other names are recorded in the metadata as aliases."""
    seen: dict[tuple, str] = {}
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride()) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        tensors[name] = t
    save_tensors(path, tensors, {"format": "rnnkit-weights", "aliases": json.dumps(aliases)})


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load weights written by :func:`save_weights` into ``model`` (strictly: every name and
    shape must match, else a :class:`CheckpointError` listing the differences)."""
    path = Path(path)
    tensors = load_tensors(path)
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    try:
        aliases = json.loads(meta.get("aliases", "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: corrupt metadata") from None
    for name, target in aliases.items():
        if target in tensors:
            tensors[name] = tensors[target]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [f"{k}: file {tuple(tensors[k].shape)}, model {tuple(expected[k].shape)}"
              for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shapes differ (" + "; ".join(shapes[:4]) + ")")
        if missing:
            parts.append(f"missing {missing[:4]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:4]}")
        raise CheckpointError(f"{path}: the weights do not match the model built from its "
                              f"config and vocabulary: " + ", ".join(parts))
    model.load_state_dict(tensors, strict=True)


# -- nested states (an LM's hidden state carried between windows) --------------------------
def flatten_state(state: object, prefix: str = "s") -> tuple[dict[str, Tensor], object]:
    """A nested state (tensors in tuples / lists, or None) as named tensors plus a JSON
    structure that :func:`unflatten_state` turns back into it."""
    if state is None:
        return {}, None
    if isinstance(state, Tensor):
        return {prefix: state}, prefix
    if isinstance(state, (tuple, list)):
        tensors: dict[str, Tensor] = {}
        parts = []
        for i, s in enumerate(state):
            t, struct = flatten_state(s, f"{prefix}.{i}")
            tensors.update(t)
            parts.append(struct)
        return tensors, {"tuple" if isinstance(state, tuple) else "list": parts}
    raise TypeError(f"cannot save a state of type {type(state).__name__}")


def unflatten_state(tensors: Mapping[str, Tensor], structure: object) -> object:
    """Inverse of :func:`flatten_state`."""
    if structure is None:
        return None
    if isinstance(structure, str):
        return tensors[structure]
    kind, parts = next(iter(structure.items()))
    items = [unflatten_state(tensors, p) for p in parts]
    return tuple(items) if kind == "tuple" else items


# -- optimizer and random-number state -----------------------------------------------------
def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """``optimizer.state_dict()`` split into tensors and JSON."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    plain: dict[str, dict] = {}
    for pid, entries in sd["state"].items():
        plain[str(pid)] = {}
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                plain[str(pid)][key] = value
    return tensors, {"param_groups": sd["param_groups"], "state": plain}


#: Param-group keys that say how torch computes a step, not what the step is: a resumed run
#: keeps the implementation its optimizer was built with (``build_optimizer``'s fused one),
#: whatever the run that saved the state used.
IMPLEMENTATION_KEYS = ("fused", "foreach")


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor],
                         plain: dict, source: str) -> None:
    """Inverse of :func:`optimizer_state`; the optimizer's own :data:`IMPLEMENTATION_KEYS`
    are kept (torch's ``load_state_dict`` would take the saved ones)."""
    chosen = [{k: g[k] for k in IMPLEMENTATION_KEYS if k in g} for g in optimizer.param_groups]
    try:
        state: dict[int, dict] = {int(pid): dict(v) for pid, v in plain["state"].items()}
        for name, t in tensors.items():
            pid, key = name.split(".", 1)
            state.setdefault(int(pid), {})[key] = t
        optimizer.load_state_dict({"state": state, "param_groups": plain["param_groups"]})
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{source}: optimizer state does not fit this optimizer "
                              f"({err})") from None
    for group, keys in zip(optimizer.param_groups, chosen):
        group.update(keys)


def rng_state() -> tuple[dict[str, Tensor], dict]:
    """torch's (CPU and CUDA) and Python's random-number states: tensors and JSON."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    return tensors, {"python": [version, list(internal), gauss]}


def set_rng_state(tensors: Mapping[str, Tensor], plain: dict) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    if "python" in plain:
        version, internal, gauss = plain["python"]
        random.setstate((version, tuple(internal), gauss))


# -- the run directory ---------------------------------------------------------------------
class RunDir:
    """A run directory (see the module docstring). Creating the object touches nothing."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def log_path(self) -> Path:
        return self.path / LOG

    @property
    def last_path(self) -> Path:
        return self.path / LAST

    def check_exists(self) -> None:
        """:class:`CheckpointError` unless the directory exists."""
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: no such run directory")
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: not a directory (expected a run directory)")

    # config and vocabularies
    def write_config(self, config: RunConfig | Mapping[str, object]) -> None:
        """Write ``config.json`` in the current format (a :class:`RunConfig`, or a mapping
        with its keys)."""
        if not isinstance(config, RunConfig):
            config = RunConfig.from_dict(dict(config), str(self.path / CONFIG))
        save_json(self.path / CONFIG, config.to_dict())

    def check_no_pickles(self) -> None:
        """:class:`CheckpointError` if the run directory (or its ``last/``) holds a pickle file
        (``.pt``, ``.pth``, ``.bin``, ``.pkl``, ...): a run is safetensors and JSON only, and
        one that holds a pickle is refused rather than loaded around it."""
        found = [p for d in (self.path, self.last_path) if d.is_dir() for p in sorted(d.iterdir())
                 if p.suffix.lower() in PICKLE_SUFFIXES]
        if found:
            names = ", ".join(str(p.relative_to(self.path)) for p in found)
            raise CheckpointError(f"{self.path}: holds pickle files ({names}); rnnkit never "
                                  f"unpickles (it can run arbitrary code) and refuses the run; "
                                  f"remove them or convert tensors with safetensors")

    def read_config(self, task: str | None = None) -> dict:
        """Read ``config.json`` (any format this release knows, upgraded to the current one,
        see :mod:`rnnkit.training.runconfig`); with ``task``, refuse a run of another task. A
        run directory holding a pickle file is refused (:meth:`check_no_pickles`). This is
        the one reader of run configs: every loader and command goes through it."""
        return self.read_run_config(task).to_dict()

    def read_run_config(self, task: str | None = None) -> RunConfig:
        """:meth:`read_config` as a :class:`RunConfig`."""
        self.check_exists()
        self.check_no_pickles()
        path = self.path / CONFIG
        if not path.exists():
            raise CheckpointError(f"{path}: missing; {self.path} is not an rnnkit run "
                                  f"directory")
        try:
            raw = load_json(path)
        except CheckpointError as err:
            raise CheckpointError(f"{err}; not a valid rnnkit config") from None
        config = RunConfig.from_dict(raw, str(path))
        if task is not None and config.task != task:
            raise CheckpointError(f"{self.path}: is a {config.task!r} run, not a {task!r} "
                                  f"run")
        return config

    def save_vocab(self, vocab: Vocabulary, name: str = VOCAB) -> None:
        vocab.save(self.path / name)

    def load_vocab(self, name: str = VOCAB) -> Vocabulary:
        """Read a vocabulary of the run; :class:`CheckpointError` when missing or corrupt."""
        path = self.path / name
        if not path.exists():
            raise CheckpointError(f"{path}: missing; the run directory is incomplete")
        try:
            return Vocabulary.load(path)
        except DataError as err:
            raise CheckpointError(str(err)) from None

    # weights
    def save_weights(self, model: nn.Module, name: str = WEIGHTS) -> None:
        save_weights(model, self.path / name)

    def load_model(self, task: str, build: Callable[[dict], nn.Module]) -> tuple[nn.Module, dict]:
        """The run's model, built by ``build(config["model"])``, with its best weights and in
        eval mode, and the run's config; a model section that cannot be used is a
        :class:`CheckpointError` naming ``config.json``."""
        config = self.read_config(task=task)
        try:
            model = build(config["model"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{self.path / CONFIG}: invalid model section ({err})") from None
        self.load_weights(model)
        return model.eval(), config

    def load_weights(self, model: nn.Module, name: str = WEIGHTS) -> None:
        """Load the best weights into ``model``."""
        path = self.path / name
        if not path.exists():
            pickles = [p.name for p in self.path.glob("*") if p.suffix in PICKLE_SUFFIXES]
            hint = f" (found {pickles}: pickle files are never loaded)" if pickles else ""
            raise CheckpointError(f"{path}: missing; the run directory is incomplete{hint}")
        load_weights(model, path)

    # the last checkpoint, for resuming
    def truncate_log(self, step: int) -> None:
        """Drop the log records of steps after ``step`` (on resume: written by the interrupted
        process after its last checkpoint, and about to be run again) and a line torn by a
        kill."""
        if not self.log_path.exists():
            return
        kept = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines(keepends=True):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            later = isinstance(record, dict) and isinstance(record.get("step"), int) \
                and record["step"] > step
            if not later:
                kept.append(line if line.endswith("\n") else line + "\n")
        write_text_atomic(self.log_path, "".join(kept))

    def has_last(self) -> bool:
        return (self.last_path / "trainer.json").exists() or (
            self.path / (LAST + ".old") / "trainer.json").exists()

    def save_last(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                  trainer: Mapping[str, object], carry: object = None,
                  averaged: Mapping[str, Tensor] | None = None) -> None:
        """Write ``last/`` as a whole: weights, optimizer, RNG, carry and trainer state (and
        the moving average of the weights, ``averaged``, where there is one)."""
        tmp = self.path / (LAST + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            save_weights(model, tmp / WEIGHTS)
            opt_tensors, opt_plain = optimizer_state(optimizer)
            save_tensors(tmp / "optimizer.safetensors", opt_tensors)
            save_json(tmp / "optimizer.json", opt_plain)
            rng_tensors, rng_plain = rng_state()
            save_tensors(tmp / "rng.safetensors", rng_tensors)
            carry_tensors, carry_struct = flatten_state(carry)
            save_tensors(tmp / "carry.safetensors", carry_tensors)
            if averaged is not None:
                save_tensors(tmp / AVERAGED, averaged)
            save_json(tmp / "trainer.json", {**trainer, "rng": rng_plain,
                                             "carry": carry_struct})
        except Exception:  # a full disk: the previous last/ stays as it was
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = self.path / (LAST + ".old")
        if old.exists():
            shutil.rmtree(old)
        if self.last_path.exists():
            self.last_path.rename(old)
        tmp.rename(self.last_path)
        if old.exists():
            shutil.rmtree(old)

    def load_last(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, object]:
        """Restore ``last/`` into ``model``, ``optimizer`` and the RNGs.

        Returns ``(trainer_state, carry)``."""
        last = self._resumable()
        trainer = load_json(last / "trainer.json")
        load_weights(model, last / WEIGHTS)
        opt_plain = load_json(last / "optimizer.json")
        load_optimizer_state(optimizer, load_tensors(last / "optimizer.safetensors"), opt_plain,
                             str(last / "optimizer.json"))
        set_rng_state(load_tensors(last / "rng.safetensors"), trainer.get("rng", {}))
        try:
            carry = unflatten_state(load_tensors(last / "carry.safetensors"),
                                    trainer.get("carry"))
        except (KeyError, AttributeError, StopIteration) as err:
            raise CheckpointError(f"{last}: carry state does not match trainer.json "
                                  f"({err})") from None
        return trainer, carry

    def _resumable(self) -> Path:
        """``last/``, or ``last.old/`` where a swap was interrupted."""
        last = self.last_path
        if not (last / "trainer.json").exists() and (self.path / (LAST + ".old")).exists():
            last = self.path / (LAST + ".old")
        if not last.is_dir():
            raise CheckpointError(f"{last}: missing; nothing to resume in {self.path}")
        return last

    def load_averaged(self) -> tuple[dict[str, Tensor], Path]:
        """The moving average of the weights that :meth:`save_last` wrote, and its file."""
        path = self._resumable() / AVERAGED
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; the run was trained with --ema but its "
                                  f"last checkpoint has no averaged weights")
        return load_tensors(path), path
