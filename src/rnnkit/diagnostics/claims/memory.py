"""Experiments 1-3: vanishing gradients, memory horizons, exploding gradients and clipping."""

from __future__ import annotations

import copy
import math
import statistics
import time
from pathlib import Path

import torch

from rnnkit.data.synthetic import adding_problem, agreement_task, copy_task
from rnnkit.diagnostics.claims.report import Check, ClaimResult, Scale, spread
from rnnkit.diagnostics.gradient_flow import gradient_flow
from rnnkit.diagnostics.markdown import fmt, table
from rnnkit.diagnostics.plots import line_plot, plot_gradient_flow, plot_training_logs
from rnnkit.diagnostics.task_model import TaskModel, score, step_losses, train_on
from rnnkit.diagnostics.training_log import read_training_log

CELLS = ("rnn", "lstm", "gru")
#: experiment 8's cells, each with one layer (as the LSTM) and with two (as the papers stack
#: them; ``Scale.scan_depths``)
SCAN_CELLS = ("scan-gru", "scan-lstm", "qrnn")
TASKS = ("copy", "agreement")
# the LSTM's forget-gate bias starts at 1 (Jozefowicz et al. 2015), as practitioners do
CELL_OPTIONS = {"lstm": {"forget_bias": 1.0}}


def _model(cell: str, task, hidden: int, seed: int) -> TaskModel:
    """A one-layer model of ``cell``, or of ``"NAME xK"`` K layers of it."""
    name, _, layers = cell.partition(" x")
    torch.manual_seed(seed)
    return TaskModel(name, task.input_size, hidden, task.num_classes or 1,
                     num_layers=int(layers or 1), tokens=task.name != "adding",
                     **CELL_OPTIONS.get(name, {}))


def gradient_vs_distance(scale: Scale, out: Path, seed: int = 0) -> ClaimResult:
    """Experiment 1: ||dL_T/dh_{T-1-k}|| against k for RNN, LSTM, GRU, before and after
    training on the agreement task (the loss is at the last step only)."""
    start = time.monotonic()
    T = scale.flow_distance
    train = agreement_task(2000, T, seed=seed)
    probe = agreement_task(64, T, seed=seed + 1)
    flows = {"before": {}, "after": {}}
    rows, ratios = [], {}
    for cell in CELLS:
        model = _model(cell, train, scale.hidden, seed)
        for stage in ("before", "after"):
            if stage == "after":
                train_on(model, train, steps=scale.steps, lr=5e-3, clip=1.0, seed=seed,
                         max_seconds=scale.seconds)
            # in float64 on a copy: over 100 steps float32 gradients underflow to exactly 0
            m64 = copy.deepcopy(model).double().eval()
            flow = gradient_flow(m64, lambda m=m64: step_losses(m, probe))
            layer = flow.layers[0]
            curve = layer.by_distance()
            ratio = float(curve[-1] / curve[0]) if float(curve[0]) > 0 else math.nan
            ratios[(cell, stage)] = ratio
            flows[stage][cell] = flow
            rows.append([cell, stage, float(curve[0]), float(curve[-1]), ratio,
                         layer.decay_per_step(), score(model, probe)])
    plots = []
    for stage in ("before", "after"):
        name = f"claim1_gradient_distance_{stage}.png"
        plot_gradient_flow(out / name, flows[stage],
                           title=f"gradient of the last step's loss ({stage} training)")
        plots.append(name)
    checks = [Check(f"RNN ratio / the smaller of LSTM's and GRU's ({s} training)",
                    ratios[("rnn", s)] / min(ratios[("lstm", s)], ratios[("gru", s)]), "<", 0.1)
              for s in ("before", "after")]
    pairs = [f"{c.upper()} {fmt(ratios[(c, 'before')])} / {fmt(ratios[(c, 'after')])}"
             for c in CELLS]
    measured = (f"‖dL_T/dh_0‖ / ‖dL_T/dh_(T-1)‖ over T = {T} steps (before / after "
                f"training): {', '.join(pairs)}.")
    details = ("Far faster: the RNN keeps less than a tenth of the gradient the better of "
               "the gated cells keeps over the same distance. "
               "The loss is the agreement task's, at the last step only; gradients measured "
               "in float64 on a batch of 64 held-out sequences (hidden state h; for the LSTM "
               f"the cell c carries more). Training: at most {scale.steps} Adam steps "
               f"({scale.seconds:.0f} s).\n\n"
               + table(["cell", "stage", "‖dL_T/dh_(T-1)‖", "‖dL_T/dh_0‖", "ratio",
                        "decay per step", "agreement accuracy"], rows))
    return ClaimResult(1, "Gradient norm against distance",
                       "A vanilla RNN's gradient vanishes with the distance far faster than an "
                       "LSTM's or a GRU's.", measured, checks, details, plots,
                       time.monotonic() - start)


def _horizon(cell: str, task_name: str, scale: Scale, seed: int, curriculum: bool
             ) -> tuple[int, list]:
    """The longest delay of the grid solved (accuracy >= 0.9) before the first failure.

    From scratch, every delay gets a fresh model; with ``curriculum``, one model goes on
    training from the previous delay's weights (it must still learn the new delay)."""
    best, rows = 0, []
    failed = False
    model = None
    protocol = "curriculum" if curriculum else "scratch"
    for delay in scale.delays:
        if task_name == "copy":
            make = lambda n, s, d=delay: copy_task(n, d, num_symbols=4, distractors=True,  # noqa: E731
                                                   seed=s)
        else:
            make = lambda n, s, d=delay: agreement_task(n, d, seed=s)  # noqa: E731
        if failed:
            rows.append([cell, task_name, protocol, seed, delay, math.nan, 0, "skipped"])
            continue
        # training stops on a validation set; the delay is judged on a test set drawn with
        # another seed
        train, valid, test = make(4000, seed), make(500, seed + 200), make(500, seed + 100)
        if model is None or not curriculum:
            model = _model(cell, train, scale.hidden, seed)
        log = train_on(model, train, steps=scale.steps, lr=5e-3, clip=1.0, seed=seed,
                       max_seconds=scale.seconds, target=0.95, check=valid)
        acc = score(model, test)
        solved = acc >= 0.9
        rows.append([cell, task_name, protocol, seed, delay, acc, len(log.loss),
                     "yes" if solved else "no"])
        if solved:
            best = delay
        else:
            failed = True
    return best, rows


def _sweeps(cells: tuple[str, ...], scale: Scale, seed: int
            ) -> tuple[list[int], dict[tuple, list[int]], dict[tuple, float], list[list]]:
    """Every cell's horizon on both tasks with both protocols for each of ``scale.seeds``
    seeds: the seeds, the horizons by (cell, task, curriculum) over the seeds, their
    medians, and the table's rows."""
    seeds = [seed + 1000 * i for i in range(scale.seeds)]
    h: dict[tuple, list[int]] = {}
    rows: list[list] = []
    for s in seeds:
        for curriculum in (False, True):
            for task_name in TASKS:
                for cell in cells:
                    best, r = _horizon(cell, task_name, scale, s, curriculum)
                    h.setdefault((cell, task_name, curriculum), []).append(best)
                    rows += r
    return seeds, h, {k: statistics.median(v) for k, v in h.items()}, rows


def _horizon_plot(out: Path, name: str, rows: list[list], seed: int) -> str:
    """Accuracy against delay for the first seed's sweeps (dashed: curriculum)."""
    series: dict[str, tuple[list, list]] = {}
    cell_of: dict[str, str] = {}
    for r in rows:
        if math.isfinite(r[5]) and r[3] == seed:
            key = f"{r[0]} {r[1]}" + (" (curriculum)" if r[2] == "curriculum" else "")
            cell_of[key] = r[0]
            xs, ys = series.setdefault(key, ([], []))
            xs.append(r[4])
            ys.append(r[5])
    cells = list(dict.fromkeys(cell_of.values()))
    colors = dict(zip(cells, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
                              "tab:brown", "tab:pink", "tab:gray", "tab:olive")))
    styles = {key: {"color": colors[cell_of[key]],
                    "linestyle": "--" if "curriculum" in key else "-",
                    "marker": "o" if key.endswith((" copy", " copy (curriculum)")) else "s"}
              for key in series}
    line_plot(out / name, series, title=f"accuracy against delay, seed {seed} "
              "(dashed: curriculum)",
              xlabel="delay (steps); circles: copy (chance 0.25), squares: agreement (0.5)",
              ylabel="test accuracy", hline=0.9, styles=styles)
    return name


def _horizons_line(h: dict[tuple, list[int]], cells: tuple[str, ...], scale: Scale,
                   seeds: list[int]) -> str:
    """What experiments 2 and 8 measured, in one line."""
    def pairs(curriculum: bool) -> str:
        return ", ".join(f"{c.upper() if c in CELLS else c} {spread(h[(c, 'copy', curriculum)])} / "
                         f"{spread(h[(c, 'agreement', curriculum)])}" for c in cells)

    return (f"Longest delay solved, copy / agreement (grid "
            f"{', '.join(map(str, scale.delays))}; 0: none; median [min, max] over "
            f"{len(seeds)} seed(s)): from scratch {pairs(False)}; with a curriculum "
            f"{pairs(True)}.")


def _best_horizon(med: dict[tuple, float], cell: str) -> float:
    """A cell's horizon: the shorter of the two tasks, each at its better protocol."""
    return min(max(med[(cell, t, False)], med[(cell, t, True)]) for t in TASKS)


def _protocol(scale: Scale) -> str:
    return (
        "Copy: remember the first of 4 symbols across the delay, with random distractor "
        "symbols in between. Agreement: `was`/`were` must agree with the subject `distance` "
        "steps back, with attractor nouns of either number in between. Solved: test "
        f"accuracy >= 0.9 after at most {scale.steps} steps ({scale.seconds:.0f} s) of Adam "
        f"(hidden size {scale.hidden}, one layer unless marked `x2`; the LSTM's forget bias "
        "starts at 1); "
        "training stops early when the accuracy on a validation set reaches 0.95, and the "
        "delay is judged on a test set drawn with another seed. *From scratch*: a fresh "
        "model per delay, so the model must find the dependency through the vanishing "
        "gradient. *Curriculum*: one model per cell trained on the delays in increasing "
        "order. A sweep stops at its first failure.")


def memory_horizon(scale: Scale, out: Path, seed: int = 0) -> ClaimResult:
    """Experiment 2: the longest delay each cell solves on the copy and agreement tasks,
    trained from scratch at each delay and with a curriculum over the delays, over
    ``scale.seeds`` seeds (the tests use the medians)."""
    start = time.monotonic()
    seeds, h, med, rows = _sweeps(CELLS, scale, seed)
    plot = _horizon_plot(out, "claim2_memory_horizon.png", rows, seeds[0])
    rnn = max(med[("rnn", t, False)] for t in TASKS)
    lstm = _best_horizon(med, "lstm")
    checks = [Check("RNN horizon from scratch (the longer of the two tasks)", rnn, "<=", 10),
              Check("LSTM horizon (the shorter of the two tasks, its better protocol)", lstm,
                    ">=", 100),
              Check("LSTM horizon / RNN horizon (an RNN that solves none counts 1)",
                    lstm / max(rnn, 1), ">=", 5)]
    details = (_protocol(scale) + " The notes' \"about 7\" is tested as at most 10 (the "
               "grid's points are 5, 10, 20, ...).\n\n"
               + table(["cell", "task", "protocol", "seed", "delay", "accuracy", "steps",
                        "solved"], rows))
    return ClaimResult(2, "Memory horizon",
                       "A vanilla RNN remembers about 7 steps, an LSTM about 100.",
                       _horizons_line(h, CELLS, scale, seeds), checks, details, [plot],
                       time.monotonic() - start)


def scan_memory(scale: Scale, out: Path, seed: int = 0) -> ClaimResult:
    """Experiment 8: do the cells whose state update is elementwise linear (minGRU, minLSTM,
    QRNN, trained by a scan) keep the LSTM's memory horizon on the copy and agreement tasks?
    The protocol, grid and seeds are experiment 2's; the LSTM is trained again beside them."""
    start = time.monotonic()
    scan = tuple(c if k == 1 else f"{c} x{k}" for k in scale.scan_depths for c in SCAN_CELLS)
    cells = ("lstm", *scan)
    seeds, h, med, rows = _sweeps(cells, scale, seed)
    plot = _horizon_plot(out, "claim8_scan_memory.png", rows, seeds[0])
    lstm = _best_horizon(med, "lstm")
    checks = [Check(f"{cell} horizon / LSTM horizon (the shorter of the two tasks, each "
                    "cell's better protocol; an LSTM that solves none counts 1)",
                    _best_horizon(med, cell) / max(lstm, 1), ">=", 1) for cell in scan]
    details = (_protocol(scale) + " The scan cells: `scan-gru` (minGRU), `scan-lstm` "
               "(minLSTM) (Feng et al. 2024) and `qrnn` (window 2, Bradbury et al. 2016), "
               f"with {' and '.join(map(str, scale.scan_depths))} layer(s) (`x2`: two, as "
               "the papers stack them; the LSTM has one). "
               "One layer's gates see only its inputs, so nothing marks the first token "
               "(the subject, the symbol to copy) apart from later ones of the same kind, "
               "except for the window-2 QRNN, whose gates also see x<t-1>: the zero initial "
               "input at the first step. A second layer's gates see the first layer's "
               "state. The grid ends at 200 steps: a ratio of 1 with both at 200 says "
               "\"at least as far as the grid reaches\".\n\n"
               + table(["cell", "task", "protocol", "seed", "delay", "accuracy", "steps",
                        "solved"], rows))
    return ClaimResult(8, "Memory horizon of the scan cells",
                       "Cells whose state update is elementwise linear (minGRU, minLSTM, "
                       "QRNN), trained by a parallel scan, remember as far back as an LSTM "
                       "(one layer against one, and two layers of them).",
                       _horizons_line(h, cells, scale, seeds), checks, details, [plot],
                       time.monotonic() - start)


def exploding_gradients(scale: Scale, out: Path, seed: int = 0) -> ClaimResult:
    """Experiment 3: a ReLU RNN with recurrent weights 1.05 I trained by SGD on the adding
    problem, without and with clipping (threshold 1)."""
    start = time.monotonic()
    T = max(20, scale.flow_distance)
    train = adding_problem(2000, T, seed=seed)
    test = adding_problem(500, T, seed=seed + 1)
    logs, rows, results = {}, [], {}
    for clip in (0.0, 1.0):
        torch.manual_seed(seed)
        model = TaskModel("rnn-relu", 2, scale.hidden, 1, tokens=False)
        with torch.no_grad():
            model.rnn.layers[0].cell.weight_hh.copy_(1.05 * torch.eye(scale.hidden))
        log = train_on(model, train, steps=scale.explode_steps, lr=1e-2, clip=clip,
                       optimizer="sgd", seed=seed, max_seconds=scale.seconds * 2)
        name = "with clipping" if clip else "without clipping"
        path = out / f"claim3_{'clip' if clip else 'noclip'}_log.jsonl"
        log.write_jsonl(path)
        read = read_training_log(path)
        logs[name] = read
        s = read.summary()
        mse = score(model, test) if log.stopped != "nonfinite" else math.nan
        results[clip] = (log, mse)
        rows.append([name, len(read), log.stopped, s["first_loss"], s["last_loss"],
                     s["max_grad_norm"], s["clip_events"], len(s["loss_spikes"]),
                     (s["nonfinite_steps"] or [None])[0], mse])
    plot = "claim3_exploding.png"
    plot_training_logs(out / plot, logs, title=f"ReLU RNN, W_hh = 1.05 I, T = {T}, SGD")
    (noclip, _), (clipped, mse_clip) = results[0.0], results[1.0]
    mean_mse = float(((test.targets - train.targets.mean()) ** 2).mean())
    growth = (math.inf if noclip.stopped == "nonfinite"
              else max(noclip.loss) / max(noclip.loss[0], 1e-12))
    checks = [Check("without clipping: largest loss / first loss (NaN or inf: inf)", growth,
                    ">=", 10),
              Check("with clipping: test MSE / the mean predictor's", mse_clip / mean_mse,
                    "<", 0.5)]
    end = "NaN" if noclip.stopped == "nonfinite" else f"loss {fmt(noclip.loss[-1])}"
    measured = (f"Without clipping: {end} after {len(noclip.loss)} steps (first loss "
                f"{fmt(noclip.loss[0])}); with clipping at 1: final loss "
                f"{fmt(clipped.loss[-1])}, test MSE {fmt(mse_clip)} (always answering the "
                f"training mean: {fmt(mean_mse)}).")
    details = ("The training logs are written in `rnnkit.training`'s JSON-lines format "
               "(`claim3_*_log.jsonl`) and read back with "
               "`rnnkit.diagnostics.read_training_log`.\n\n"
               + table(["run", "steps", "stopped", "first loss", "last loss",
                        "max grad norm", "clip events", "loss spikes", "first NaN step",
                        "test MSE"], rows))
    return ClaimResult(3, "Exploding gradients and clipping",
                       "Large recurrent weights make gradients explode (inf/NaN, divergence); "
                       "clipping the gradient norm keeps training stable.", measured,
                       checks, details, [plot], time.monotonic() - start)
