"""Log-mel filterbank features of speech, from ``torch.stft``, and SpecAugment.

Frames of ``window_ms`` (25 ms) every ``hop_ms`` (10 ms), a periodic Hann window, the power
spectrum over ``n_fft`` points (the window's length rounded up to a power of two), a bank of
``n_mels`` triangular filters equally spaced on the HTK mel scale
``mel(f) = 2595 log10(1 + f / 700)`` from 0 Hz to the Nyquist frequency, then
``log(energy + 1e-6)``. No padding (``center=False``): frame i covers samples
``[i hop, i hop + window)``, so features computed a chunk at a time (streaming, keeping the
samples not yet framed) equal those of the whole file. tests/test_asr.py checks them against
an independent numpy implementation.

Normalisation: per utterance (each mel band to zero mean and unit variance over the
utterance), or ``global`` (the training set's means and deviations, stored in the run: what a
streaming model needs, since an utterance's own statistics are known only at its end).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

LOG_FLOOR = 1e-6
NORMALISATIONS = ("utterance", "global")


@dataclass
class FeatureConfig:
    """How audio becomes features (``config.json``'s ``"model"["features"]``).

    Attributes:
        rate: the sample rate the model was trained at, Hz.
        n_mels: filterbank channels.
        window_ms, hop_ms: frame length and shift.
        normalisation: ``"utterance"`` or ``"global"`` (see the module docstring).
    """

    rate: int = 8000
    n_mels: int = 40
    window_ms: float = 25.0
    hop_ms: float = 10.0
    normalisation: str = "utterance"

    @property
    def window(self) -> int:
        return round(self.rate * self.window_ms / 1000)

    @property
    def hop(self) -> int:
        return round(self.rate * self.hop_ms / 1000)

    @property
    def n_fft(self) -> int:
        return 1 << max(0, math.ceil(math.log2(self.window)))

    def to_dict(self) -> dict:
        return asdict(self)


def hz_to_mel(f: Tensor | float) -> Tensor:
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, rate: int) -> Tensor:
    """(n_mels, n_fft // 2 + 1) float32: triangular filters whose corners are ``n_mels + 2``
    points equally spaced in mel from 0 to ``rate / 2``, on the FFT bins' frequencies."""
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * rate / n_fft
    corners = mel_to_hz(torch.linspace(0.0, float(hz_to_mel(rate / 2)), n_mels + 2,
                                       dtype=torch.float64))
    lo, mid, hi = corners[:-2, None], corners[1:-1, None], corners[2:, None]
    rising = (freqs - lo) / (mid - lo)
    falling = (hi - freqs) / (hi - mid)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


class LogMel:
    """The feature extractor of one :class:`FeatureConfig` (its window and filterbank made
    once)."""

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self.window = torch.hann_window(config.window, periodic=True)
        self.bank = mel_filterbank(config.n_mels, config.n_fft, config.rate)

    def num_frames(self, samples: int) -> int:
        """Frames of ``samples`` samples (0 below one window)."""
        c = self.config
        return 0 if samples < c.window else 1 + (samples - c.window) // c.hop

    def __call__(self, samples: Tensor) -> Tensor:
        """Log-mel energies (frames, n_mels) float32 of mono samples (N,); audio shorter than
        one window gives one frame of it padded with zeros."""
        c = self.config
        x = samples.float()
        if x.numel() < c.window:
            x = torch.nn.functional.pad(x, (0, c.window - x.numel()))
        # torch.stft centres the window in each n_fft-long frame: padding by the difference
        # puts frame i's window on samples [i hop, i hop + window), as the definition says
        left = (c.n_fft - c.window) // 2
        x = torch.nn.functional.pad(x, (left, c.n_fft - c.window - left))
        spec = torch.stft(x, n_fft=c.n_fft, hop_length=c.hop, win_length=c.window,
                          window=self.window, center=False, return_complex=True)
        power = spec.real.square() + spec.imag.square()  # (bins, frames)
        return torch.log(self.bank @ power + LOG_FLOOR).t().contiguous()


def normalise(features: Tensor, mean: Tensor | None = None, std: Tensor | None = None
              ) -> Tensor:
    """Each band to zero mean and unit variance: over the utterance (``mean``/``std`` None),
    or with the given (n_mels,) statistics."""
    if mean is None:
        mean = features.mean(0)
        std = features.std(0, unbiased=False) if features.shape[0] > 1 else None
    if std is None:
        return features - mean
    return (features - mean) / std.clamp_min(1e-5)


def spec_augment(features: Tensor, generator: torch.Generator, *, freq_masks: int = 2,
                 freq_width: int = 6, time_masks: int = 2, time_ratio: float = 0.05
                 ) -> Tensor:
    """SpecAugment (Park et al. 2019) without time warping: ``freq_masks`` bands of up to
    ``freq_width`` channels and ``time_masks`` spans of up to ``time_ratio`` of the frames
    (at least one) set to zero, on normalised features (frames, n_mels); returns a copy."""
    out = features.clone()
    frames, mels = out.shape
    for _ in range(freq_masks):
        width = int(torch.randint(0, freq_width + 1, (1,), generator=generator))
        start = int(torch.randint(0, max(1, mels - width + 1), (1,), generator=generator))
        out[:, start:start + width] = 0.0
    longest = max(1, int(time_ratio * frames))
    for _ in range(time_masks):
        width = int(torch.randint(0, longest + 1, (1,), generator=generator))
        start = int(torch.randint(0, max(1, frames - width + 1), (1,), generator=generator))
        out[start:start + width] = 0.0
    return out


__all__ = ["FeatureConfig", "LogMel", "NORMALISATIONS", "mel_filterbank", "normalise",
           "spec_augment"]
