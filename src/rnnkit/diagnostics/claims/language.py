"""Experiments 4, 5 and 7: GRU against LSTM, bidirectional models and their leak as language
models, characters against words. Language models are ``rnnkit.models.LanguageModel`` on the
bundled tiny Shakespeare (``rnnkit/resources/tinyshakespeare.txt``)."""

from __future__ import annotations

import math
import statistics
import time
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnkit.data.synthetic import IGNORE, SyntheticTask
from rnnkit.data.text import build_vocab, encode
from rnnkit.diagnostics.claims.report import Check, ClaimResult, Scale, spread
from rnnkit.diagnostics.markdown import fmt, table
from rnnkit.diagnostics.plots import bar_plot, line_plot
from rnnkit.diagnostics.task_model import TaskModel, score, train_on
from rnnkit.models import LanguageModel, LMConfig


def shakespeare(chars: int | None = None) -> str:
    """The bundled tiny Shakespeare (its first ``chars`` characters)."""
    text = resources.files("rnnkit").joinpath("resources/tinyshakespeare.txt").read_text(
        encoding="utf-8")
    return text if chars is None else text[:chars]


def lm_batch(ids: torch.Tensor, batch: int, length: int, g: torch.Generator
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: inputs and next-token targets, (batch, length) each."""
    starts = torch.randint(0, len(ids) - length - 1, (batch,), generator=g)
    idx = starts[:, None] + torch.arange(length + 1)
    w = ids[idx]
    return w[:, :-1], w[:, 1:]


@torch.no_grad()
def lm_eval(model: LanguageModel, ids: torch.Tensor, length: int, batches: int = 4,
            seed: int = 123) -> float:
    """Mean next-token loss (nats) on fixed random windows of ``ids``."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(batches):
        x, y = lm_batch(ids, 16, length, g)
        total += float(model.loss(x, y)[0])
    model.train()
    return total / batches


def train_lm(model: LanguageModel, ids: torch.Tensor, scale: Scale, steps: int,
             seed: int = 0, lr: float = 3e-3, max_seconds: float | None = None):
    """Train ``model`` on random windows; returns the :class:`TrainLog`."""

    def batch_fn(step: int, g: torch.Generator) -> torch.Tensor:
        x, y = lm_batch(ids, 16, scale.bptt, g)
        return model.loss(x, y)[0]

    return train_on(model, None, steps=steps, lr=lr, clip=1.0, seed=seed,
                    max_seconds=max_seconds or scale.lm_seconds, batch_fn=batch_fn)


def _char_data(scale: Scale):
    text = shakespeare({"full": None, "quick": 200_000}.get(scale.name, 30_000))
    vocab = build_vocab(text, "char")
    ids = encode(text, vocab, "char")
    cut = int(len(ids) * 0.9)
    return vocab, ids[:cut], ids[cut:]


def _step_times(models: dict[str, LanguageModel], ids: torch.Tensor, length: int,
                repeats: int) -> dict[str, float]:
    """Median seconds of one training step (forward + backward) of each model on the same
    batch, the models interleaved so that a busy machine slows them alike."""
    g = torch.Generator().manual_seed(5)
    x, y = lm_batch(ids, 16, length, g)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats + 1):
        for name, model in models.items():
            t0 = time.perf_counter()
            model.loss(x, y)[0].backward()
            times[name].append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    return {name: sorted(ts[1:])[len(ts[1:]) // 2] for name, ts in times.items()}


def gru_vs_lstm(scale: Scale, out: Path, seed: int = 0) -> ClaimResult:
    """Experiment 4: parameters, training speed and quality of a GRU and an LSTM language
    model of the same hidden size, trained for the same number of steps on the same batches."""
    start = time.monotonic()
    vocab, train, val = _char_data(scale)
    models = {}
    for cell in ("lstm", "gru"):
        torch.manual_seed(seed)
        models[cell] = LanguageModel(LMConfig(vocab_size=len(vocab), embedding_size=32,
                                              hidden_size=scale.lm_hidden, num_layers=1,
                                              cell=cell))
    repeats = {"full": 30, "quick": 8}.get(scale.name, 2)
    # timed on the same engine (bptt), so the ratio compares the cells, not two engines
    for model in models.values():
        for layer in model.rnn.layers:
            layer.engine = "bptt"
    speed = _step_times(models, train, scale.bptt, repeats)
    for model in models.values():
        for layer in model.rnn.layers:
            layer.engine = "auto"
    rows, res, curves = [], {}, {}
    for cell, model in models.items():
        rec_params = sum(p.numel() for p in model.rnn.parameters())
        log = train_lm(model, train, scale, scale.lm_steps, seed,
                       max_seconds=3 * scale.lm_seconds)
        val_loss = lm_eval(model, val, scale.bptt)
        res[cell] = (rec_params, speed[cell], val_loss, len(log.loss))
        curves[cell] = (list(range(1, len(log.loss) + 1)), log.loss)
        rows.append([cell.upper(), rec_params, sum(p.numel() for p in model.parameters()),
                     speed[cell] * 1000, len(log.loss), log.seconds, log.loss[-1], val_loss])
    plot = "claim4_gru_lstm.png"
    line_plot(out / plot, curves, title="character LM on tiny Shakespeare, same batches",
              xlabel="step", ylabel="training loss (nats/char)", logy=False)
    (lp, lt, lv, ln), (gp, gt, gv, gn) = res["lstm"], res["gru"]
    checks = [Check("time per training step GRU / LSTM, same engine (bptt)", gt / lt, "<", 1.0),
              Check("abs(GRU - LSTM held-out loss) / LSTM's", abs(gv - lv) / lv, "<=", 0.05)]
    facts = [f"Recurrent parameters GRU / LSTM = {gp / lp:.3f}: arithmetic (3 gate blocks "
             f"against 4, so 3/4 at any size), not a measurement."]
    steps = f"{ln} steps" if ln == gn else f"{ln} (LSTM) and {gn} (GRU) steps"
    measured = (f"Recurrent parameters GRU/LSTM {gp / lp:.2f}; time per training step "
                f"GRU/LSTM {gt / lt:.2f}; validation loss GRU {fmt(gv)} vs LSTM {fmt(lv)} nats "
                f"per character after {steps}.")
    details = (f"Same hidden size (H = {scale.lm_hidden}), embedding 32, Adam 3e-3, clipping "
               f"1, batches of 16 x {scale.bptt} characters, trained on engine `auto`. Time per "
               f"step: both cells on the `bptt` engine, the median of {repeats} forward + "
               "backward passes "
               "on one batch, the two models interleaved (a busy machine slows both alike); "
               f"training stops after {scale.lm_steps} steps or "
               f"{3 * scale.lm_seconds:.0f} s; the loss is measured on held-out text that "
               "played no part in training (the notes: no conclusive evidence either is "
               "better, tested as within 5%).\n\n"
               + table(["cell", "recurrent params", "all params", "ms / step", "steps",
                        "training s", "last train loss", "val loss"], rows))
    return ClaimResult(4, "GRU against LSTM",
                       "A GRU has fewer parameters and is quicker to compute than an LSTM, "
                       "with no consistent difference in quality.", measured, checks,
                       details, [plot], time.monotonic() - start, facts)


def _future_tagging(n: int, length: int, seed: int) -> SyntheticTask:
    """Tag of token t = (x_t + x_{t+1}) mod 3, x over 6 ids: needs the next token."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 6, (n, length), generator=g)
    nxt = F.pad(x[:, 1:], (0, 1))
    tags = (x + nxt) % 3
    tags[:, -1] = IGNORE
    return SyntheticTask("tagging", x, tags, 6, 3, 1)


def bidirectional(scale: Scale, out: Path, seed: int = 0) -> ClaimResult:
    """Experiment 5: uni- against bidirectional tagging where the tag needs the next word,
    and a bidirectional "language model" that sees the answer."""
    start = time.monotonic()
    L = 12
    tag_runs: dict[bool, list[float]] = {False: [], True: []}
    for s in [seed + 1000 * i for i in range(scale.seeds)]:
        # stop on a validation set; judge on a test set drawn with another seed
        train, valid = _future_tagging(4000, L, s), _future_tagging(500, L, s + 200)
        test = _future_tagging(500, L, s + 100)
        for bi in (False, True):
            torch.manual_seed(s)
            model = TaskModel("lstm", 6, scale.hidden, 3, bidirectional=bi)
            train_on(model, train, steps=scale.steps, lr=1e-2, clip=1.0, seed=s,
                     max_seconds=scale.seconds, target=0.99, check=valid)
            tag_runs[bi].append(score(model, test))
    tag_acc = {bi: statistics.median(v) for bi, v in tag_runs.items()}
    gaps = [b - u for u, b in zip(tag_runs[False], tag_runs[True])]
    # the leak: a bidirectional model trained as a character LM
    vocab, ids, val = _char_data(scale)
    V, T = len(vocab), scale.bptt
    lm = {}
    for bi in (False, True):
        torch.manual_seed(seed)
        model = TaskModel("lstm", V, scale.lm_hidden, V, bidirectional=bi, embed_size=32)

        def batch_fn(step, g, m=model):
            x, y = lm_batch(ids, 16, T, g)
            return F.cross_entropy(m(x).transpose(1, 2), y)

        log = train_on(model, None, steps=scale.lm_steps, lr=3e-3, clip=1.0, seed=seed,
                       max_seconds=scale.lm_seconds, batch_fn=batch_fn)
        model.eval()
        g = torch.Generator().manual_seed(7)
        x, y = lm_batch(val, 8, T, g)
        with torch.no_grad():
            forced = float(F.cross_entropy(model(x).transpose(1, 2), y))
            # honest: predict token t+1 from x_0..x_t only (the future is not there yet)
            honest = sum(float(F.cross_entropy(model(x[:, :t + 1])[:, -1], y[:, t]))
                         for t in range(T)) / T
        emb = model.embed(x).detach().requires_grad_(True)
        out_seq, _ = model.rnn(emb)
        logits = model.head(out_seq)
        t0 = T // 2
        (g_emb,) = torch.autograd.grad(logits[:, t0].logsumexp(-1).sum(), emb)
        leak = float(g_emb[:, t0 + 1:].norm())
        lm[bi] = (log.loss[-1], forced, honest, leak)
    names = {False: "unidirectional", True: "bidirectional"}
    rows = [[names[bi], tag_acc[bi], *lm[bi]] for bi in (False, True)]
    plot = "claim5_bidirectional.png"
    bar_plot(out / plot, {names[bi]: {"tagging acc": tag_acc[bi],
                                      "LM loss, sees future": lm[bi][1] / math.log(V),
                                      "LM loss, prefix only": lm[bi][2] / math.log(V)}
                          for bi in (False, True)},
             title="bidirectional vs unidirectional (LM losses / log V)", ylabel="value")
    checks = [Check("tagging accuracy, bidirectional - unidirectional (median over seeds)",
                    statistics.median(gaps), ">=", 0.1),
              Check("LM loss with the future in the input, bidirectional - unidirectional",
                    lm[True][1] - lm[False][1], "<", 0.0),
              Check("bidirectional LM loss, prefix only - with the future",
                    lm[True][2] - lm[True][1], ">=", 0.5)]
    facts = [f"‖d logits_t / d x_(>t)‖: bidirectional {fmt(lm[True][3])}, unidirectional "
             f"{fmt(lm[False][3])}: a model with a backward direction reads later inputs by "
             "construction (and a unidirectional one cannot); this shows the wiring, it tests "
             "nothing."]
    measured = (f"Tagging accuracy (tag needs the next word; median [min, max] over "
                f"{scale.seeds} seed(s)): uni {spread(tag_runs[False])}, bi "
                f"{spread(tag_runs[True])}. As a character LM the bidirectional model's loss is "
                f"{fmt(lm[True][1])} nats with the future in its input but {fmt(lm[True][2])} "
                f"from the prefix alone (unidirectional: {fmt(lm[False][1])} / "
                f"{fmt(lm[False][2])}); gradient of logits at t w.r.t. later inputs: bi "
                f"{fmt(lm[True][3])}, uni {fmt(lm[False][3])}.")
    details = ("Tagging: tag_t = (x_t + x_{t+1}) mod 3 over 6 token ids, LSTM taggers with "
               "and without a backward direction (chance 1/3; a unidirectional tagger can "
               "only guess about the next token). Leak: the same LSTMs trained to predict "
               "the next character; \"sees future\" is the usual teacher-forced loss, "
               "\"prefix only\" feeds x_0..x_t and predicts x_{t+1}, as generation must. The "
               "last column is ‖d logits_t / d x_(>t)‖: nonzero means the model reads the "
               "tokens it is asked to predict.\n\n"
               + table(["model", "tagging acc", "LM train loss", "LM loss, sees future",
                        "LM loss, prefix only", "grad w.r.t. future inputs"], rows))
    return ClaimResult(5, "Bidirectional against unidirectional",
                       "A bidirectional RNN is better where the whole input is there (tagging) "
                       "but cannot be a language model: it sees the answer.", measured,
                       checks, details, [plot], time.monotonic() - start, facts)


def _lm_flops(steps: int, E: int, H: int, V: int) -> tuple[float, float]:
    """Multiply-adds x 2 of an LSTM LM over ``steps`` tokens: (recurrent part, softmax)."""
    return steps * 2 * 4 * H * (E + H), steps * 2 * H * V


def char_vs_word(scale: Scale, out: Path, seed: int = 0) -> ClaimResult:
    """Experiment 7: vocabulary, unknown words, sequence length and compute of character-
    and word-level language models of the same text."""
    start = time.monotonic()
    text = shakespeare({"full": None, "quick": 300_000}.get(scale.name, 50_000))
    cut = text.rfind("\n", 0, int(len(text) * 0.9)) + 1
    train_text, val_text = text[:cut], text[cut:]
    rows, res = [], {}
    E, H = 64, scale.lm_hidden
    for level in ("char", "word"):
        vocab = build_vocab(train_text, level, max_size=10_000 if level == "word" else None)
        val_ids = encode(val_text, vocab, level)
        unk = float((val_ids == vocab.unk_id).double().mean())
        lines = [ln for ln in val_text.splitlines() if ln.strip()]
        per_line = (sum(len(ln) for ln in lines) if level == "char"
                    else sum(len(ln.split()) for ln in lines)) / max(1, len(lines))
        rec, soft = _lm_flops(len(val_ids), E, H, len(vocab))
        torch.manual_seed(seed)
        model = LanguageModel(LMConfig(vocab_size=len(vocab), embedding_size=E, hidden_size=H,
                                       num_layers=1, cell="lstm"))
        n = min(len(val_ids) - 1, 20_000 if scale.name != "tiny" else 2_000)
        x = val_ids[:n - n % 50].view(50, -1)
        model.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            model(x)
        secs = (time.perf_counter() - t0) * (len(val_ids) / max(1, x.numel()))
        res[level] = (len(vocab), unk, per_line, len(val_ids), rec, soft, secs)
        rows.append([level, len(vocab), unk, per_line, len(val_ids), rec, soft, secs])
    (cv, cu, cl, cn, crec, _, cs), (wv, wu, wl, wn, wrec, _, ws) = \
        res["char"], res["word"]
    plot = "claim7_char_word.png"
    bar_plot(out / plot, {lvl: {"steps (x1000)": r[3] / 1000, "recurrent GFLOP": r[4] / 1e9,
                                "softmax GFLOP": r[5] / 1e9, "seconds": r[6]}
                          for lvl, r in res.items()},
             title="validation text: char vs word LSTM LM (forward)", ylabel="value")
    checks = [Check("forward time over the held-out text, char / word model", cs / max(ws, 1e-9),
                    ">", 1.0)]
    facts = [f"Unknown tokens in the held-out text: characters {fmt(cu)}, words {fmt(wu)} (a "
             "character vocabulary of the training text covers almost any text of the same "
             "language by construction).",
             f"Steps: the char model reads {cn / max(wn, 1):.1f}x the tokens (the text's "
             f"characters per word, counted, not learned); recurrent FLOP "
             f"{crec / max(wrec, 1):.1f}x (the same ratio times the layer sizes)."]
    measured = (f"Vocabulary {cv} chars vs {wv} words (capped at 10,000); unknown tokens in "
                f"held-out text {fmt(cu)} vs {fmt(wu)}; {cl / max(wl, 1e-9):.1f}x more steps "
                f"per line at char level; recurrent compute {crec / max(wrec, 1):.1f}x, total "
                f"forward time {cs / max(ws, 1e-9):.2f}x the word model's.")
    details = (f"An LSTM LM (E = {E}, H = {H}) of each level reads the held-out 10% of the "
               "text once (forward only, timed). The char model needs many more steps and "
               "more recurrent compute; the word model's softmax over its vocabulary is the "
               "larger cost per step; what is measured is whether the char model costs "
               "more in total time.\n\n"
               + table(["level", "vocab", "unknown share", "tokens / line", "tokens",
                        "recurrent FLOP", "softmax FLOP", "forward s"], rows))
    return ClaimResult(7, "Characters against words",
                       "A character-level model never meets an unknown word, but its "
                       "sequences are much longer and it costs much more computation.",
                       measured, checks, details, [plot], time.monotonic() - start, facts)
