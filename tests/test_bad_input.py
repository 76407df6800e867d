"""Bad input raises ValueError or TypeError whose message names the argument, what was
expected and what was given."""

from __future__ import annotations

import re

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit.cells import ElmanCell, GRUCell, LSTMCell, make_cell
from rnnkit.layers import Bidirectional, Recurrent, Stacked, stack

B, T, I, H = 3, 4, 2, 5


def _layer(name: str = "lstm", **kw) -> Recurrent:
    return Recurrent(make_cell(name, I, H), **kw)


# -- Recurrent.forward ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(B, I), (B, T, I, 1), (I,)])
def test_wrong_rank(shape) -> None:
    message = f"input must have 3 dimensions (B, T, features), got shape {tuple(shape)}"
    with pytest.raises(ValueError, match=re.escape(message)):
        _layer()(torch.randn(shape))


def test_wrong_rank_time_major_names_the_layout() -> None:
    with pytest.raises(ValueError, match=r"input must have 3 dimensions \(T, B, features\), "
                                         r"got shape \(3, 2\)"):
        _layer(batch_first=False)(torch.randn(3, 2))


def test_wrong_feature_size() -> None:
    with pytest.raises(ValueError, match=r"input must have 2 features \(the cell's input_size\)"
                                         r", got 7"):
        _layer()(torch.randn(B, T, 7))


def test_input_of_wrong_type() -> None:
    with pytest.raises(TypeError, match="input must be a Tensor or a PackedSequence, got list"):
        _layer()([[1.0, 2.0]])


@pytest.mark.parametrize(("lengths", "got"), [
    ([4, 5, 1], "from 1 to 5"), ([0, 2, 3], "from 0 to 3"), ([-1, 4, 4], "from -1 to 4"),
])
def test_lengths_out_of_range(lengths, got) -> None:
    with pytest.raises(ValueError, match=rf"lengths must lie in \[1, 4\] \(the sequence "
                                         rf"length\), got values {got}"):
        _layer()(torch.randn(B, T, I), lengths=torch.tensor(lengths))


@pytest.mark.parametrize("n", [2, 4])
def test_lengths_of_wrong_count(n: int) -> None:
    with pytest.raises(ValueError, match=rf"lengths must have one entry per sequence \(3\), "
                                         rf"got {n}"):
        _layer()(torch.randn(B, T, I), lengths=torch.ones(n, dtype=torch.long))


@pytest.mark.parametrize(("lengths", "got"), [
    (torch.tensor([1.0, 2.0, 3.0]), "1-D torch.float32"),
    (torch.ones(3, 1, dtype=torch.long), "2-D torch.int64"),
    (torch.tensor([True, True, True]), "1-D torch.bool"),
    ("3", "str"),
])
def test_lengths_of_wrong_type(lengths, got) -> None:
    with pytest.raises(TypeError, match=f"lengths must be a 1-D integer tensor, got {got}"):
        _layer()(torch.randn(B, T, I), lengths=lengths)


def test_lengths_with_packed_input() -> None:
    packed = pack_padded_sequence(torch.randn(B, T, I), [4, 2, 3], batch_first=True,
                                  enforce_sorted=False)
    with pytest.raises(ValueError, match="lengths must be None when the input is a "
                                         "PackedSequence"):
        _layer()(packed, lengths=torch.tensor([4, 2, 3]))


@pytest.mark.parametrize(("name", "state", "message"), [
    ("gru", torch.zeros(B, H + 1), r"state must have shape \(3, 5\) for GRUCell, got \(3, 6\)"),
    ("gru", torch.zeros(B + 1, H), r"state must have shape \(3, 5\) for GRUCell, got \(4, 5\)"),
    ("lstm", (torch.zeros(B, H), torch.zeros(B, 2)),
     r"state must have shape \(\(3, 5\), \(3, 5\)\) for LSTMCell, got \(\(3, 5\), \(3, 2\)\)"),
    ("lstm", (torch.zeros(B, H),), r"state must have shape .* for LSTMCell, got \(\(3, 5\),\)"),
])
def test_state_of_wrong_shape(name, state, message) -> None:
    with pytest.raises(ValueError, match=message):
        _layer(name)(torch.randn(B, T, I), state)


@pytest.mark.parametrize(("name", "state", "message"), [
    ("lstm", torch.zeros(B, H), "state must be a tuple of 2 tensors for LSTMCell, got Tensor"),
    ("gru", (torch.zeros(B, H),), "state must be a tensor for GRUCell, got tuple"),
])
def test_state_of_wrong_type(name, state, message) -> None:
    with pytest.raises(TypeError, match=message):
        _layer(name)(torch.randn(B, T, I), state)


def test_cell_forward_checks_its_input() -> None:
    cell = LSTMCell(I, H)
    with pytest.raises(ValueError, match=r"x_t must have shape \(batch, 2\), got \(3, 4\)"):
        cell(torch.randn(B, 4))
    with pytest.raises(ValueError, match=r"state must have shape"):
        cell(torch.randn(B, I), (torch.zeros(B, H), torch.zeros(B, H + 1)))


# -- names, sizes and probabilities ------------------------------------------------------------

def test_unknown_cell_name() -> None:
    pattern = r"cell must be one of 'rnn', .*'gru-simple', .*'qrnn', got 'transformer'"
    with pytest.raises(ValueError, match=pattern):
        make_cell("transformer", I, H)
    with pytest.raises(ValueError, match=pattern):
        stack("transformer", I, H)


def test_unknown_cell_option() -> None:
    with pytest.raises(TypeError, match=r"cell 'gru' \(GRUCell\): .*'peepholes'"):
        make_cell("gru", I, H, peepholes=True)


@pytest.mark.parametrize("build", [
    lambda: _layer(engine="fast"), lambda: stack("gru", I, H, engine="cudnn"),
    lambda: rnnkit.LSTM(I, H, engine="fast"),
])
def test_unknown_engine(build) -> None:
    with pytest.raises(ValueError, match=r"engine must be one of 'auto', 'reference', 'bptt', "
                                         r"'native', 'scan', got '(fast|cudnn)'"):
        build()


@pytest.mark.parametrize(("name", "options"), [("lstm", {"layer_norm": True}),
                                               ("peephole", {}), ("gru-before", {}),
                                               ("gru-simple", {})])
def test_engine_that_does_not_support_the_cell(name, options) -> None:
    with pytest.raises(ValueError, match=r"engine='native' does not support \w+Cell\("):
        Recurrent(make_cell(name, I, H, **options), engine="native")


def test_unknown_connection_and_merge() -> None:
    with pytest.raises(ValueError, match=r"connection must be one of 'none', 'residual', "
                                         r"'dense', 'highway', got 'skip'"):
        stack("lstm", I, H, 2, connection="skip")
    with pytest.raises(ValueError, match=r"connection must be one of .*, got 'skip'"):
        Stacked([_layer()], connection="skip")
    with pytest.raises(ValueError, match=r"merge must be one of 'concat', 'sum', 'mean', "
                                         r"got 'max'"):
        Bidirectional(_layer(), _layer(reverse=True), merge="max")


@pytest.mark.parametrize("name", ["input_dropout", "output_dropout", "dropconnect"])
@pytest.mark.parametrize("p", [1.0, -0.1, 1.5, "0.5", True])
def test_bad_layer_probabilities(name: str, p) -> None:
    with pytest.raises(ValueError, match=rf"{name} must be a number in \[0, 1\), got "
                                         rf"{p!r}"):
        _layer(**{name: p})


@pytest.mark.parametrize("build", [
    lambda: stack("lstm", I, H, 2, dropout=1.0), lambda: Stacked([_layer()], dropout=-0.5),
    lambda: rnnkit.GRU(I, H, dropout=2),
])
def test_bad_dropout(build) -> None:
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\), got -?[\d.]+"):
        build()


@pytest.mark.parametrize(("build", "exc", "message"), [
    (lambda: LSTMCell(0, H), ValueError, "input_size must be a positive int, got 0"),
    (lambda: GRUCell(I, -2), ValueError, "hidden_size must be a positive int, got -2"),
    (lambda: ElmanCell(I, 2.5), TypeError, "hidden_size must be a positive int, got float 2.5"),
    (lambda: make_cell("gru", "2", H), TypeError, "input_size must be a positive int, got str"),
    (lambda: stack("gru", I, H, 0), ValueError, "num_layers must be a positive int, got 0"),
    (lambda: rnnkit.LSTM(I, H, num_layers=0), ValueError,
     "num_layers must be a positive int, got 0"),
    (lambda: LSTMCell(I, H, proj_size=H), ValueError,
     r"proj_size must be an int in \[0, hidden_size=5\), got 5"),
    (lambda: GRUCell(I, H, reset="middle"), ValueError,
     "reset must be one of 'after', 'before', got 'middle'"),
    (lambda: ElmanCell(I, H, nonlinearity="sigmoid"), ValueError,
     "nonlinearity must be one of 'tanh', 'relu', got 'sigmoid'"),
    (lambda: LSTMCell(I, H).init_state(0), ValueError, "batch_size must be a positive int"),
    (lambda: Recurrent(torch.nn.LSTMCell(I, H)), TypeError,
     "cell must be an rnnkit RecurrentCell, got LSTMCell"),
])
def test_bad_sizes_and_options(build, exc, message) -> None:
    with pytest.raises(exc, match=message):
        build()


# -- composition -----------------------------------------------------------------------------

def test_bidirectional_checks_its_layers() -> None:
    with pytest.raises(ValueError, match="bwd must have reverse=True, got reverse=False"):
        Bidirectional(_layer(), _layer())
    with pytest.raises(ValueError, match="fwd must have reverse=False, got reverse=True"):
        Bidirectional(_layer(reverse=True), _layer(reverse=True))
    with pytest.raises(TypeError, match="fwd must be a Recurrent layer, got LSTM"):
        Bidirectional(torch.nn.LSTM(I, H), _layer(reverse=True))
    bi = Bidirectional(_layer(), _layer(reverse=True))
    with pytest.raises(TypeError, match=r"state of a Bidirectional layer must be a pair"):
        bi(torch.randn(B, T, I), (None, None, None))


def test_stacked_checks_sizes_and_states() -> None:
    with pytest.raises(ValueError, match=r"layers\[1\] must read 5 features with "
                                         r"connection='none', got input_size 2"):
        Stacked([_layer(), _layer()])
    with pytest.raises(TypeError, match=r"layers\[0\] must be a Recurrent or Bidirectional "
                                        r"layer, got Linear"):
        Stacked([torch.nn.Linear(2, 2)])
    model = stack("gru", I, H, 2)
    with pytest.raises(ValueError, match=r"states must be a list with one state per layer "
                                         r"\(2\), got 3"):
        model(torch.randn(B, T, I), [None, None, None])


# -- drop-ins ----------------------------------------------------------------------------------

def test_dropin_bad_input() -> None:
    lstm = rnnkit.LSTM(I, H, num_layers=2)
    with pytest.raises(ValueError, match=r"input must have 3 dimensions \(T, B, features\), "
                                         r"got shape \(4, 3, 2, 1\)"):
        lstm(torch.randn(T, B, I, 1))
    with pytest.raises(ValueError, match=r"input must have 2 features \(input_size\), got 3"):
        lstm(torch.randn(T, B, 3))
    with pytest.raises(ValueError, match=r"hx \(h_0\) must have shape \(2, 3, 5\), "
                                         r"got \(1, 3, 5\)"):
        lstm(torch.randn(T, B, I), (torch.zeros(1, B, H), torch.zeros(2, B, H)))
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\) for LSTM, got Tensor"):
        lstm(torch.randn(T, B, I), torch.zeros(2, B, H))
    gru = rnnkit.GRU(I, H)
    with pytest.raises(ValueError, match=r"hx \(h_0\) must have shape \(1, 3, 5\), "
                                         r"got \(1, 2, 5\)"):
        gru(torch.randn(T, B, I), torch.zeros(1, 2, H))
    with pytest.raises(TypeError, match="hx must be a tensor for GRU, got tuple"):
        gru(torch.randn(T, B, I), (torch.zeros(1, B, H),))
    with pytest.raises(ValueError, match=r"hx \(h_0\) must have shape \(1, 5\), got \(2, 5\)"):
        gru(torch.randn(T, I), torch.zeros(2, H))
    with pytest.raises(ValueError, match="cell must be 'lstm' or 'peephole' for LSTM, "
                                         "got 'gru'"):
        rnnkit.LSTM(I, H, cell="gru")
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'gelu'"):
        rnnkit.RNN(I, H, nonlinearity="gelu")
