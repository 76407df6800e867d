"""The ``bptt`` engine's compiled step loops (``engines/csrc/*.cpp``), built on first use.

At small batches a step of the recurrence is a dozen tiny tensor operations, each costing more
in dispatch than in arithmetic. The C++ loops do a step's elementwise work in one fused pass
beside its GEMM and compute what the Python loops compute (to rounding: sums run in another
order; tests/test_engines.py compares them); they are built once per machine with
``torch.utils.cpp_extension`` (a C++ compiler is needed; the build is cached in
``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``). Without a compiler, or with
``RNNKIT_NO_COMPILED=1`` in the environment, the engine runs its Python loops and warns once.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

_SOURCES = [Path(__file__).with_name("csrc") / "recurrent_loops.cpp"]
_state: dict[str, object] = {"module": None, "tried": False, "enabled": True}


def _build() -> ModuleType | None:
    from torch.utils import cpp_extension

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    if not any(Path(root).glob("**/rnnkit_bptt_loops/*.so")):
        print("rnnkit: building the bptt engine's C++ step loops (once per machine, about a "
              "minute)", file=sys.stderr)
    # torch builds without optimisation unless told; -O3 makes the fused loops ~1.4x faster.
    # -fno-trapping-math: the activations' selects (tanh's two branches, the exp's clamp)
    # vectorise without AVX-512's masks. Under GCC's default -ftrapping-math the AVX2 and
    # baseline builds of sigmoid_row / tanh_row stayed scalar, a value at a time; no value
    # changes (it only lets the compiler evaluate both sides of a select).
    # -fopenmp: at::parallel_for splits work over torch's OpenMP threads only in code built
    # with it (else ATen's header runs it inline, on one thread); the library it links is
    # the libgomp.so.1 torch has loaded already.
    return cpp_extension.load(name="rnnkit_bptt_loops", sources=[str(s) for s in _SOURCES],
                              extra_cflags=["-O3", "-fno-trapping-math", "-fopenmp"],
                              extra_ldflags=["-fopenmp"], verbose=False)


def loops() -> ModuleType | None:
    """The compiled loops module, or None when they are disabled or cannot be built."""
    if not _state["enabled"] or os.environ.get("RNNKIT_NO_COMPILED", "") not in ("", "0"):
        return None
    if not _state["tried"]:
        _state["tried"] = True
        try:
            _state["module"] = _build()
        except Exception as exc:  # no compiler, no ninja, a failed build: run the Python loops
            warnings.warn(f"rnnkit: the bptt engine's C++ step loops could not be built ({exc}); "
                          "using its Python loops, which are slower at small batches",
                          RuntimeWarning, stacklevel=2)
    return _state["module"]  # type: ignore[return-value]


@contextmanager
def disabled() -> Iterator[None]:
    """Run the ``bptt`` engine's Python step loops inside the block (for comparisons)."""
    was = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = was
