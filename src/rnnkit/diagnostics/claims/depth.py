"""Experiment 6: deep stacks with and without skip connections."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnkit.diagnostics.claims.language import _char_data, lm_batch, lm_eval, train_lm
from rnnkit.diagnostics.claims.report import Check, ClaimResult, Scale
from rnnkit.diagnostics.gradient_flow import gradient_flow
from rnnkit.diagnostics.markdown import fmt, table
from rnnkit.diagnostics.plots import line_plot
from rnnkit.layers import CONNECTIONS
from rnnkit.models import LanguageModel, LMConfig


def _bottom_to_top(model: LanguageModel, ids: torch.Tensor, length: int) -> float:
    """Mean ||dL/dh_t|| of the first layer over that of the last layer, at this point."""
    g = torch.Generator().manual_seed(11)
    x, y = lm_batch(ids, 8, length, g)

    def losses():
        logits = model(x).logits
        return F.cross_entropy(logits.transpose(1, 2), y, reduction="none")

    flow = gradient_flow(model, losses, mode="engine")
    first, last = flow.layers[0].total[0].mean(), flow.layers[-1].total[0].mean()
    return float(first / last)


def depth(scale: Scale, out: Path, seed: int = 0) -> ClaimResult:
    """Train LSTM language models of every depth and connection for the same steps."""
    start = time.monotonic()
    vocab, train, val = _char_data(scale)
    H = max(8, scale.lm_hidden // 2)
    rows, val_loss, ratio = [], {}, {}
    for n in scale.depths:
        for conn in CONNECTIONS:
            torch.manual_seed(seed)
            model = LanguageModel(LMConfig(vocab_size=len(vocab), embedding_size=H,
                                           hidden_size=H, num_layers=n, cell="lstm",
                                           connection=conn))
            ratio[(n, conn)] = _bottom_to_top(model, val, scale.bptt)
            log = train_lm(model, train, scale, scale.depth_steps, seed,
                           max_seconds=scale.depth_seconds)
            val_loss[(n, conn)] = lm_eval(model, val, scale.bptt)
            rows.append([n, conn, ratio[(n, conn)], len(log.loss), log.loss[-1],
                         val_loss[(n, conn)], log.seconds])
    plot = "claim6_depth.png"
    series = {conn: (list(scale.depths), [val_loss[(n, conn)] for n in scale.depths])
              for conn in CONNECTIONS}
    line_plot(out / plot, series, title=f"LSTM LMs, {scale.depth_steps} steps each",
              xlabel="layers", ylabel="validation loss (nats/char)")
    deep, shallow = max(scale.depths), min(scale.depths)
    skips = [c for c in CONNECTIONS if c != "none"]
    best_skip = min(val_loss[(deep, c)] for c in skips)
    checks = [Check(f"{deep}-layer val loss, no connections - best with skips",
                    val_loss[(deep, "none")] - best_skip, ">", 0.0),
              Check(f"{deep}-layer val loss - {shallow}-layer, no connections",
                    val_loss[(deep, "none")] - val_loss[(shallow, "none")], ">=", 0.0),
              Check(f"gradient reaching layer 1 of {deep} at init, none / residual",
                    ratio[(deep, "none")] / ratio[(deep, "residual")], "<", 1.0)]
    measured = (f"Validation loss at {deep} layers: none {fmt(val_loss[(deep, 'none')])}, "
                + ", ".join(f"{c} {fmt(val_loss[(deep, c)])}" for c in skips)
                + f" ({shallow} layers, none: {fmt(val_loss[(shallow, 'none')])}); "
                f"gradient reaching the first layer at initialisation, relative to the last: "
                f"none {fmt(ratio[(deep, 'none')])}, residual {fmt(ratio[(deep, 'residual')])}.")
    details = (f"Character LMs on tiny Shakespeare, LSTM layers of H = {H}, at most "
               f"{scale.depth_steps} Adam steps ({scale.depth_seconds:.0f} s) each on the same "
               "batches; the validation text is held out from training.\n\n"
               + table(["layers", "connection", "‖dL/dh‖ first / last layer (init)", "steps",
                        "last train loss", "val loss", "seconds"], rows))
    return ClaimResult(6, "Depth and skip connections",
                       "Deep recurrent stacks (8 layers) need skip connections (residual, "
                       "dense, highway) to train well.", measured, checks, details,
                       [plot], time.monotonic() - start)
