"""Export trained models to ONNX (run by onnxruntime, C++, C#, Java, JavaScript ...) or
TorchScript, with dynamic batch size and sequence length.

::

    rnnkit export runs/lm --onnx lm.onnx            # language model
    rnnkit export runs/tagger --onnx tagger.onnx    # tagger: emissions (B, T, K)
    rnnkit export runs/sst --torchscript sst.pt     # TorchScript instead (torch.jit.load)

How: every recurrent layer is switched to the ``native`` engine (torch's fused LSTM / GRU /
RNN kernels, whose ONNX form is the ONNX ``LSTM`` / ``GRU`` / ``RNN`` operator, a loop over
any number of steps), and the model is traced with torch's TorchScript-based ONNX exporter.
The scan cells (``scan-gru``, ``scan-lstm``, ``qrnn``) keep the ``scan`` engine: their gates
are elementwise functions of one GEMM over all steps (traced for any length) and their
linear recurrence a scripted loop, which the exporter writes as an ONNX ``Loop``. The
Python-loop engines (``reference``, ``bptt``) would be unrolled to the traced length, so the
other cells (``peephole``, ``gru-simple``, ``gru-before``, layer-normalised cells) are refused
with an error that names the layer.

The graphs (inputs -> outputs; B, T, U, L are dynamic):

- language model: ``tokens`` (B, T) int64 and the initial state of each layer ``h0_<l>``
  (B, H) (and ``c0_<l>`` for LSTMs and QRNNs, ``x0_<l>`` (B, I) the last input for a QRNN
  of window 2; zeros for a fresh start; a QRNN's ``h0_<l>`` reaches no output, h = o * c,
  so the graph has no such input) -> ``logits`` (B, T, V) (log-probabilities for an
  adaptive softmax) and the final states ``h_<l>`` / ``c_<l>`` / ``x_<l>``,
  so a long text can be fed window by window;
- tagger: ``words`` (B, T), ``lengths`` (B,), and with a character encoder ``chars`` (U, L),
  ``char_lengths`` (U,), ``char_index`` (B, T) -> ``emissions`` (B, T, K) (a CRF tagger's
  transition scores are in the run's weights, ``crf.transitions``);
- classifier: ``words`` (B, T), ``lengths`` (B,) -> ``logits`` (B, C).

:func:`check_onnx` runs an exported file in onnxruntime and compares it with PyTorch.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from rnnkit.errors import RnnkitError, note
from rnnkit.layers.recurrent import Recurrent

OPSET = 17
#: the opsets the TorchScript-based exporter writes (torch.onnx._constants; 2.13: 9 to 20;
#: below 9 there is no LSTM/GRU operator)
OPSET_MIN, OPSET_MAX = 9, 20


class ExportError(RnnkitError):
    """A model (or a part of it) that cannot be exported, or a missing exporter package."""


@dataclass
class ExportSpec:
    """A module to export with example inputs and the names and dynamic axes of its tensors.

    Attributes:
        module: ``forward(*inputs) -> tensor or tuple of tensors``, in eval mode.
        inputs: example inputs (their sizes must differ from 1 so that tracing keeps them
            symbolic).
        input_names / output_names: the graph's tensor names.
        dynamic_axes: ``{name: {axis: "B" | "T" | ...}}``.
    """

    module: nn.Module
    inputs: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]


# -- making a model exportable -------------------------------------------------------------
@contextmanager
def native_engines(model: nn.Module):
    """Switch every :class:`Recurrent` layer of ``model`` to an engine that exports with a
    dynamic sequence length (restored on exit): ``native`` (the ONNX ``LSTM`` / ``GRU`` /
    ``RNN`` operators), and for the scan cells ``scan``, whose recurrence is then a scripted
    loop (an ONNX ``Loop``; :func:`rnnkit.engines.scan.run_scan`). :class:`ExportError`
    naming the first layer whose cell has neither."""
    from rnnkit.engines.scan import scan_supports

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, Recurrent)]
    engines = []
    for name, layer in layers:
        if scan_supports(layer.cell):
            engines.append("scan")
        elif getattr(layer.cell, "native_mode", None) is not None:
            engines.append("native")
        else:
            raise ExportError(f"layer {name or 'rnn'}: cell {type(layer.cell).__name__} has no "
                              f"native kernel, so it cannot be exported with a dynamic sequence "
                              f"length (exportable cells: rnn, rnn-relu, lstm without layer "
                              f"norm, gru with reset after, scan-gru, scan-lstm, qrnn)")
    saved = [layer.engine for _, layer in layers]
    try:
        for (_, layer), engine in zip(layers, engines):
            layer.engine = engine
            layer.initial_state = _traceable_initial_state(layer)
        yield model
    finally:
        for (_, layer), engine in zip(layers, saved):
            layer.engine = engine
            del layer.initial_state  # back to the class's method


def _traceable_initial_state(layer: Recurrent):
    """``layer.initial_state`` whose zeros take their batch size from the input tensor, so
    that a traced graph keeps the batch size dynamic (tracing turns sizes into tensors)."""
    original = type(layer).initial_state.__get__(layer)

    def initial_state(batch_size: int, like: Tensor) -> tuple[Tensor, ...]:
        if len(layer.init_states) or like.dim() != 3:
            return original(batch_size, like)
        zero = like[0, :, :1] * 0  # (B, 1), B as the input's: like is (T, B, I)
        return tuple(zero.expand(-1, n) for n in _state_sizes(layer))

    return initial_state


def _flat(outputs: object) -> tuple[Tensor, ...]:
    if isinstance(outputs, Tensor):
        return (outputs,)
    out: list[Tensor] = []
    for o in outputs:  # type: ignore[union-attr]
        out.extend(_flat(o))
    return tuple(out)


# -- ONNX and TorchScript ------------------------------------------------------------------
def export_onnx(spec: ExportSpec, path: str | Path, *, opset: int = OPSET) -> None:
    """Write ``spec.module`` as an ONNX file (TorchScript-based exporter, dynamic axes)."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'rnnkit[export]'") \
            from None
    spec.module.eval()
    buf = io.BytesIO()
    with native_engines(spec.module), torch.no_grad(), warnings.catch_warnings(), \
            _quiet_native_stderr():
        warnings.simplefilter("ignore")  # the exporter's notes on traced shapes and LSTMs
        torch.onnx.export(spec.module, spec.inputs, buf, dynamo=False, opset_version=opset,
                          input_names=spec.input_names, output_names=spec.output_names,
                          dynamic_axes=spec.dynamic_axes)
    _write(path, buf.getvalue())


@contextmanager
def _quiet_native_stderr():
    """Silence file descriptor 2 (the exporter's C++ shape-inference notes about packed
    sequences, which print one line per layer); Python exceptions still propagate."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def export_torchscript(spec: ExportSpec, path: str | Path) -> None:
    """Write ``spec.module`` traced to TorchScript (load with ``torch.jit.load``)."""
    spec.module.eval()
    buf = io.BytesIO()
    with native_engines(spec.module), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(spec.module, spec.inputs, check_trace=False)
        torch.jit.save(traced, buf)
    _write(path, buf.getvalue())


def _write(path: str | Path, data: bytes) -> None:
    from rnnkit.files import write_bytes_atomic
    write_bytes_atomic(path, data)


def run_onnx(path: str | Path, feeds: dict[str, Tensor]) -> list[Tensor]:
    """Run an ONNX file in onnxruntime (CPU) on ``feeds``; its outputs as tensors."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("running ONNX needs onnxruntime: pip install 'rnnkit[export]'") \
            from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}  # an input no output depends on (a QRNN's
    # h0: h = o * c) is not in the graph
    outs = session.run(None, {k: v.detach().cpu().numpy() for k, v in feeds.items()
                              if k in wanted})
    return [torch.from_numpy(o) for o in outs]


def check_onnx(spec: ExportSpec, path: str | Path, inputs: Sequence[Tensor]) -> float:
    """The largest absolute difference between onnxruntime and PyTorch on ``inputs``."""
    with torch.no_grad():
        expected = _flat(spec.module.eval()(*inputs))
    got = run_onnx(path, dict(zip(spec.input_names, inputs)))
    return max(float((g - e).abs().max()) for g, e in zip(got, expected))


# -- the three exportable models -----------------------------------------------------------
class LMGraph(nn.Module):
    """``forward(tokens (B, T), *states) -> (logits (B, T, V), *final states)`` for a
    :class:`~rnnkit.models.lm.LanguageModel`; states flattened layer by layer (h, then c)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.kinds = [layer.cell.num_states for layer in model.rnn.layers]

    def forward(self, tokens: Tensor, *flat: Tensor) -> tuple[Tensor, ...]:
        states, i = [], 0
        for n in self.kinds:
            states.append(flat[i] if n == 1 else tuple(flat[i:i + n]))
            i += n
        logits, final = self.model(tokens, states)
        return (logits, *_flat(final))


def lm_spec(model: nn.Module) -> ExportSpec:
    """The :class:`ExportSpec` of a language model (examples B = 2, T = 5)."""
    graph = LMGraph(model)
    B, T = 2, 5
    tokens = torch.randint(0, model.config.vocab_size, (B, T))
    inputs, outputs, states = ["tokens"], ["logits"], []
    for layer_index, layer in enumerate(model.rnn.layers):
        names = ["h", "c", "x"][:layer.cell.num_states]  # x: a QRNN's last input (window 2)
        for name in names:
            inputs.append(f"{name}0_{layer_index}")
            outputs.append(f"{name}_{layer_index}")
        states.extend(torch.zeros(B, s) for s in _state_sizes(layer))
    axes = {n: {0: "B"} for n in inputs[1:] + outputs[1:]}
    axes.update(tokens={0: "B", 1: "T"}, logits={0: "B", 1: "T"})
    return ExportSpec(graph, (tokens, *states), inputs, outputs, axes)


def _state_sizes(layer: Recurrent) -> list[int]:
    state = layer.cell.init_state(1)
    return [s.shape[-1] for s in (state if isinstance(state, tuple) else (state,))]


class TaggerGraph(nn.Module):
    """``forward(words, lengths[, chars, char_lengths, char_index]) -> emissions (B, T, K)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, words: Tensor, lengths: Tensor, chars: Tensor | None = None,
                char_lengths: Tensor | None = None, char_index: Tensor | None = None) -> Tensor:
        from rnnkit.models.tagger import TaggerBatch
        return self.model.emissions(TaggerBatch(words, lengths, chars, char_lengths, char_index))


def tagger_spec(model: nn.Module) -> ExportSpec:
    """The :class:`ExportSpec` of a tagger (examples B = 3, T = 6, U = 7 words of L = 4)."""
    B, T = 3, 6
    words = torch.randint(0, model.config.num_words, (B, T))
    lengths = torch.tensor([T, T - 2, T - 3])  # unequal: the traced graph keeps the padding path
    inputs, names = [words, lengths], ["words", "lengths"]
    axes: dict[str, dict[int, str]] = {"words": {0: "B", 1: "T"}, "lengths": {0: "B"},
                                       "emissions": {0: "B", 1: "T"}}
    if model.chars is not None:
        U, L = 7, 4
        chars = torch.randint(0, model.config.num_chars, (U, L))
        inputs += [chars, torch.tensor([L, 1, 2, L, 3, 2, 1]), torch.randint(0, U, (B, T))]
        names += ["chars", "char_lengths", "char_index"]
        axes.update(chars={0: "U", 1: "L"}, char_lengths={0: "U"},
                    char_index={0: "B", 1: "T"})
    return ExportSpec(TaggerGraph(model), tuple(inputs), names, ["emissions"], axes)


def classifier_spec(model: nn.Module) -> ExportSpec:
    """The :class:`ExportSpec` of a classifier (examples B = 3, T = 6)."""
    B, T = 3, 6
    words = torch.randint(0, model.config.num_words, (B, T))
    lengths = torch.tensor([T, T - 2, T - 3])
    return ExportSpec(model, (words, lengths), ["words", "lengths"], ["logits"],
                      {"words": {0: "B", 1: "T"}, "lengths": {0: "B"}, "logits": {0: "B"}})


class AcousticGraph(nn.Module):
    """``forward(frames (B, T, n_mels), lengths (B,)) -> log_probs (B, T', V)`` for a speech
    model (:class:`~rnnkit.models.asr.AcousticModel`; normalised features in)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: Tensor, lengths: Tensor) -> Tensor:
        return self.model(frames, lengths)[0]


def asr_spec(model: nn.Module) -> ExportSpec:
    """The :class:`ExportSpec` of a speech model (examples B = 3, T = 12 frames)."""
    B, T = 3, 12
    frames = torch.randn(B, T, model.config.features.n_mels)
    lengths = torch.tensor([T, T - 3, T - 5])
    axes = {"frames": {0: "B", 1: "T"}, "lengths": {0: "B"}, "log_probs": {0: "B", 1: "S"}}
    return ExportSpec(AcousticGraph(model), (frames, lengths), ["frames", "lengths"],
                      ["log_probs"], axes)


SPECS = {"lm": lm_spec, "tagger": tagger_spec, "classifier": classifier_spec, "asr": asr_spec}


# -- exporting a trained model ------------------------------------------------------------
def export_model(model: nn.Module, task: str, *, onnx: str | None = None,
                 torchscript: str | None = None, opset: int = OPSET, check: bool = True) -> None:
    """Write a loaded ``model`` of ``task`` (one of :data:`SPECS`) as ONNX and/or TorchScript,
    saying what was written on stderr, and check an ONNX file in onnxruntime on a batch and
    length other than the traced ones (when onnxruntime is installed)."""
    if not onnx and not torchscript:
        raise ExportError("rnnkit export: give --onnx F.onnx and/or --torchscript F.pt")
    if onnx and not OPSET_MIN <= opset <= OPSET_MAX:
        raise ExportError(f"--opset {opset}: the ONNX exporter of torch {torch.__version__} "
                          f"writes opsets {OPSET_MIN} to {OPSET_MAX}")
    spec = SPECS[task](model.eval())
    if torchscript:
        export_torchscript(spec, torchscript)
        note(f"wrote {torchscript} (TorchScript; inputs {', '.join(spec.input_names)})")
    if onnx:
        export_onnx(spec, onnx, opset=opset)
        note(f"wrote {onnx} (ONNX opset {opset}; inputs "
              f"{', '.join(spec.input_names)}; outputs {', '.join(spec.output_names)})")
        if check:
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                note("onnxruntime is not installed: the export was not checked")
                return
            other = SPECS[task](model)  # fresh examples; resized below
            inputs = resize_examples(other, batch=4, steps=9)
            diff = check_onnx(spec, onnx, inputs)
            note(f"onnxruntime agrees with PyTorch at batch 4, length 9: max |diff| {diff:.2e}")
            if not diff < 1e-3:
                raise ExportError(f"{onnx}: onnxruntime differs from PyTorch by {diff:.3g}")


def resize_examples(spec: ExportSpec, batch: int, steps: int) -> list[Tensor]:
    """Inputs for ``spec`` at another batch size and sequence length (for checks)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for name, x in zip(spec.input_names, spec.inputs):
        axes = spec.dynamic_axes.get(name, {})
        shape = list(x.shape)
        for axis, label in axes.items():
            shape[axis] = {"B": batch, "T": steps}.get(label, shape[axis])
        if name == "lengths":
            out.append(torch.randint(1, steps + 1, (batch,), generator=g)
                       .index_fill(0, torch.tensor([0]), steps))
        elif name == "char_index":
            out.append(torch.randint(0, spec.inputs[2].shape[0], shape, generator=g))
        elif name == "char_lengths":
            out.append(x.clone())
        elif x.dtype == torch.long:
            high = int(x.max()) + 1
            out.append(torch.randint(0, max(high, 2), shape, generator=g))
        else:
            out.append(torch.randn(shape, generator=g))
    return out
