"""Random, differentiable waveform transforms (for EOT and for train-time augmentation).

Every transform is an ``nn.Module`` whose ``forward(x, generator=None)`` draws its randomness per example
from ``generator`` (so a seeded generator reproduces the draw) and is differentiable in ``x``. They act
on the last dimension, so they also apply to images (shift along width, additive noise) and to
``(B, T)`` or ``(B, C, T)`` waveforms.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..errors import check_int, check_positive
from ..utils import rand, randn


def _range(name: str, value) -> Tuple[float, float]:
    lo, hi = (value, value) if isinstance(value, (int, float)) else tuple(value)
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"{name} must be a finite number or a (low, high) pair with low <= high, got {value!r}")
    return lo, hi


def _uniform(lo: float, hi: float, n: int, generator, like: Tensor) -> Tensor:
    return lo + (hi - lo) * rand((n,), generator, like)


def _per_example(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


class RandomTimeShift(nn.Module):
    """Delay (or advance) every example by a random integer number of samples in ``[-max_shift, max_shift]``,
    filling with zeros (``circular=False``) or wrapping around (``circular=True``).
    Models the unknown alignment of a played-back signal (Athalye et al. 2018, Sec. 3; Qin et al. 2019).
    """

    def __init__(self, max_shift: int, circular: bool = False):
        super().__init__()
        self.max_shift = check_int("max_shift", max_shift, 0)
        self.circular = bool(circular)

    def forward(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        n, t = x.shape[0], x.shape[-1]
        shifts = (rand((n,), generator, x.float()) * (2 * self.max_shift + 1)).floor().long() - self.max_shift
        idx = torch.arange(t, device=x.device)[None, :] - shifts.to(x.device)[:, None]
        if self.circular:
            idx = idx % t
            valid = torch.ones_like(idx, dtype=torch.bool)
        else:
            valid = (idx >= 0) & (idx < t)
            idx = idx.clamp(0, t - 1)
        shape = (n,) + (1,) * (x.dim() - 2) + (t,)
        idx = idx.reshape(shape).expand_as(x)
        return torch.where(valid.reshape(shape), x.gather(-1, idx), torch.zeros((), dtype=x.dtype, device=x.device))


class AddNoise(nn.Module):
    """Additive white Gaussian noise at a random SNR in ``snr_db`` (a number or a ``(low, high)`` range).

    .. math:: x + n,\\quad n \\sim \\mathcal{N}(0, \\sigma^2 I),\\ \\sigma = \\mathrm{rms}(x)\\,10^{-\\mathrm{SNR}/20}

    The noise scale is computed from the (detached) signal so gradients flow through ``x`` only.
    """

    def __init__(self, snr_db=(20.0, 40.0)):
        super().__init__()
        self.snr_db = _range("snr_db", snr_db)

    def forward(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        n = x.shape[0]
        snr = _uniform(*self.snr_db, n, generator, x)
        rms = x.detach().reshape(n, -1).pow(2).mean(1).sqrt()
        sigma = rms * torch.pow(10.0, -snr / 20)
        return x + _per_example(sigma, x) * randn(x.shape, generator, x)


class RandomGain(nn.Module):
    """Multiply each example by a random gain in ``gain_db`` decibels (clipped to ``[-1, 1]`` if ``clip``)."""

    def __init__(self, gain_db=(-6.0, 6.0), clip: bool = True):
        super().__init__()
        self.gain_db = _range("gain_db", gain_db)
        self.clip = bool(clip)

    def forward(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        g = torch.pow(10.0, _uniform(*self.gain_db, x.shape[0], generator, x) / 20)
        y = x * _per_example(g, x)
        return y.clamp(-1, 1) if self.clip else y


def synthetic_rir(rt60: Tensor, sample_rate: int, length: int, generator: Optional[torch.Generator] = None,
                  direct_to_reverb_db: Optional[Tensor] = None) -> Tensor:
    """Synthetic room impulse responses ``(n, length)``: a unit direct path followed by exponentially
    decaying Gaussian noise (the statistical late-reverberation model of Schroeder / Polack),

    .. math:: h(t) = \\delta(t) + a\\, n(t)\\, e^{-3\\ln(10)\\, t / T_{60}},\\quad n \\sim \\mathcal{N}(0, 1)

    so the energy falls by 60 dB after ``T60`` seconds; ``a`` sets the direct-to-reverberant ratio.
    Each row is normalised to unit L2 norm so reverberation does not change loudness much.
    """
    n = rt60.shape[0]
    t = torch.arange(length, device=rt60.device, dtype=rt60.dtype) / sample_rate
    decay = torch.exp(-3 * math.log(10) * t[None, :] / rt60[:, None].clamp_min(1e-3))
    tail = randn((n, length), generator, rt60) * decay
    tail[:, 0] = 0
    tail = tail / tail.norm(dim=1, keepdim=True).clamp_min(1e-12)
    drr = torch.zeros(n, device=rt60.device, dtype=rt60.dtype) if direct_to_reverb_db is None else direct_to_reverb_db
    h = tail * torch.pow(10.0, -drr / 20)[:, None]
    h[:, 0] = 1.0
    return h / h.norm(dim=1, keepdim=True)


class RandomReverb(nn.Module):
    """Convolve each example with a freshly generated synthetic room impulse response
    (:func:`synthetic_rir`; ``rt60`` seconds and direct-to-reverberant ratio ``drr_db`` drawn uniformly),
    via ``torchaudio.functional.fftconvolve``, keeping the first ``T`` samples.
    Simulates playback in a room (over-the-air attacks: Yakura & Sakuma 2019, Qin et al. 2019).
    """

    def __init__(self, sample_rate: int = 16000, rt60=(0.1, 0.5), drr_db=(0.0, 10.0), rir_seconds: float = 0.25):
        super().__init__()
        self.sample_rate = int(check_positive("sample_rate", sample_rate))
        self.rt60 = _range("rt60", rt60)
        if self.rt60[0] <= 0:
            raise ValueError(f"rt60 must be > 0 seconds, got {rt60!r}")
        self.drr_db = _range("drr_db", drr_db)
        self.rir_length = max(1, int(check_positive("rir_seconds", rir_seconds) * self.sample_rate))

    def forward(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        import torchaudio.functional as AF

        n = x.shape[0]
        rt60 = _uniform(*self.rt60, n, generator, x)
        drr = _uniform(*self.drr_db, n, generator, x)
        h = synthetic_rir(rt60, self.sample_rate, min(self.rir_length, x.shape[-1]), generator, drr)
        h = h.reshape(n, *([1] * (x.dim() - 2)), h.shape[-1])
        return AF.fftconvolve(x, h)[..., :x.shape[-1]]


def speed_perturb(x: Tensor, factors: Tensor, resolution: int = 20) -> Tensor:
    """Resample example ``i`` of ``x`` by ``factors[i]`` (each a multiple of ``1/resolution``) and crop or
    zero-pad it to the input length: the speed perturbation of :class:`RandomSpeed`. Examples sharing a
    factor go through one ``torchaudio.functional.resample`` call (windowed sinc, differentiable)."""
    import torchaudio.functional as AF

    t = x.shape[-1]
    out = torch.zeros_like(x)
    steps = (factors * resolution).round().long()
    for step in steps.unique().tolist():
        idx = (steps == step).nonzero().flatten().to(x.device)
        y = x[idx] if step == resolution else AF.resample(x[idx], int(step), resolution)
        m = min(t, y.shape[-1])
        out[idx, ..., :m] = y[..., :m]
    return out


class RandomSpeed(nn.Module):
    """Speed perturbation (Ko et al. 2015, "Audio Augmentation for Speech Recognition", Interspeech, Sec. 3):
    resample each example by a factor ``f`` and play it at the original rate, so it lasts ``1/f`` as long and
    every frequency (pitch and formants alike) moves by ``f`` -- a cheap stand-in for other speakers'
    voices. The paper uses ``f`` in {0.9, 1.0, 1.1}.

    ``f`` is drawn uniformly from ``factors`` (a ``(low, high)`` range) and rounded to a multiple of
    ``1/resolution`` (see :func:`speed_perturb`); the result keeps the input length (cropped or zero-padded).
    """

    def __init__(self, factors=(0.9, 1.1), resolution: int = 20):
        super().__init__()
        self.factors = _range("factors", factors)
        if self.factors[0] * resolution < 0.5:
            raise ValueError(f"factors must be > 0 (speed ratios; 1 = unchanged, e.g. (0.9, 1.1)), got {factors!r}")
        self.resolution = check_int("resolution", resolution, 1)

    def draw(self, n: int, generator: Optional[torch.Generator], like: Tensor) -> Tensor:
        """``n`` factors, multiples of ``1/resolution`` in ``factors``."""
        lo, hi = self.factors
        steps = _uniform(lo * self.resolution, hi * self.resolution, n, generator, like.float()).round()
        return steps.clamp(math.ceil(lo * self.resolution - 1e-9), math.floor(hi * self.resolution + 1e-9)) / self.resolution

    def forward(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return speed_perturb(x, self.draw(x.shape[0], generator, x), self.resolution)

