"""The claims report: budgets, one result per experiment, and ``REPORT.md``."""

from __future__ import annotations

import math
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rnnkit.diagnostics.markdown import fmt, table


@dataclass(frozen=True)
class Scale:
    """The size of every experiment: ``full`` (at most about 20 minutes each, about 35 minutes
    in all on 2 threads), ``quick`` (about 70 seconds in all on one core,
    ``--quick``) and ``tiny`` (seconds, for the test suite). The fields name what they size.
    """

    name: str
    hidden: int  # hidden size of most models
    steps: int  # training steps for one model (memory tasks)
    delays: tuple[int, ...]  # the memory-horizon grid
    flow_distance: int  # sequence length of the gradient-flow experiment
    lm_steps: int  # language-model training steps (experiments 4, 5, 6)
    lm_hidden: int
    bptt: int  # language-model window
    depth_steps: int
    depths: tuple[int, ...]
    explode_steps: int
    seconds: float  # time limit of one memory-task training run
    lm_seconds: float  # time limit of one language-model training run (experiments 4, 5)
    depth_seconds: float  # time limit of one depth-experiment training run
    seeds: int = 1  # seeds of the experiments reported over seeds (2: horizons, 5: gaps)
    scan_depths: tuple[int, ...] = (1, 2)  # experiment 8: the scan cells' numbers of layers

    @property
    def tiny(self) -> bool:
        return self.name == "tiny"


SCALES: dict[str, Scale] = {
    "full": Scale("full", hidden=64, steps=3000,
                  delays=(5, 10, 20, 30, 50, 70, 100, 150, 200),
                  flow_distance=100, lm_steps=2000, lm_hidden=128, bptt=64, depth_steps=1000,
                  depths=(2, 4, 8), explode_steps=500, seconds=20.0, lm_seconds=60.0,
                  depth_seconds=45.0, seeds=3),
    "quick": Scale("quick", hidden=32, steps=300, delays=(5, 10, 20, 40), flow_distance=40,
                   lm_steps=80, lm_hidden=64, bptt=32, depth_steps=40, depths=(2, 4, 8),
                   explode_steps=150, seconds=4.0, lm_seconds=8.0, depth_seconds=8.0,
                   scan_depths=(2,)),
    "tiny": Scale("tiny", hidden=8, steps=10, delays=(3,), flow_distance=6, lm_steps=2,
                  lm_hidden=16, bptt=8, depth_steps=2, depths=(1, 2), explode_steps=10,
                  seconds=1.0, lm_seconds=1.0, depth_seconds=1.0),
}

HELD, NOT_HELD, PARTLY = "held", "did not hold", "partly"

#: the comparisons a :class:`Check` may make
OPS = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
       ">=": lambda a, b: a >= b}


@dataclass(frozen=True)
class Check:
    """One falsifiable comparison of a claim, written in the report with its threshold:
    ``name`` (what was measured) ``value`` ``op`` ``threshold``. A NaN value fails."""

    name: str
    value: float
    op: str
    threshold: float

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"op must be one of {', '.join(OPS)}, got {self.op!r}")

    @property
    def holds(self) -> bool:
        return not math.isnan(self.value) and bool(OPS[self.op](self.value, self.threshold))

    def __str__(self) -> str:
        return (f"{self.name} = {fmt(self.value)} {self.op} {fmt(self.threshold)}: "
                f"{'yes' if self.holds else 'no'}")


@dataclass
class ClaimResult:
    """One experiment's outcome.

    Attributes:
        number, title: the experiment (1-8) and its name.
        claim: what the notes / folklore say.
        measured: one line of what was measured.
        checks: the falsifiable comparisons the verdict is made of.
        details: Markdown (tables, notes) for the report's section.
        plots: PNG file names, relative to the report's directory.
        seconds: wall time of the experiment.
        facts: what was computed rather than tested (arithmetic, or true by construction),
            reported beside the verdict and not part of it.
    """

    number: int
    title: str
    claim: str
    measured: str
    checks: list[Check]
    details: str = ""
    plots: list[str] = field(default_factory=list)
    seconds: float = 0.0
    facts: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return verdict(*self.checks)


def verdict(*checks: Check) -> str:
    """``held`` when every check holds, ``did not hold`` when none does, else ``partly``
    (no check at all: ``did not hold``, there is nothing that held)."""
    results = [c.holds for c in checks]
    if results and all(results):
        return HELD
    return NOT_HELD if not any(results) else PARTLY


def spread(values: list[float]) -> str:
    """``median [min, max]`` of the values over the seeds (the median alone for one seed)."""
    med = statistics.median(values)
    return fmt(med) if len(values) == 1 else f"{fmt(med)} [{fmt(min(values))}, {fmt(max(values))}]"


def write_report(out: Path, results: list[ClaimResult], scale: Scale, threads: int,
                 started: float) -> Path:
    """Write ``out/REPORT.md``: the summary table, then one section per experiment."""
    lines = [
        "# The classic claims about recurrent networks, measured",
        "",
        f"Written by `rnnkit claims` (scale `{scale.name}`, {threads} thread(s), torch "
        f"{torch.__version__}, {platform.machine()}), {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{time.time() - started:.0f} s in all. Every number below comes from this run; a "
        "claim that did not hold on this budget says so. Small budgets (`--quick`) train for "
        "seconds: read their verdicts as a smoke test, not as evidence.",
        "",
        table(["#", "claim", "measured", "tests (threshold: held?)", "verdict"],
              [[str(r.number), r.claim, r.measured, "; ".join(map(str, r.checks)),
                f"**{r.verdict}**"] for r in results]),
        "",
        "Each verdict is made of the tests in its row, each a comparison with the threshold "
        "written beside it: held when all pass, did not hold when none does, partly "
        "otherwise. Models stop training on a validation set; the tests are measured on a "
        "test set drawn with another seed. Facts (arithmetic, or true by construction) are "
        "listed in the sections and are not part of any verdict.",
        "",
    ]
    for r in results:
        lines += [f"## {r.number}. {r.title}", "", f"*Claim.* {r.claim}", "",
                  f"*Measured.* {r.measured} Verdict: **{r.verdict}** ({r.seconds:.0f} s).", "",
                  "*Tests.*", "", *[f"- {c}" for c in r.checks], ""]
        if r.facts:
            lines += ["*Facts (not tested).*", "", *[f"- {f}" for f in r.facts], ""]
        if r.details:
            lines += [r.details.strip(), ""]
        lines += [f"![{p}]({p})" for p in r.plots]
        lines.append("")
    path = out / "REPORT.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
