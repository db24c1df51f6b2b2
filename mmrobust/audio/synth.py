"""Spoken-digit-like audio synthesised offline, deterministically by seed (the embedded default data).

Each class is a short "word" of two or three voiced segments. A segment is a harmonic source at the
speaker's pitch shaped by two class-specific formant resonances (a crude source-filter vowel, as in
Klatt-style synthesis), with a per-class gliding formant in one segment so that classes differ in
time-frequency structure, not just in a single spectrum. Every example draws its own pitch, speaking
rate (segment durations), loudness, onset and background noise, so a classifier has to generalise
across "speakers" instead of memorising waveforms. This is not speech, but it has speech's main nuisance
factors, runs anywhere without downloads, and is hard enough that an untrained model is at chance.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..errors import check_int, check_positive

# (F1, F2) per segment, in Hz, loosely after English vowel formants; index = class.
_FORMANTS = [
    [(270, 2290), (730, 1090)],
    [(300, 870), (640, 1190), (270, 2290)],
    [(390, 1990), (300, 870)],
    [(660, 1720), (270, 2290), (440, 1020)],
    [(730, 1090), (490, 1350)],
    [(520, 1190), (270, 2290), (660, 1720)],
    [(440, 1020), (390, 1990)],
    [(490, 1350), (730, 1090), (300, 870)],
    [(270, 2290), (440, 1020), (640, 1190)],
    [(640, 1190), (390, 1990)],
]
NUM_SYNTH_CLASSES = len(_FORMANTS)


def _segment(t: Tensor, f0: Tensor, f1: float, f2: float, glide: float) -> Tensor:
    """One voiced segment: harmonics of ``f0`` weighted by two resonances (bandwidths ~ 80/120 Hz)."""
    out = torch.zeros_like(t)
    phase = 2 * math.pi * f0 * t
    f2_t = f2 * (1 + glide * t / t[-1].clamp_min(1e-6))
    for k in range(1, 30):
        fk = k * f0
        w = 1.0 / (1 + ((fk - f1) / 80.0) ** 2) + 0.6 / (1 + ((fk - f2_t) / 120.0) ** 2)
        out = out + w * torch.sin(k * phase)
    return out


def synth_digit(label: int, sample_rate: int = 8000, length: int = 8000,
                generator: Optional[torch.Generator] = None) -> Tuple[Tensor, int]:
    """One synthetic utterance of class ``label``: ``(wave (length,), valid_length)``, peak <= 1."""
    if not 0 <= label < NUM_SYNTH_CLASSES:
        raise ValueError(f"label must lie in [0, {NUM_SYNTH_CLASSES - 1}], got {label}")
    g = generator
    u = lambda lo, hi: lo + (hi - lo) * torch.rand((), generator=g).item()  # noqa: E731
    f0 = torch.tensor(u(90, 240))
    rate = u(0.75, 1.3)
    segments = []
    glide_seg = label % len(_FORMANTS[label])
    for i, (f1, f2) in enumerate(_FORMANTS[label]):
        dur = int(sample_rate * 0.12 * rate * u(0.85, 1.15))
        t = torch.arange(dur) / sample_rate
        glide = (0.25 if label % 2 else -0.2) if i == glide_seg else 0.0
        seg = _segment(t, f0 * (1 + 0.05 * (i - 1)), f1 * u(0.93, 1.07), f2 * u(0.93, 1.07), glide)
        env = torch.sin(math.pi * torch.arange(dur) / dur) ** 0.5
        segments.append(seg * env)
    word = torch.cat(segments)
    word = word / word.abs().max().clamp_min(1e-6) * u(0.3, 0.9)
    valid = min(length, int(len(word) + sample_rate * u(0.05, 0.25)))
    wave = torch.zeros(length)
    onset = int(u(0, max(1, valid - len(word))))
    n = min(len(word), length - onset)
    wave[onset:onset + n] = word[:n]
    noise_level = u(0.002, 0.02)
    wave[:valid] += noise_level * torch.randn(valid, generator=g)
    return wave.clamp(-1, 1), valid


def synth_digits(num: int, *, seed: int = 0, sample_rate: int = 8000, length: int = 8000,
                 num_classes: int = NUM_SYNTH_CLASSES) -> Tuple[Tensor, Tensor, Tensor]:
    """``num`` balanced synthetic utterances: ``(waves (num, length), labels (num,), lengths (num,))``."""
    check_int("num", num, 1)
    check_int("length", length, 1)
    check_positive("sample_rate", sample_rate)
    check_int("num_classes", num_classes, 2)
    if num_classes > NUM_SYNTH_CLASSES:
        raise ValueError(f"num_classes must lie in [2, {NUM_SYNTH_CLASSES}], got {num_classes}")
    g = torch.Generator().manual_seed(int(seed))
    labels = torch.arange(num) % num_classes
    labels = labels[torch.randperm(num, generator=g)]
    waves, lengths = torch.zeros(num, length), torch.zeros(num, dtype=torch.long)
    for i, y in enumerate(labels.tolist()):
        waves[i], lengths[i] = synth_digit(y, sample_rate, length, g)
    return waves, labels, lengths
