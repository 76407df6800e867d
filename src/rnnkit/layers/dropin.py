"""Drop-in replacements for torch.nn.RNN, torch.nn.LSTM and torch.nn.GRU.

Same constructor arguments, forward signature, output and state shapes and ``state_dict``
names as torch.nn, so ``rnnkit.LSTM(...).load_state_dict(torch_lstm.state_dict())`` just works.
Extra keyword arguments reach rnnkit's features::

    rnnkit.LSTM(256, 512, num_layers=3, cell="peephole", connection="highway",
                engine="bptt", dropconnect=0.3)

Parameter names: a cell's parameter ``p`` of layer ``k`` is ``p_l{k}`` (``p_l{k}_reverse`` for
the backward direction): ``weight_ih_l0``, ``bias_hh_l1_reverse``, ``peephole_l0``,
``ln_hh_weight_l2``, ... Highway gates and learned initial states keep their module paths.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkit.cells import canonical_cell
from rnnkit.cells.base import check_size
from rnnkit.layers.recurrent import check_probability, pack_like, unpack_input
from rnnkit.layers.stacking import stack

_CELL_PATH = re.compile(r"^stack\.layers\.(\d+)\.(?:(fwd|bwd)\.)?cell\.(\w+)$")


class _RNNBase(nn.Module):
    """What the three drop-ins share; ``kind`` is "RNN", "LSTM" or "GRU"."""

    kind = ""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, bias: bool,
                 batch_first: bool, dropout: float, bidirectional: bool, proj_size: int,
                 device: torch.device | str | None, dtype: torch.dtype | None, cell: str,
                 cell_options: dict, options: dict) -> None:
        super().__init__()
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = check_size("hidden_size", hidden_size)
        self.num_layers = check_size("num_layers", num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = check_probability("dropout", dropout)
        self.bidirectional = bool(bidirectional)
        self.proj_size = proj_size
        self.cell = cell
        if proj_size:
            cell_options["proj_size"] = proj_size
        self.stack = stack(cell, input_size, hidden_size, num_layers,
                           bidirectional=bidirectional, dropout=dropout, batch_first=False,
                           bias=bias, **cell_options, **options)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)
        self._to_torch = {}
        for name, _ in super().named_parameters():
            m = _CELL_PATH.match(name)
            if m:
                layer, direction, param = m.groups()
                suffix = "_reverse" if direction == "bwd" else ""
                self._to_torch[name] = f"{param}_l{layer}{suffix}"
        self._from_torch = {v: k for k, v in self._to_torch.items()}
        self.register_state_dict_post_hook(_rename_saved)
        self.register_load_state_dict_pre_hook(_rename_loaded)

    # -- torch.nn's names --------------------------------------------------------------------
    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Parameter]]:
        """Parameters under torch.nn's names (``weight_ih_l0``, ...)."""
        for name, p in super().named_parameters(recurse=recurse,
                                                remove_duplicate=remove_duplicate):
            name = self._to_torch.get(name, name)
            yield (f"{prefix}.{name}" if prefix else name), p

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            internal = self.__dict__.get("_from_torch", {}).get(name)
            if internal is None:
                raise
            return self.get_parameter(internal)

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """Each layer and direction's parameters, in torch.nn's order."""
        return [list(d.cell.parameters()) for d in self.stack._directions()]

    def flatten_parameters(self) -> None:
        """Nothing to do: kept for code written for torch.nn."""

    # -- forward -------------------------------------------------------------------------------
    def _state_shapes(self, batch: int) -> list[tuple[int, int, int]]:
        n = self.num_layers * (2 if self.bidirectional else 1)
        out = self.proj_size or self.hidden_size
        shapes = [(n, batch, out)]
        if self.kind == "LSTM":
            shapes.append((n, batch, self.hidden_size))
        return shapes

    def _check_hx(self, hx: object, batch: int, unbatched: bool) -> tuple[Tensor, ...] | None:
        if hx is None:
            return None
        shapes = self._state_shapes(batch)
        if self.kind == "LSTM":
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2
                    and all(isinstance(h, Tensor) for h in hx)):
                raise TypeError(f"hx must be a tuple (h_0, c_0) for LSTM, got "
                                f"{type(hx).__name__}")
            hx = tuple(hx)
        elif isinstance(hx, Tensor):
            hx = (hx,)
        else:
            raise TypeError(f"hx must be a tensor for {self.kind}, got {type(hx).__name__}")
        if unbatched:
            hx = tuple(h.unsqueeze(1) if h.dim() == 2 else h for h in hx)
        for name, h, shape in zip(("h_0", "c_0"), hx, shapes):
            if tuple(h.shape) != shape:
                want = shape[::2] if unbatched else shape
                got = tuple(h.shape[::2]) if unbatched and h.dim() == 3 else tuple(h.shape)
                raise ValueError(f"hx ({name}) must have shape {want}, got {got}")
        return hx

    def forward(self, input: Tensor | PackedSequence, hx: object = None):
        """As torch.nn: ``input`` (T, B, I), (B, T, I) with batch_first, (T, I) unbatched or
        packed; ``hx`` (L * D, B, H) (a pair ``(h_0, c_0)`` for LSTM).

        Returns ``(output, h_n)`` (``(output, (h_n, c_n))`` for LSTM)."""
        unbatched = isinstance(input, Tensor) and input.dim() == 2
        if unbatched:
            input = input.unsqueeze(1)
        x, lengths, packed = unpack_input(input, self.batch_first and not unbatched)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input must have {self.input_size} features (input_size), "
                             f"got {x.shape[-1]}")
        B = x.shape[1]
        hx = self._check_hx(hx, B, unbatched)
        if self.stack.fused_mode(x.device):  # one call of torch's kernel, as torch.nn
            out, states = self.stack.run_fused(input if packed is not None else x, hx)
        else:
            out, states = self._run_stack(x, lengths, hx)
        if packed is not None and not isinstance(out, PackedSequence):
            out = pack_like(out, packed, lengths)
        elif packed is None:
            if unbatched:
                out = out.squeeze(1)
                states = tuple(s.squeeze(1) for s in states)
            elif self.batch_first:
                out = out.transpose(0, 1)
        return out, (states if self.kind == "LSTM" else states[0])

    def _run_stack(self, x: Tensor, lengths: Tensor | None, hx: tuple[Tensor, ...] | None):
        D = 2 if self.bidirectional else 1
        states = None
        if hx is not None:
            per_dir = [tuple(h[i] for h in hx) for i in range(self.num_layers * D)]
            per_dir = [s if self.kind == "LSTM" else s[0] for s in per_dir]
            states = [tuple(per_dir[l * D:(l + 1) * D]) if D == 2 else per_dir[l]
                      for l in range(self.num_layers)]
        res = self.stack.forward_time_major(x, states, lengths)
        flat = []
        for s in res.state:
            flat += list(s) if D == 2 else [s]
        if self.kind == "LSTM":
            final = (torch.stack([s[0] for s in flat]), torch.stack([s[1] for s in flat]))
        else:
            final = (torch.stack(flat),)
        return res.output, final

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.batch_first:
            s += ", batch_first=True"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s + f", cell={self.cell!r}"


def _rename_saved(module: _RNNBase, state_dict: dict, prefix: str, local_metadata) -> None:
    items = list(state_dict.items())
    state_dict.clear()
    for key, value in items:
        if key.startswith(prefix):
            key = prefix + module._to_torch.get(key[len(prefix):], key[len(prefix):])
        state_dict[key] = value


def _rename_loaded(module: _RNNBase, state_dict: dict, prefix: str, *args) -> None:
    for key in list(state_dict):
        if key.startswith(prefix) and key[len(prefix):] in module._from_torch:
            state_dict[prefix + module._from_torch[key[len(prefix):]]] = state_dict.pop(key)


def _split(options: dict) -> tuple[dict, dict]:
    """Split extra keyword arguments into cell options and layer/stack options."""
    layer_keys = {"engine", "connection", "merge", "variational", "input_dropout",
                  "output_dropout", "dropconnect", "learn_init"}
    layer = {k: v for k, v in options.items() if k in layer_keys}
    cell = {k: v for k, v in options.items() if k not in layer_keys}
    return cell, layer


class RNN(_RNNBase):
    """Drop-in torch.nn.RNN (Elman). Extra keyword arguments: ``cell`` (default "rnn", or
    "rnn-relu" with ``nonlinearity="relu"``; any rnnkit cell name works) and the options of
    :func:`rnnkit.layers.stack`."""

    kind = "RNN"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 *, cell: str | None = None, **options: object) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        cell = cell or ("rnn" if nonlinearity == "tanh" else "rnn-relu")
        cell_opts, layer_opts = _split(options)
        if cell.startswith("lstm") or cell == "peephole":
            self.kind = "LSTM"
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, cell, cell_opts, layer_opts)


class LSTM(_RNNBase):
    """Drop-in torch.nn.LSTM. Extra keyword arguments: ``cell`` ("lstm" or "peephole"),
    ``layer_norm``, ``forget_bias`` and the options of :func:`rnnkit.layers.stack`."""

    kind = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 *, cell: str = "lstm", **options: object) -> None:
        if cell not in ("lstm", "peephole"):
            raise ValueError(f"cell must be 'lstm' or 'peephole' for LSTM, got {cell!r}")
        cell_opts, layer_opts = _split(options)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, cell, cell_opts, layer_opts)


class GRU(_RNNBase):
    """Drop-in torch.nn.GRU. Extra keyword arguments: ``cell`` ("gru", "gru-before" or
    "gru-simple"), ``layer_norm`` and the options of :func:`rnnkit.layers.stack`."""

    kind = "GRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, *, cell: str = "gru",
                 **options: object) -> None:
        cell = canonical_cell(cell)
        if cell not in ("gru", "gru-before", "gru-simple", "rnn", "rnn-relu"):
            raise ValueError(f"cell must be 'gru', 'gru-before' or 'gru-simple' for GRU, "
                             f"got {cell!r}")
        cell_opts, layer_opts = _split(options)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, cell, cell_opts, layer_opts)
