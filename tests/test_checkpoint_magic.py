"""A safetensors file whose header length starts with byte 0x80 is not taken for a pickle."""

import torch

from rnnkit.training.checkpoint import load_tensors, save_tensors


def test_safetensors_with_0x80_first_byte_loads(tmp_path):
    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    path = tmp_path / "model.safetensors"
    for pad in range(300):  # the header (with its checksum) grows with the metadata
        save_tensors(path, tensors, {"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        raise AssertionError("no padding gave a header length with first byte 0x80")
    assert torch.equal(load_tensors(path)["w"], tensors["w"])
