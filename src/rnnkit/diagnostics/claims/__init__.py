"""The classic claims about recurrent networks, each reproduced by an experiment.

``run_claims(out, scale)`` runs the experiments and writes ``out/REPORT.md`` with plots and a
table of each claim, what was measured and whether it held (``rnnkit claims`` is its command).
Each verdict is made of falsifiable :class:`Check` s (a measured value against a threshold
written in the report); what is arithmetic or true by construction is reported as a fact,
outside the verdict:

1. gradient norm against distance, RNN / LSTM / GRU, before and after training;
2. memory horizon on the copy and agreement tasks;
3. exploding gradients with and without clipping;
4. GRU against LSTM;
5. bidirectional against unidirectional, and the bidirectional language model's leak;
6. depth with no, residual, dense and highway connections;
7. characters against words;
8. the memory horizon of the scan cells (minGRU, minLSTM, QRNN) against the LSTM's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from rnnkit.diagnostics.claims.depth import depth
from rnnkit.diagnostics.claims.language import bidirectional, char_vs_word, gru_vs_lstm
from rnnkit.diagnostics.claims.memory import (
    exploding_gradients,
    gradient_vs_distance,
    memory_horizon,
    scan_memory,
)
from rnnkit.diagnostics.claims.report import (
    SCALES,
    Check,
    ClaimResult,
    Scale,
    verdict,
    write_report,
)

EXPERIMENTS: dict[int, Callable[[Scale, Path, int], ClaimResult]] = {
    1: gradient_vs_distance,
    2: memory_horizon,
    3: exploding_gradients,
    4: gru_vs_lstm,
    5: bidirectional,
    6: depth,
    7: char_vs_word,
    8: scan_memory,
}


def run_claims(out: str | Path, scale: str | Scale = "full", only: Sequence[int] | None = None,
               seed: int = 0, progress: Callable[[str], None] | None = None
               ) -> tuple[Path, list[ClaimResult]]:
    """Run the experiments ``only`` (default: all) at ``scale`` and write ``out/REPORT.md``.

    Returns the report's path and the results."""
    scale = SCALES[scale] if isinstance(scale, str) else scale
    numbers = list(EXPERIMENTS) if only is None else list(only)
    for n in numbers:
        if n not in EXPERIMENTS:
            raise ValueError(f"experiment numbers must lie in 1..{len(EXPERIMENTS)}, got {n}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = []
    for n in numbers:
        if progress:
            progress(f"claim {n}: running ({scale.name})")
        result = EXPERIMENTS[n](scale, out, seed)
        results.append(result)
        if progress:
            progress(f"claim {n}: {result.verdict} ({result.seconds:.0f} s) - {result.measured}")
        write_report(out, results, scale, torch.get_num_threads(), started)
    return out / "REPORT.md", results


__all__ = ["EXPERIMENTS", "SCALES", "Check", "ClaimResult", "Scale", "run_claims", "verdict"]
