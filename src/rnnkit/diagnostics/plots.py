"""PNG plots of the diagnostics (matplotlib, the optional ``plot`` extra).

Every function writes one PNG file and returns its path. matplotlib is imported lazily with
the non-interactive Agg backend; without it a :class:`rnnkit.errors.RnnkitError` says how to
install it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from rnnkit.diagnostics.gates import GateStats
from rnnkit.diagnostics.gradient_flow import GradientFlow
from rnnkit.diagnostics.jacobians import JacobianStats
from rnnkit.diagnostics.training_log import TrainingLog
from rnnkit.errors import RnnkitError

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def _pyplot():
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise RnnkitError("plots need matplotlib: pip install 'rnnkit[plot]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _finite_positive(ys: Sequence[float]) -> bool:
    return any(math.isfinite(y) and y > 0 for y in ys)


def _save(fig, path: str | Path) -> Path:
    """Lay ``fig`` out, write it to ``path`` (creating its folder) and close it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def line_plot(path: str | Path, series: Series, *, title: str, xlabel: str, ylabel: str,
              logy: bool = False, hline: float | None = None,
              styles: Mapping[str, Mapping[str, object]] | None = None) -> Path:
    """One axis with a line per entry of ``series`` (label -> (xs, ys)); ``styles``: label ->
    matplotlib line options (color, linestyle, marker)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for label, (xs, ys) in series.items():
        ys = [y if math.isfinite(y) else math.nan for y in ys]
        if logy:
            ys = [y if y > 0 else math.nan for y in ys]
        style = {"marker": "." if len(xs) < 30 else None, **(styles or {}).get(label, {})}
        ax.plot(list(xs), ys, label=label, **style)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle=":", linewidth=1)
    if logy and any(_finite_positive(ys) for _, ys in series.values()):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if series:
        ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def bar_plot(path: str | Path, groups: Mapping[str, Mapping[str, float]], *, title: str,
             ylabel: str) -> Path:
    """Grouped bars: group label -> (bar label -> value)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    labels = sorted({k for g in groups.values() for k in g})
    width = 0.8 / max(1, len(groups))
    for j, (group, values) in enumerate(groups.items()):
        xs = [i + j * width for i in range(len(labels))]
        ax.bar(xs, [values.get(k, 0.0) for k in labels], width, label=group)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_gradient_flow(path: str | Path, flows: Mapping[str, GradientFlow], *,
                       which: str = "last", title: str | None = None) -> Path:
    """Gradient norms of every model's layers (h state): ``which="last"`` against the distance
    from the last step, ``"total"`` against the step."""
    series = {}
    for label, flow in flows.items():
        for layer in flow.layers:
            name = label if len(flow.layers) == 1 else f"{label} {layer.name}"
            if which == "last":
                ys = layer.by_distance().tolist()
            else:
                ys = layer.total[0].tolist()
            series[name] = (list(range(len(ys))), ys)
    if which == "last":
        return line_plot(path, series, title=title or "gradient of the last step's loss",
                         xlabel="distance k (steps back from the last)",
                         ylabel="||dL_T / dh_{T-1-k}||", logy=True)
    return line_plot(path, series, title=title or "gradient flow over time",
                     xlabel="step t", ylabel="||dL / dh_t||", logy=True)


def plot_jacobians(path: str | Path, stats: Mapping[str, JacobianStats], *,
                   title: str = "recurrent Jacobian norms") -> Path:
    """Spectral norm of ds_t/ds_{t-1} per step, averaged over the batch."""
    series = {label: (list(range(s.spectral.shape[0])), s.mean_spectral().tolist())
              for label, s in stats.items()}
    return line_plot(path, series, title=title, xlabel="step t",
                     ylabel="||ds_t / ds_{t-1}||_2", logy=True, hline=1.0)


def plot_gates(path: str | Path, stats: Mapping[str, GateStats], *,
               title: str = "saturated gates (near 0 or 1)") -> Path:
    """Share of saturated values per gate, one group of bars per model/layer."""
    return bar_plot(path, {label: s.saturated for label, s in stats.items()}, title=title,
                    ylabel="share saturated")


def plot_training_logs(path: str | Path, logs: Mapping[str, TrainingLog], *,
                       title: str = "training") -> Path:
    """Loss and gradient norm over steps, clipping events marked, for each log."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6.4, 6.0), dpi=100, sharex=True)
    for label, log in logs.items():
        loss = [y if math.isfinite(y) else math.nan for y in log.loss]
        ax1.plot(log.steps, loss, label=label)
        norms = [y if math.isfinite(y) and y > 0 else math.nan for y in log.grad_norm]
        line = ax2.plot(log.steps, norms, label=label)[0]
        clips = [(s, g) for s, g, c in zip(log.steps, norms, log.clipped) if c]
        if clips:
            ax2.scatter(*zip(*clips), s=6, color=line.get_color(), marker="x")
        bad = log.nonfinite_steps()
        for s in bad[:1]:
            ax1.axvline(s, color=line.get_color(), linestyle="--", linewidth=1)
    ax1.set_yscale("log")
    ax2.set_yscale("log")
    ax1.set_ylabel("loss")
    ax2.set_ylabel("gradient norm (x: clipped)")
    ax2.set_xlabel("step")
    ax1.set_title(title)
    ax1.legend(fontsize="small")
    ax1.grid(True, alpha=0.3)
    ax2.grid(True, alpha=0.3)
    return _save(fig, path)
