"""Markdown helpers for the diagnostics and claims reports."""

from __future__ import annotations

import math


def fmt(x: float, digits: int = 3) -> str:
    """A number for a table: NaN/inf spelt out, small and large numbers in e-notation."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.2e}"
    return f"{x:.{digits}g}"


def table(header: list[str], rows: list[list[object]]) -> str:
    """A Markdown table; numbers formatted with :func:`fmt`."""
    cells = [[(c if isinstance(c, str) else fmt(c)).replace("|", "\\|") for c in row]
             for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)
