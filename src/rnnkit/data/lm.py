"""Language-model batching: B parallel streams cut into truncated-BPTT windows.

The corpus ``ids`` (N,) is laid out as B streams of L = ceil(N / B) consecutive tokens; stream
b holds ``ids[b*L : (b+1)*L]`` as its *targets*, and its *inputs* are the same tokens shifted
right by one (the token before each target; the very first input is ``start_id``, normally
``<eos>``, as if the corpus followed an end of line). So every token of the corpus is the
target exactly once per epoch, in order within its stream. The last stream(s) may be shorter:
their tail is padded with ``pad_input`` in the inputs and ``IGNORE`` (-100) in the targets,
which the loss skips.

Windows cut the streams along time; the model's hidden state after one window is the initial
state of the next (stateful training, detached between windows). With ``variable=True`` the
window lengths are drawn as in AWD-LSTM (Merity et al. 2017): ``bptt`` with probability 0.95
else ``bptt / 2``, then ``max(min_len, round(N(mean, std)))``, from a seeded generator.

::

    streams = LMStreams.from_ids(ids, batch_size=32, start_id=vocab.eos_id)
    for batch in streams.windows(bptt=100):                  # LMBatch(inputs, targets, tokens)
        loss, state = model.loss(batch.inputs, batch.targets, state)
        state = detach_states(state)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from rnnkit.data.padding import IGNORE_INDEX as IGNORE


class LMBatch(NamedTuple):
    """One truncated-BPTT window.

    Attributes:
        inputs: (B, T) token ids.
        targets: (B, T) the next token of each input, ``IGNORE`` on padding.
        tokens: the number of real (non-padding) targets.
    """

    inputs: Tensor
    targets: Tensor
    tokens: int


@dataclass
class LMStreams:
    """A corpus as B parallel streams (see the module docstring).

    Attributes:
        inputs: (B, L) input ids.
        targets: (B, L) target ids, ``IGNORE`` past the end of the corpus.
        num_tokens: N, the number of tokens in the corpus (= real targets).
    """

    inputs: Tensor
    targets: Tensor
    num_tokens: int

    @classmethod
    def from_ids(cls, ids: Tensor, batch_size: int, start_id: int = 0,
                 pad_input: int = 0) -> LMStreams:
        """Lay out ``ids`` (N,) as ``batch_size`` streams (fewer when N < batch_size)."""
        if ids.dim() != 1:
            raise ValueError(f"ids must be 1-D (N,), got shape {tuple(ids.shape)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        n = ids.numel()
        if n == 0:
            raise ValueError("cannot batch an empty corpus")
        ids = ids.long()
        B = min(batch_size, n)
        L = -(-n // B)
        targets = torch.full((B * L,), IGNORE, dtype=torch.long)
        targets[:n] = ids
        inputs = torch.full((B * L,), pad_input, dtype=torch.long)
        inputs[0] = start_id
        inputs[1:n] = ids[:-1]
        return cls(inputs.view(B, L), targets.view(B, L), n)

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[0]

    @property
    def length(self) -> int:
        """L, the length of each stream."""
        return self.inputs.shape[1]

    def window_lengths(self, bptt: int, *, variable: bool = False, std: float = 5.0,
                       min_len: int = 5, generator: torch.Generator | None = None
                       ) -> list[int]:
        """The lengths of the windows of one epoch; they sum to :attr:`length`."""
        if isinstance(bptt, bool) or not isinstance(bptt, int) or bptt < 1:
            raise ValueError(f"bptt must be a positive int, got {bptt!r}")
        lengths, pos, L = [], 0, self.length
        while pos < L:
            n = bptt
            if variable:
                r = torch.rand((), generator=generator).item()
                mean = bptt if r < 0.95 else bptt / 2
                draw = torch.normal(torch.tensor(float(mean)), torch.tensor(float(std)),
                                    generator=generator).item()
                n = max(min_len, round(draw))
            n = min(n, L - pos)
            lengths.append(n)
            pos += n
        return lengths

    def windows(self, bptt: int, *, variable: bool = False, std: float = 5.0,
                min_len: int = 5, generator: torch.Generator | None = None
                ) -> Iterator[LMBatch]:
        """The windows of one epoch in order (see :meth:`window_lengths`)."""
        pos = 0
        for n in self.window_lengths(bptt, variable=variable, std=std, min_len=min_len,
                                     generator=generator):
            targets = self.targets[:, pos:pos + n]
            yield LMBatch(self.inputs[:, pos:pos + n], targets, int((targets != IGNORE).sum()))
            pos += n

    def num_windows(self, bptt: int) -> int:
        """The number of fixed-length windows in an epoch."""
        return -(-self.length // bptt)
