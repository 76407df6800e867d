"""Shared test set-up: one thread (the machine is shared; tests never time anything)."""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real data sets in ../shared/data, or a skip when they are absent."""
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA} (../shared/data)")
    return DATA
