"""Psychoacoustic budget (Qin et al. 2019): the masking threshold against an independent NumPy computation
(frame by frame, masker by masker), a tone masking its neighbourhood but not far frequencies, and every
projected or attacked perturbation under the threshold when measured independently (fp32, fp64, batches,
channels)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mmrobust.attacks import PGD
from mmrobust.threats import PsychoacousticBall, masking_report, masking_threshold

SR = 8000
N_FFT, HOP = 256, 64  # short windows keep the tests fast


def np_frames_psd(wave: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """(frames, bins) PSD in dB, before normalisation: centred frames, zero padding, periodic Hann."""
    padded = np.pad(wave, n_fft // 2)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = [padded[m * hop:m * hop + n_fft] * window for m in range(1 + len(wave) // hop)]
    spec = np.fft.rfft(np.stack(frames), axis=1)
    return 10 * np.log10(8 / 3 * np.abs(spec / n_fft) ** 2 + 1e-20)


def np_threshold(psd_frame: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Global masking threshold (dB) of one normalised PSD frame, written as a loop over maskers."""
    bark = 13 * np.arctan(0.00076 * freqs) + 3.5 * np.arctan((freqs / 7500) ** 2)
    with np.errstate(divide="ignore"):
        khz = np.maximum(freqs / 1000, 1e-6)
        ath = 3.64 * khz ** -0.8 - 6.5 * np.exp(-0.6 * (khz - 3.3) ** 2) + 1e-3 * khz ** 4 - 12
    ath = np.where(bark > 1, ath, -np.inf)
    maskers = []
    for k in range(1, len(psd_frame) - 1):
        if psd_frame[k] > psd_frame[k - 1] and psd_frame[k] > psd_frame[k + 1]:
            p = 10 * np.log10(sum(10 ** (psd_frame[j] / 10) for j in (k - 1, k, k + 1)))
            if p > ath[k]:
                maskers.append((k, p))
    kept = [(k, p) for i, (k, p) in enumerate(maskers)
            if not any(abs(bark[k2] - bark[k]) < 0.5 and (p2 > p or (p2 == p and i2 < i))
                       for i2, (k2, p2) in enumerate(maskers) if i2 != i)]
    theta = np.where(np.isfinite(ath), 10 ** (ath / 10), 0.0)
    for k, p in kept:
        dz = bark - bark[k]
        slope = np.where(dz <= 0, 27.0, -27 + 0.37 * max(p - 40, 0))
        theta = theta + 10 ** ((p - 6.025 - 0.275 * bark[k] + slope * dz) / 10)
    floor = 10 ** (ath[np.isfinite(ath)] / 10).min()
    return 10 * np.log10(np.maximum(theta, floor))


def speech_like(batch: int, length: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Harmonic 'vowels' with a moving pitch, silence at both ends, a little noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float64) / SR
    out = []
    for _ in range(batch):
        f0 = 100 + 100 * float(torch.rand((), generator=g))
        env = torch.sin(math.pi * (t / t[-1]).clamp(0.15, 0.85).sub(0.15).div(0.7)) ** 2
        wave = sum(torch.sin(2 * math.pi * h * f0 * (1 + 0.1 * t) * t) / h for h in range(1, 12))
        out.append(0.3 * env * wave / 3 + 1e-3 * torch.randn(length, generator=g, dtype=torch.float64))
    return torch.stack(out).to(dtype)


def test_threshold_matches_an_independent_numpy_computation():
    x = speech_like(2, 1200, seed=0, dtype=torch.float64)
    mt = masking_threshold(x, SR, n_fft=N_FFT, hop_length=HOP)
    freqs = np.linspace(0, SR / 2, N_FFT // 2 + 1)
    for i in range(2):
        psd = np_frames_psd(x[i].numpy(), N_FFT, HOP)
        psd = 96 - psd.max() + psd
        assert np.allclose(mt.psd_db[i].T.numpy(), psd, atol=1e-6)
        want = np.stack([np_threshold(frame, freqs) for frame in psd])
        assert np.allclose(mt.theta_db[i].T.numpy(), want, atol=1e-6)


def test_a_tone_masks_nearby_frequencies_but_not_far_ones():
    t = torch.arange(2400) / SR
    fade = torch.sin(math.pi * torch.arange(2400) / 2400) ** 2  # no clicks: an onset is broadband
    x = (0.5 * fade * torch.sin(2 * math.pi * 1000 * t))[None]
    quiet = lambda f, db: (0.5 * 10 ** (db / 20) * fade * torch.sin(2 * math.pi * f * t))[None]  # noqa: E731
    near = masking_report(quiet(1100, -20), x, SR)
    far = masking_report(quiet(3000, -20), x, SR)
    assert int(near["frames_above"]) == 0 and float(near["excess_db"]) < 0
    assert int(far["frames_above"]) > 0 and float(far["excess_db"]) > 10
    mt = masking_threshold(x, SR)
    k = lambda f: round(f / (SR / 2) * (mt.bound.shape[1] - 1))  # noqa: E731
    mid = mt.theta_db.shape[2] // 2
    # the threshold peaks at the masker, a few dB under it, and falls off on both sides (steeper below)
    assert mt.psd_db[0, k(1000), mid] - 12 < mt.theta_db[0, k(1000), mid] < mt.psd_db[0, k(1000), mid]
    assert mt.theta_db[0, k(1000), mid] > mt.theta_db[0, k(1200), mid] > mt.theta_db[0, k(2000), mid]
    assert mt.theta_db[0, k(800), mid] < mt.theta_db[0, k(1200), mid]


def np_max_excess_db(delta: torch.Tensor, x: torch.Tensor, n_fft: int, hop: int) -> np.ndarray:
    """Per row of (rows, T): largest p_delta - theta_x (dB), computed with NumPy only."""
    freqs = np.linspace(0, SR / 2, n_fft // 2 + 1)
    out = []
    for xi, di in zip(x.double().numpy(), delta.double().numpy()):
        px = np_frames_psd(xi, n_fft, hop)
        offset = 96 - px.max()
        theta = np.stack([np_threshold(frame, freqs) for frame in px + offset])
        out.append((np_frames_psd(di, n_fft, hop) + offset - theta).max())
    return np.array(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("margin", [0.0, -6.0])
def test_projection_lands_under_the_threshold_checked_independently(dtype, margin):
    x = speech_like(3, 1000, seed=1, dtype=dtype)
    x[2, 700:] = 0  # a padded example
    threat = PsychoacousticBall(margin, sample_rate=SR, n_fft=N_FFT)
    v = 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    p = threat.project(v, x)
    assert p.dtype == dtype and p.shape == x.shape
    assert bool(threat.contains(p, x).all()) and bool(((x + p).abs() <= 1).all())
    assert (np_max_excess_db(p, x, N_FFT, N_FFT // 4) <= margin + 1e-3).all()
    assert float(p.abs().max()) > 0  # not the trivial point
    assert torch.allclose(threat.project(p, x), p, rtol=1e-4, atol=1e-9)  # already inside: kept
    sizes = threat.extra_sizes(p, x)
    assert set(sizes) == {"snr_db", "db_x", "frames_above", "excess_db"}
    assert bool((sizes["frames_above"] == 0).all()) and bool((sizes["excess_db"] <= margin + 1e-3).all())


def test_budget_scales_like_a_level_in_db():
    x = speech_like(2, 800, seed=2)
    threat = PsychoacousticBall(0.0, sample_rate=SR, n_fft=N_FFT)
    assert torch.allclose(threat.scaled(0.5).radius(x), 0.5 * threat.radius(x))
    assert threat.scaled(0.5).margin_db == pytest.approx(-20 * math.log10(2))
    assert threat.with_level(-10).margin_db == -10
    d = threat.random_init(x, torch.Generator().manual_seed(0))
    assert bool(threat.contains(d, x).all())
    with pytest.raises(ValueError, match="hop_length"):
        PsychoacousticBall(sample_rate=SR, n_fft=256, hop_length=128)
    with pytest.raises(AttributeError, match="margin_db"):
        threat.eps


class TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        import torchaudio

        self.mel = torchaudio.transforms.MelSpectrogram(SR, n_fft=256, hop_length=64, n_mels=16)
        self.fc = nn.Linear(16, 3)

    def forward(self, wave):
        return self.fc(torch.log(self.mel(wave) + 1e-6).mean(-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pgd_in_the_psychoacoustic_ball_stays_under_the_threshold(dtype):
    torch.manual_seed(0)
    model = TinyClassifier().to(dtype).eval()
    x = speech_like(4, 800, seed=3, dtype=dtype)
    x[(1, 3), ...] = x[(1, 3), ...].flip(-1)
    y = torch.tensor([0, 1, 2, 0])
    lengths = torch.tensor([800, 800, 600, 700])
    x[2, 600:] = 0
    x[3, 700:] = 0
    before = [t.clone() for t in (x, y, lengths)]
    threat = PsychoacousticBall(sample_rate=SR, n_fft=N_FFT)
    from mmrobust.adapters import WaveformAdapter

    res = PGD(threat, steps=5, seed=0, adapter=WaveformAdapter(sample_rate=SR))(model, (x, y, lengths))
    adv = res.inputs["audio"]
    delta = adv - x
    assert adv.dtype == dtype
    assert all(torch.equal(a, b) for a, b in zip(before, (x, y, lengths)))
    assert bool((delta[2, 600:] == 0).all()) and bool((delta[3, 700:] == 0).all())  # padding untouched
    assert (np_max_excess_db(delta, x, N_FFT, N_FFT // 4) <= 1e-3).all()
    assert bool((res.extras["audio/frames_above"] == 0).all())
    assert float(delta.abs().amax()) > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_masking_penalty_attack_hides_the_first_stage_perturbation(dtype):
    from mmrobust.adapters import WaveformAdapter
    from mmrobust.attacks import MaskingPenalty, MaskingPenaltyAttack
    from mmrobust.threats import SNRBall

    torch.manual_seed(0)
    model = TinyClassifier().to(dtype).eval()
    x = speech_like(4, 800, seed=3, dtype=dtype)
    x[3, 650:] = 0
    lengths = torch.tensor([800, 800, 800, 650])
    with torch.no_grad():
        y = model(x).argmax(1)
    before = [t.clone() for t in (x, y, lengths)]
    adapter = WaveformAdapter(sample_rate=SR)
    first = PGD(SNRBall(20.0), steps=10, seed=0, adapter=adapter)
    masking = MaskingPenalty(SR, n_fft=N_FFT, up_every=5, down_every=5)
    attack = MaskingPenaltyAttack(SNRBall(20.0), masking, steps=40, step_size=0.05, start=first, adapter=adapter)
    res = attack(model, (x, y, lengths))
    start = first.private_copy().reseed()(model, (x, y, lengths))
    assert all(torch.equal(a, b) for a, b in zip(before, (x, y, lengths)))
    assert bool(start.success.all()) and bool(res.success.all())
    delta, delta0 = res.inputs["audio"] - x, start.inputs["audio"] - x
    assert delta.dtype == dtype and bool((delta[3, 650:] == 0).all())
    assert bool((res.extras["audio/snr_db"] >= 20.0 - 1e-3).all())
    thr = masking_threshold(x, SR, n_fft=N_FFT)
    pen, pen0 = thr.penalty(delta), thr.penalty(delta0)
    assert bool((pen <= pen0 * (1 + 1e-6)).all()) and bool((pen < 0.5 * pen0).any())
    report = masking_report(delta, x, SR, n_fft=N_FFT)
    assert torch.equal(res.extras["audio/frames_above"], report["frames_above"])
    assert torch.allclose(res.extras["audio/excess_db"], report["excess_db"])
