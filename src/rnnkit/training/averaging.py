"""An exponential moving average of a model's weights (Polyak averaging), evaluated and kept
in place of the last weights: ``rnnkit train TASK --ema DECAY``.

After each optimizer step ``n`` (counting from 0)::

    d_n = min(DECAY, (1 + n) / (10 + n))        w_avg <- d_n * w_avg + (1 - d_n) * w

the warm-up of ``d_n`` (as timm's ``ModelEmaV3`` and TensorFlow's
``ExponentialMovingAverage(num_updates=...)``) keeps the random initial weights from
dominating the average of a short run. Buffers are not averaged (the model's own are used).
The trainer evaluates the averaged weights, saves them as the best, and keeps them in
``last/averaged.safetensors`` so that a resumed run continues the same average.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class WeightAverage:
    """The moving average of ``model``'s floating-point parameters.

    Args:
        model: the model trained (its parameters' names key the average).
        decay: DECAY in (0, 1): the largest weight of the old average per step; 0.999 averages
            over about the last 1,000 steps.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"ema must be in (0, 1) (0: off), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters()
                       if p.is_floating_point()}

    def rate(self) -> float:
        """d_n of the next update."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current parameters into the average."""
        weight = 1.0 - self.rate()
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach(), weight)
        self.updates += 1

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Within the block ``model`` holds the averaged weights; its own come back after."""
        params = {n: p for n, p in model.named_parameters() if n in self.shadow}
        own = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(own[n])

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, tensors: Mapping[str, Tensor], updates: int, where: str) -> None:
        """Restore an average saved by :meth:`state_dict` after ``updates`` updates; a missing
        or misshapen tensor is an error naming ``where``."""
        for name, t in self.shadow.items():
            saved = tensors.get(name)
            if saved is None or saved.shape != t.shape:
                raise ValueError(f"{where}: the averaged weight {name!r} is "
                                 f"{'missing' if saved is None else tuple(saved.shape)}, "
                                 f"the model's is {tuple(t.shape)}")
            t.copy_(saved)
        self.updates = int(updates)


__all__ = ["WeightAverage"]
