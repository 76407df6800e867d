"""Shared test set-up: one thread (the machine is shared; tests never time anything), and
every float32 product on oneDNN (``RNNKIT_GEMM``; left to the environment when set): the GEMM
layer's automatic choice times both backends, which tests must not, and oneDNN is the choice
this project's machines make (tests/test_gemm.py runs both backends)."""

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("RNNKIT_GEMM", "onednn")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real data sets in ../shared/data, or a skip when they are absent."""
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA} (../shared/data)")
    return DATA
