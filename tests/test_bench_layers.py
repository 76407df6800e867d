"""benchmarks/bench_layers.py: the table and target logic on a fake timer (nothing is timed)."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_layers.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_layers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_layers"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_candidates_and_ratio_table(bench) -> None:
    shape = (3, 2, 4, 4)
    candidates = bench.build_candidates(shape, ["lstm", "gru-ln", "gru-simple"],
                                        ["reference", "bptt", "native"])
    labels = [c.label for c in candidates]
    assert labels[:3] == ["torch.nn.LSTM", "torch.nn.GRU", "torch.nn.RNN"]
    assert "lstm [native]" in labels and "gru-ln [bptt]" in labels
    assert "gru-ln [native]" not in labels and "gru-simple [native]" not in labels
    assert labels[-5:] == ["rnnkit.LSTM [native]", "rnnkit.GRU [native]",
                           "GEMMs only, 2 block(s)", "GEMMs only, 3 block(s)",
                           "GEMMs only, 4 block(s)"]  # gru-simple 2, gru 3, lstm 4
    # a fake clock: every timed measurement lasts one tick
    ticks = itertools.count()
    medians = bench.measure(candidates, shape, repeats=3, warmup=1, min_time=0.0,
                            timer=lambda: float(next(ticks)))
    assert set(medians) == set(labels)
    assert all(m["fb"] == 1.0 and m["f"] == 1.0 for m in medians.values())
    r = bench.ratios({"torch.nn.LSTM": {"fb": 2.0, "f": 1.0}, "x": {"fb": 3.0, "f": 4.0}})
    assert r == {"torch.nn.LSTM": {"fb": 1.0, "f": 1.0}, "x": {"fb": 1.5, "f": 4.0}}
    table = bench.format_table(shape, medians, bench.ratios(medians),
                               {"lstm": {"bptt": 2048, "reference": 4096}}, markdown=True)
    assert "| lstm [bptt] | 1000.00 | 1.00 | 1.00 | 0 | 1000.00 | 1.00 | 2.0 |" in table
    # the GEMM GFLOP/s column: the layer's matrix work over its time
    assert bench.gemm_flops((35, 20, 650, 650), 4) == 6 * 35 * 20 * 4 * 650 * 1300


def test_targets(bench) -> None:
    ratios = {"torch.nn.LSTM": {"fb": 1.0}, "torch.nn.GRU": {"fb": 2.0},
              "lstm [native]": {"fb": 1.04}, "gru [native]": {"fb": 2.2},
              "lstm [bptt]": {"fb": 1.4}, "lstm-ln [bptt]": {"fb": 2.1},
              "gru [bptt]": {"fb": 1.8}, "GEMMs only, 4 block(s)": {"fb": 1.0}}
    results = dict(bench.check_targets((64, 64, 512, 512), ratios,
                                       {"lstm": {"bptt": 10, "reference": 9}}))
    assert results == {
        "lstm [native] within 1.05x of torch.nn.LSTM: 1.04x": True,
        "gru [native] within 1.05x of torch.nn.GRU: 1.10x": False,
        "lstm [bptt] within 1.2x of torch.nn.LSTM: 1.40x": False,
        "gru [bptt] within 1.0x of torch.nn.LSTM: 1.80x": False,
        "lstm-ln [bptt] within 1.5x of torch.nn.LSTM: 2.10x": False,
        "gru [bptt] faster than torch.nn.GRU: 0.90x": True,
        "lstm [bptt] within 1.5x of its own GEMMs: 1.40x": True,
        "lstm-ln [bptt] within 1.5x of its own GEMMs: 2.10x": False,
        "lstm [bptt] peak memory <= reference: 0.0 MiB vs 0.0 MiB": False,
    }
    small = dict(bench.check_targets((256, 1, 128, 128), ratios, None))
    assert small["lstm-ln [bptt] within 2.5x of torch.nn.LSTM: 2.10x"] is True
    assert not any("within 1.5x" in k for k in small)


def test_the_gemm_floor_multiplies_what_the_cell_multiplies(bench) -> None:
    """The floor's gradients have the shapes of the cell's weights, and its forward does
    T + 1 products: one over all steps, one per step."""
    import torch
    floor = bench.GemmFloor(4, 5, 3)
    x = torch.randn(6, 2, 4, requires_grad=True)
    out, _ = floor(x)
    assert out.shape == (6, 2, 5)
    out.backward(torch.ones_like(out))
    assert x.grad.shape == x.shape and floor.w_ih.grad.shape == (15, 4)
    assert floor.w_hh.grad.shape == (15, 5)
    assert [bench.gate_blocks(c) for c in ("rnn", "lstm", "peephole", "gru", "gru-simple")] == \
        [1, 4, 4, 3, 2]
