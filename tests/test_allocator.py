"""rnnkit.allocator: glibc's malloc keeps freed memory for the next step."""

from __future__ import annotations

import ctypes
import platform

import pytest
import torch

from rnnkit import allocator
from rnnkit.cli import main

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="the malloc settings apply to glibc only")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]


def _mapped_bytes() -> int:
    """Bytes malloc holds in blocks mapped on their own (glibc's mallinfo2().hblkhd)."""
    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("this glibc has no mallinfo2 (older than 2.33)")
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2().hblkhd


@glibc
def test_large_tensors_come_from_the_heap_after_keep_freed_memory(monkeypatch):
    monkeypatch.delenv(allocator.ENV, raising=False)
    assert allocator.keep_freed_memory()
    assert allocator.applied() == allocator.TRIM_THRESHOLD
    before = _mapped_bytes()
    x = torch.empty(64 << 20, dtype=torch.uint8)  # twice glibc's largest mmap threshold
    x.fill_(1)
    assert _mapped_bytes() - before < 64 << 20  # not a mapping of its own
    del x


def test_system_setting_and_bad_values(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "system")
    assert not allocator.keep_freed_memory()
    monkeypatch.setenv(allocator.ENV, "never")
    with pytest.raises(ValueError, match="RNNKIT_MALLOC='never'"):
        allocator.keep_freed_memory()
    monkeypatch.delenv(allocator.ENV)
    with pytest.raises(ValueError, match="trim_threshold"):
        allocator.keep_freed_memory(-1)


def test_the_command_names_a_bad_setting(monkeypatch, capsys):
    monkeypatch.setenv(allocator.ENV, "never")
    assert main(["train", "lm", "--help"]) == 2
    assert "RNNKIT_MALLOC='never'" in capsys.readouterr().err
