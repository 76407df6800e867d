"""Checks of option values made before any work starts, each failing with one line that
names the flag (``--hidden-size must be a positive int, got 0``).

One table, :data:`RANGES`, says what every model and data option of every task may be; each
task's options dataclass calls :func:`check_options` from its ``__post_init__``, so a program
that builds the options object is checked as the command line is. :func:`check_device`
checks a ``--device`` for every verb; :func:`qrnn_windows` reads the ``--window`` of every
task that trains a QRNN.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import Any

import torch

from rnnkit.cells.scan import QRNN_WINDOW
from rnnkit.errors import RnnkitError


def flag(name: str) -> str:
    """The command-line spelling of the option ``name`` (``hidden_size`` -> ``--hidden-size``)."""
    return "--" + name.replace("_", "-")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _non_negative_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _dropout(v: object) -> bool:
    return _number(v) and 0 <= v < 1


def _fraction(v: object) -> bool:
    return _number(v) and 0 <= v <= 1


def _open_fraction(v: object) -> bool:
    return _number(v) and 0 < v < 1


_Rule = tuple[Callable[[object], bool], Callable[[], str]]


def _choice(names: Callable[[], tuple[str, ...]]) -> _Rule:
    return (lambda v: v in names()), (lambda: "one of " + ", ".join(names()))


def _cells() -> tuple[str, ...]:
    from rnnkit.cells import CELL_NAMES, DEPRECATED_CELLS
    return (*CELL_NAMES, *DEPRECATED_CELLS)


def _engines() -> tuple[str, ...]:
    from rnnkit.engines import ENGINES
    return tuple(ENGINES)


def _connections() -> tuple[str, ...]:
    from rnnkit.layers.stacking import CONNECTIONS
    return tuple(CONNECTIONS)


_POSITIVE = (_positive_int, lambda: "a positive int")
_NON_NEGATIVE = (_non_negative_int, lambda: "an int >= 0")
_DROPOUT = (_dropout, lambda: "a probability in [0, 1)")
_FRACTION = (_fraction, lambda: "a number in [0, 1]")

#: option name -> (test, what it must be); an option of a task's options dataclass that is
#: in this table is checked when the options are made (None: not given, not checked)
RANGES: dict[str, _Rule] = {
    **dict.fromkeys(("hidden_size", "num_layers", "embedding_size", "char_dim", "char_hidden",
                     "min_freq", "batch_size", "bptt", "max_vocab", "vocab_size",
                     "max_src_len", "max_tgt_len", "max_tokens", "encoder_hidden",
                     "decoder_hidden", "encoder_layers", "decoder_layers", "dev_beam",
                     "label_size", "max_chars", "subsample", "n_mels"), _POSITIVE),
    **dict.fromkeys(("sample_length", "delay"), _NON_NEGATIVE),
    **dict.fromkeys(("dropout", "word_dropout", "embedding_dropout", "output_dropout",
                     "dropconnect", "label_smoothing"), _DROPOUT),
    "sampling_rate": _FRACTION,
    "dev_fraction": (_open_fraction, lambda: "a number in (0, 1)"),
    "cell": _choice(_cells),
    "engine": _choice(_engines),
    "connection": _choice(_connections),
}


def check_options(options: object) -> None:
    """Raise :class:`RnnkitError` naming the flag of the first field of the dataclass
    ``options`` whose value is outside :data:`RANGES` (NaN is outside every range)."""
    for f in fields(options):
        value = getattr(options, f.name)
        if f.name not in RANGES or value is None:
            continue
        ok, want = RANGES[f.name]
        if not ok(value):  # every test compares, and NaN fails every comparison
            raise RnnkitError(f"{flag(f.name)} must be {want()}, got {value!r}")


def check_device(name: str | None, option: str = "--device") -> torch.device:
    """The torch device ``name`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``; None: ``cpu``),
    refused with one line when it is not a device or not on this machine."""
    name = "cpu" if name in (None, "") else name
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise RnnkitError(f"{option} {name!r} is not a device (cpu, cuda, cuda:N, mps)"
                          ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RnnkitError(f"{option} {name}: this machine has no CUDA device (torch "
                              f"{torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RnnkitError(f"{option} {name}: there are only "
                              f"{torch.cuda.device_count()} CUDA devices")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise RnnkitError(f"{option} {name}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise RnnkitError(f"{option} {name}: rnnkit runs on cpu, cuda or mps")
    return device


def qrnn_windows(window: str | None, cell: str, num_layers: int | None
                 ) -> tuple[dict, list[dict]]:
    """``--window``: the QRNN's convolution window (1 or 2), one value for every layer or one
    per layer (AWD-LSTM's QRNN: 2 in the first layer, 1 above). Returns the cell options of
    every layer and the per-layer ones (a model config's ``cell_options`` and
    ``layer_cell_options``); RnnkitError naming the flag for another cell, a value outside
    1-2, or a count that is neither 1 nor ``num_layers`` (None: the model's stacks take one
    window for all their layers, as seq2seq's encoder and decoder)."""
    if window is None:
        return {}, []
    if cell != "qrnn":
        raise RnnkitError(f"--window {window}: only the qrnn cell has a convolution window "
                          f"(--cell is {cell})")
    try:
        sizes = [int(k) for k in window.split(",")]
    except ValueError:
        sizes = []
    if not sizes or any(k not in (1, 2) for k in sizes):
        raise RnnkitError(f"--window: expected 1 or 2, or a comma-separated list of them, "
                          f"got {window!r}")
    if len(sizes) == 1:
        return {"window": sizes[0]}, []
    if num_layers is None:
        raise RnnkitError(f"--window {window}: one window, for every layer of the encoder and "
                          f"the decoder")
    if len(sizes) != num_layers:
        raise RnnkitError(f"--window {window}: one window for every layer or one per layer "
                          f"({num_layers} layers), got {len(sizes)}")
    return {}, [{"window": k} for k in sizes]


def window_option(model: Mapping[str, Any]) -> str | None:
    """A run's ``--window`` as :func:`qrnn_windows` reads it, from its model config (the
    ``model`` section of config.json: ``cell``, ``cell_options``, ``layer_cell_options``,
    either options missing in a run written before them). None: not a QRNN; a QRNN's
    default window is :data:`QRNN_WINDOW`."""
    if model.get("cell") != "qrnn":
        return None
    layers: Sequence[Mapping[str, Any]] = model.get("layer_cell_options") or []
    if layers:
        return ",".join(str(o.get("window", QRNN_WINDOW)) for o in layers)
    return str((model.get("cell_options") or {}).get("window", QRNN_WINDOW))
