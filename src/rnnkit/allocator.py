"""Keep freed memory in the process: glibc's malloc settings for training on the CPU.

torch's CPU tensors come from ``malloc``. glibc's malloc gives every block above its mmap
threshold (at most 32 MiB) a mapping of its own and unmaps it when freed, and returns freed
memory at the top of its heap to the system past a trim threshold: the next tensor of that
size is then faulted in page by page, zeroed by the kernel, every step. A training step makes
such tensors every time (a word model's 2,048 x 33,278 logits, its embedding's and decoder's
gradients, a speech batch's features); measured (benchmarks/RESULTS.md, "The allocator"),
this costs an adaptive-softmax word LM 28% of its step (4,022 against 5,581 tokens/s) and a
full-softmax one 9%; torch.nn.LSTM's forward and backward 10-20%.

:func:`keep_freed_memory` serves every block from the heap (``M_MMAP_MAX = 0``) and keeps up
to ``trim_threshold`` bytes of freed memory for the next step (``M_TRIM_THRESHOLD``): the
process's memory then stays at its high-water mark (measured: 1.06-1.24x the peak of the
system's settings for the word LMs) instead of going back and forth. Like the environment variables
``MALLOC_MMAP_MAX_`` and ``MALLOC_TRIM_THRESHOLD_``, it applies to the whole process, and only
where the C library is glibc (Linux); elsewhere it does nothing.

The ``rnnkit`` command calls it before any work; ``RNNKIT_MALLOC=system`` in the environment
leaves the C library's settings alone. A program that uses rnnkit as a library calls it
itself, once, if it wants the same.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

#: the environment variable: ``system`` leaves malloc as the C library sets it
ENV = "RNNKIT_MALLOC"
#: freed memory kept for reuse by default: 1 GiB
TRIM_THRESHOLD = 1 << 30
# glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_state: dict[str, object] = {"applied": None}


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory(trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Serve every allocation from malloc's heap and keep up to ``trim_threshold`` bytes of
    freed memory for reuse (see the module docstring). Returns whether the settings were made:
    False off glibc, when ``RNNKIT_MALLOC=system``, or when glibc refused them.

    Raises:
        ValueError: ``trim_threshold`` is not between 0 and 2^31 - 1 bytes, or
            ``RNNKIT_MALLOC`` is neither ``system`` nor ``keep``.
    """
    if not 0 <= trim_threshold < 1 << 31:
        raise ValueError(f"trim_threshold must be between 0 and 2^31 - 1 bytes, got "
                         f"{trim_threshold}")
    mode = os.environ.get(ENV, "keep").strip().lower() or "keep"
    if mode not in ("keep", "system"):
        raise ValueError(f"{ENV}={mode!r}: expected 'keep' (the default) or 'system'")
    if mode == "system":
        return False
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD,
                                                                  trim_threshold))
    _state["applied"] = trim_threshold if ok else None
    return ok


def applied() -> int | None:
    """The trim threshold :func:`keep_freed_memory` set in this process, or None."""
    return _state["applied"]  # type: ignore[return-value]


__all__ = ["ENV", "TRIM_THRESHOLD", "applied", "keep_freed_memory"]
