"""The documentation's worked examples run, and the README's cell table is the registry's."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from rnnkit.cells import cell_table

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def test_adding_a_cell_runs() -> None:
    torch.set_num_threads(1)
    blocks = _python_blocks(ROOT / "docs" / "adding-a-cell.md")
    assert len(blocks) == 2
    namespace: dict = {"__name__": "adding_a_cell"}
    for block in blocks:
        exec(compile(block, "docs/adding-a-cell.md", "exec"), namespace)
    from rnnkit.engines.kernels import base

    assert namespace["LeakyRNNCell"] in base._KERNELS
    del base._KERNELS[namespace["LeakyRNNCell"]]


def test_readme_cell_table_is_the_registry() -> None:
    assert cell_table() in (ROOT / "README.md").read_text(encoding="utf-8")
