"""Stacking recurrent layers in depth: ``Stacked(layers, connection)`` and :func:`stack`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit.cells import make_cell
from rnnkit.cells.base import as_tuple, check_choice, check_state, from_tuple
from rnnkit.engines.kernels import inference_step
from rnnkit.engines.native import call_native, flat_weights
from rnnkit.layers.bidirectional import Bidirectional, cell_states, finish
from rnnkit.layers.dropout import dropout
from rnnkit.layers.recurrent import (
    Recurrent,
    RecurrentOutput,
    RecurrentTrace,
    _TimeMajor,
    check_lengths,
    check_probability,
    unpack_input,
    variational_mask,
)

CONNECTIONS = ("none", "residual", "dense", "highway")


class Stacked(nn.Module):
    """Recurrent layers stacked in depth, with skip connections between them.

    Args:
        layers: :class:`Recurrent` or :class:`Bidirectional` layers, all with the same
            ``batch_first``.
        connection: how layer l's input ``x_l`` and output ``f(x_l)`` make the next input:
            - ``"none"``: ``x_{l+1} = f(x_l)``;
            - ``"residual"``: ``x_{l+1} = f(x_l) + x_l`` (He et al. 2016), where the sizes
              match (from the second layer on when the first changes the size);
            - ``"dense"``: ``x_{l+1} = [x_0, f(x_0), ..., f(x_l)]`` concatenated (Huang et al.
              2017), so layer l must read ``input_size + sum of earlier output sizes``;
            - ``"highway"``: ``x_{l+1} = T * f(x_l) + (1 - T) * x_l``,
              ``T = sigmoid(W_T x_l + b_T)`` (Srivastava et al. 2015), ``b_T`` initialised to
              -1 (carry by default), where the sizes match.
            The stack's output is the last layer's ``f(x_L)`` combined by the same rule
            (for ``"dense"``: ``f(x_L)`` alone).
        dropout: dropout on the input of every layer but the first (torch.nn's ``dropout``).
        variational: use one dropout mask per sequence for every step (Gal and Ghahramani 2016).

    ``forward(x, states=None, lengths=None)`` returns ``(output, states)`` with ``states`` a
    list of each layer's final state; output zero past each sequence's length.
    """

    def __init__(self, layers: Sequence[nn.Module], connection: str = "none",
                 dropout: float = 0.0, variational: bool = False) -> None:
        super().__init__()
        if not layers:
            raise ValueError("layers must hold at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, (Recurrent, Bidirectional)):
                raise TypeError(f"layers[{i}] must be a Recurrent or Bidirectional layer, got "
                                f"{type(layer).__name__}")
        if len({layer.batch_first for layer in layers}) != 1:
            raise ValueError("every layer of a Stacked must have the same batch_first")
        self.connection = check_choice("connection", connection, CONNECTIONS)
        self.dropout = check_probability("dropout", dropout)
        self.variational = bool(variational)
        self.layers = nn.ModuleList(layers)
        expected = layers[0].input_size
        for i, layer in enumerate(layers):
            if layer.input_size != expected:
                raise ValueError(f"layers[{i}] must read {expected} features with "
                                 f"connection={connection!r}, got input_size {layer.input_size}")
            if connection == "dense":
                expected = expected + layer.output_size
            else:
                expected = layer.output_size
        gates = [nn.Linear(layer.input_size, layer.output_size)
                 if connection == "highway" and self._skips(layer) else None
                 for layer in layers]
        self.gates = nn.ModuleList([g if g is not None else nn.Identity() for g in gates])
        for g in gates:
            if g is not None:
                nn.init.constant_(g.bias, -1.0)

    @staticmethod
    def _skips(layer: nn.Module) -> bool:
        return layer.input_size == layer.output_size

    @property
    def batch_first(self) -> bool:
        return self.layers[0].batch_first

    @property
    def input_size(self) -> int:
        return self.layers[0].input_size

    @property
    def output_size(self) -> int:
        return self.layers[-1].output_size

    def forward(self, x: Tensor | PackedSequence, states: Sequence | None = None,
                lengths: Tensor | None = None, *, return_states: bool = False
                ) -> RecurrentOutput | RecurrentTrace:
        """Run the stack. ``states``: a list with each layer's initial state (or ``None``).

        With ``return_states=True``, ``states`` of the result lists each layer's per-step
        states (for a Bidirectional layer, a pair)."""
        if isinstance(x, PackedSequence) and not return_states and self.fused_mode(x.data.device) \
                and not _packed_is_slow(x.data.device):
            hx = self.flatten_states(states, x.data, int(x.batch_sizes[0]))
            out, flat = self.run_fused(x, hx)
            return RecurrentOutput(out, self.unflatten_states(flat))
        xt, packed_lengths, packed = unpack_input(x, self.batch_first)
        lengths = packed_lengths if packed is not None else lengths
        res = self.forward_time_major(xt, states, lengths, return_states)
        return finish(res, self.batch_first, packed, return_states)

    # -- one call of torch's fused kernel for the whole stack ---------------------------------
    def _directions(self) -> list[Recurrent]:
        out: list[Recurrent] = []
        for layer in self.layers:
            out += [layer.fwd, layer.bwd] if isinstance(layer, Bidirectional) else [layer]
        return out

    def fused_mode(self, device: torch.device) -> str | None:
        """torch's kernel mode when one call of it computes the whole stack exactly as
        torch.nn's multi-layer RNN/LSTM/GRU does (every layer on the native engine, the same
        cell and sizes, no skip connections, no rnnkit-only dropout), else ``None``."""
        if self.connection != "none" or self.variational:
            return None
        dirs = self._directions()
        per_layer = 2 if isinstance(self.layers[0], Bidirectional) else 1
        first = dirs[0].cell
        for d in dirs:
            c = d.cell
            if (d.engine_for(device) != "native" or d.input_dropout or d.output_dropout
                    or d.dropconnect or len(d.init_states) or type(c) is not type(first)
                    or c.native_mode != first.native_mode or c.hidden_size != first.hidden_size
                    or c.output_size != first.output_size
                    or getattr(c, "bias", True) != getattr(first, "bias", True)):
                return None
        for layer in self.layers:
            if (2 if isinstance(layer, Bidirectional) else 1) != per_layer or (
                    isinstance(layer, Bidirectional) and layer.merge != "concat"):
                return None
        return first.native_mode

    def flatten_states(self, states: Sequence | None, like: Tensor, batch_size: int
                       ) -> tuple[Tensor, ...] | None:
        """Per-layer states as torch.nn's ``(L * D, B, n)`` tensors (``None`` stays None;
        a layer's ``None`` is its initial state)."""
        if states is None:
            return None
        if not isinstance(states, (list, tuple)) or len(states) != len(self.layers):
            raise ValueError(f"states must be a list with one state per layer "
                             f"({len(self.layers)}), got {type(states).__name__}")
        per_dir = []
        for layer, st in zip(self.layers, states):
            dirs = layer.fwd_bwd() if isinstance(layer, Bidirectional) else (layer,)
            if st is None:
                st = (None,) * len(dirs)
            elif isinstance(layer, Bidirectional):
                if not isinstance(st, (tuple, list)) or len(st) != 2:
                    raise TypeError("state of a Bidirectional layer must be a pair "
                                    "(state_fwd, state_bwd)")
            else:
                st = (st,)
            for d, s in zip(dirs, st):
                if s is None:
                    s = d.initial_state(batch_size, like)
                else:
                    check_state("state", d.cell, s, batch_size)
                per_dir.append(as_tuple(s))
        return tuple(torch.stack([s[j] for s in per_dir]) for j in range(len(per_dir[0])))

    def unflatten_states(self, flat: tuple[Tensor, ...]) -> list:
        """torch.nn's ``(L * D, B, n)`` states as this stack's per-layer states."""
        out, i = [], 0
        for layer in self.layers:
            dirs = layer.fwd_bwd() if isinstance(layer, Bidirectional) else (layer,)
            st = [from_tuple(d.cell, tuple(f[i + k] for f in flat)) for k, d in enumerate(dirs)]
            i += len(dirs)
            out.append(tuple(st) if isinstance(layer, Bidirectional) else st[0])
        return out

    def run_fused(self, x: Tensor | PackedSequence, hx: tuple[Tensor, ...] | None
                  ) -> tuple[Tensor | PackedSequence, tuple[Tensor, ...]]:
        """The whole stack in one call of torch's kernel, as torch.nn does it.

        ``x``: time-major (T, B, I) or packed; ``hx``: ``(L * D, B, n)`` tensors or ``None``.
        Returns the output (time-major, or packed like ``x``) and the final states."""
        dirs = self._directions()
        data = x.data if isinstance(x, PackedSequence) else x
        mode = dirs[0].cell.native_mode
        weights = [w for d in dirs for w in flat_weights(d.cell, d.cell.params())]
        if hx is None:
            B = int(x.batch_sizes[0]) if isinstance(x, PackedSequence) else x.shape[1]
            sizes = dirs[0].cell.state_sizes()
            hx = tuple(data.new_zeros(len(dirs), B, n) for n in sizes)
        bidirectional = isinstance(self.layers[0], Bidirectional)
        has_bias = bool(getattr(dirs[0].cell, "bias", True))
        args = (weights, has_bias, len(self.layers), self.dropout, self.training, bidirectional)
        if not isinstance(x, PackedSequence):
            return call_native(mode, x, hx, *args)
        if x.sorted_indices is not None:
            hx = tuple(h.index_select(1, x.sorted_indices) for h in hx)
        out, states = call_native(mode, x, hx, *args)
        if x.unsorted_indices is not None:
            states = tuple(s.index_select(1, x.unsorted_indices) for s in states)
        return PackedSequence(out, x.batch_sizes, x.sorted_indices, x.unsorted_indices), states

    # -- one time step, for decoding ----------------------------------------------------------
    def step(self, x_t: Tensor, states: Sequence | None = None) -> tuple[Tensor, list]:
        """One time step of the whole stack: ``x_t`` (B, I) and each layer's state (a list,
        or ``None`` for the initial ones) to the output (B, H_out) and the new states.

        With autograd on (training a decoder token by token) each layer runs its own forward
        over one step, dropout included. Without (generation, search) the stack is walked cell
        by cell with no dropout, each cell on its inference step
        (:func:`rnnkit.engines.kernels.inference_step`: pre-transposed weights for the plain
        LSTM), prepared once and rebuilt when a parameter changes."""
        if any(isinstance(layer, Bidirectional) for layer in self.layers):
            raise ValueError("a stack with Bidirectional layers cannot run step by step")
        if x_t.dim() != 2:
            raise ValueError(f"x_t must be (batch, features), got shape {tuple(x_t.shape)}")
        if torch.is_grad_enabled():
            time = 1 if self.batch_first else 0
            y, states = self.forward(x_t.unsqueeze(time), states)
            return y.squeeze(time), states
        B = x_t.shape[0]
        if states is None:
            states = [from_tuple(layer.cell, layer.initial_state(B, x_t)) for layer in self.layers]
        steps = self._inference_steps()
        inputs, h = [x_t], x_t
        new_states = []
        for i, step in enumerate(steps):
            inp = torch.cat(inputs, dim=-1) if self.connection == "dense" and i else h
            y, state = step(inp, states[i])
            new_states.append(state)
            h = self.connect(i, inp, y)
            inputs.append(h)
        return h, new_states

    def _inference_steps(self) -> list:
        """Each layer's inference step, cached until a parameter changes (in place or not)."""
        key = tuple((id(p), p._version, p.device, p.dtype) for p in self.parameters())
        cached = self.__dict__.get("_inference")
        if cached is None or cached[0] != key:
            cached = (key, [inference_step(layer.cell) for layer in self.layers])
            self.__dict__["_inference"] = cached
        return cached[1]

    def connect(self, index: int, inp: Tensor, y: Tensor) -> Tensor:
        """Layer ``index``'s output ``y`` combined with its input ``inp`` by the residual or
        highway connection (unchanged where the sizes differ or for "none" and "dense", whose
        combination is the concatenation of the next layer's input). Any shape (..., H)."""
        if self.connection not in ("residual", "highway") or not self._skips(self.layers[index]):
            return y
        if self.connection == "residual":
            return y + inp
        t = torch.sigmoid(self.gates[index](inp))
        return t * y + (1 - t) * inp

    def _drop(self, x: Tensor) -> Tensor:
        if not (self.training and self.dropout):
            return x
        if self.variational:
            return x * variational_mask(self.dropout, x.shape[1], x.shape[2], x)
        return dropout(x, self.dropout)

    def forward_time_major(self, x: Tensor, states: Sequence | None, lengths: Tensor | None,
                           need_states: bool = False) -> _TimeMajor:
        if not need_states and self.fused_mode(x.device):
            fused = self._fused_time_major(x, states, lengths)
            if fused is not None:
                return fused
        n = len(self.layers)
        if states is None:
            states = [None] * n
        elif not isinstance(states, (list, tuple)) or len(states) != n:
            got = len(states) if isinstance(states, (list, tuple)) else type(states).__name__
            raise ValueError(f"states must be a list with one state per layer ({n}), got {got}")
        finals, traces = [], []
        inputs = [x]
        h = x
        checked = None
        mask = None
        for i, layer in enumerate(self.layers):
            inp = torch.cat(inputs, dim=-1) if self.connection == "dense" and i else h
            res = layer.forward_time_major(self._drop(inp) if i else inp, states[i],
                                           lengths, need_states)
            y = res.output
            if checked is None and res.lengths is not None:
                checked = res.lengths
                steps = torch.arange(x.shape[0], device=x.device)
                mask = (steps[:, None] < checked[None, :]).unsqueeze(-1).to(y.dtype)
            if self.connection in ("residual", "highway") and self._skips(layer):
                y = self.connect(i, inp, y)
                if mask is not None:
                    y = y * mask
            finals.append(res.state)
            traces.append(cell_states(layer, res.states) if isinstance(layer, Recurrent)
                          else res.states)
            inputs.append(y)
            h = y
        return _TimeMajor(h, finals, traces if need_states else None, checked)

    def _fused_time_major(self, x: Tensor, states: Sequence | None, lengths: Tensor | None
                          ) -> _TimeMajor | None:
        """The stack in one call of torch's kernel; ``None`` (run it layer by layer) for
        unequal lengths where that kernel's packed form is slow (:func:`_packed_is_slow`)."""
        T, B, I = x.shape
        if self.input_size != I:
            raise ValueError(f"input must have {self.input_size} features (the first layer's "
                             f"input_size), got {I}")
        if lengths is not None:
            lengths = check_lengths(lengths, B, T, x.device)
        uneven = lengths is not None and not bool((lengths == T).all())
        if uneven and _packed_is_slow(x.device):
            return None
        hx = self.flatten_states(states, x, B)
        if hx is None:  # zeros sized from x, which tracing (export) keeps symbolic
            dirs = self._directions()
            hx = tuple(x.new_zeros(len(dirs), B, n) for n in dirs[0].cell.state_sizes())
        if not uneven:
            out, flat = self.run_fused(x, hx)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
            out, flat = self.run_fused(packed, hx)
            out, _ = pad_packed_sequence(out, total_length=T)
        return _TimeMajor(out, self.unflatten_states(flat), None, lengths)

    def extra_repr(self) -> str:
        return f"connection={self.connection!r}, dropout={self.dropout}"


def _packed_is_slow(device: torch.device) -> bool:
    """Whether torch's fused kernel on sequences of unequal lengths (packed) is slower here
    than the layers one by one, each on the native engine (which runs the steps that every
    sequence has in one fused call and packs only the rest). On the CPU it is: ATen's packed
    kernel slices its input step by step, and the backward of each slice writes zeros the
    size of the whole input, quadratic in T (3 x 256 bidirectional LSTM, batch 16, lengths
    197-200: 3.7 s fwd+bwd packed, 0.98 s layer by layer, equal to the fused time at equal
    lengths). A packed input there is unpacked, and its lengths decide."""
    return device.type == "cpu" and not torch.jit.is_tracing()  # export: any lengths


def stack(cell: str, input_size: int, hidden_size: int, num_layers: int = 1, *,
          bidirectional: bool = False, merge: str = "concat", connection: str = "none",
          dropout: float = 0.0, variational: bool = False, batch_first: bool = True,
          engine: str = "auto", input_dropout: float = 0.0, output_dropout: float = 0.0,
          dropconnect: float = 0.0, learn_init: bool = False,
          layer_options: Sequence[Mapping[str, object]] | None = None, **cell_options: object
          ) -> Stacked:
    """Build a :class:`Stacked` of ``num_layers`` layers of the named cell.

    ``cell``: ``"rnn"``, ``"rnn-relu"``, ``"lstm"``, ``"peephole"``, ``"gru"``,
    ``"gru-before"``, ``"gru-simple"``, ``"scan-gru"``, ``"scan-lstm"`` or ``"qrnn"``;
    ``cell_options`` go to every cell (``layer_norm=True``, ``forget_bias=1.0``, ...), and
    ``layer_options`` (one mapping per layer) over them to that layer's cells: AWD-LSTM's
    QRNN, ``[{"window": 2}, {"window": 1}, ...]``. Layer options as :class:`Recurrent`, stack
    options as :class:`Stacked`. Input (B, T, input_size); output (B, T, H or 2H when
    bidirectional and concatenated).
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
    check_choice("connection", connection, CONNECTIONS)
    per_layer = [{}] * num_layers if layer_options is None else [dict(o) for o in layer_options]
    if len(per_layer) != num_layers:
        raise ValueError(f"layer_options must hold one mapping per layer ({num_layers}), got "
                         f"{len(per_layer)}")
    layer_opts = dict(batch_first=batch_first, engine=engine, input_dropout=input_dropout,
                      output_dropout=output_dropout, dropconnect=dropconnect,
                      learn_init=learn_init)
    layers: list[nn.Module] = []
    size = input_size
    total = input_size
    for options in per_layer:
        options = {**cell_options, **options}
        fwd = Recurrent(make_cell(cell, size, hidden_size, **options), reverse=False,
                        **layer_opts)
        if bidirectional:
            bwd = Recurrent(make_cell(cell, size, hidden_size, **options), reverse=True,
                            **layer_opts)
            layer: nn.Module = Bidirectional(fwd, bwd, merge=merge)
        else:
            layer = fwd
        layers.append(layer)
        total += layer.output_size
        size = total if connection == "dense" else layer.output_size
    return Stacked(layers, connection=connection, dropout=dropout, variational=variational)
