"""KeywordCNN and its CepstralFeatures: gain invariance, CMVN over active frames, silent frames zeroed,
SpecAugment only in training, finite input gradients for attacks."""

from __future__ import annotations

import math

import pytest
import torch

from mmrobust.audio import CepstralFeatures, KeywordCNN, spec_augment


def _utterance(n=3, t=8000, sr=8000):
    g = torch.Generator().manual_seed(0)
    time = torch.arange(t) / sr
    f0 = 100 + 200 * torch.rand(n, 1, generator=g)
    wave = 0.3 * torch.sin(2 * math.pi * f0 * time) * torch.sin(2 * math.pi * 3 * f0 * time)
    wave[:, 5000:] = 0  # trailing padding
    return wave + 1e-4 * torch.randn(n, t, generator=g) * (torch.arange(t) < 5000)


@pytest.mark.parametrize("n_mfcc", [None, 20])
def test_features_are_gain_invariant_normalised_and_zero_when_silent(n_mfcc):
    feats = CepstralFeatures(n_mfcc=n_mfcc)
    x = _utterance()
    z = feats(x)
    assert z.shape[:2] == (3, 40 if n_mfcc is None else 20)
    assert torch.allclose(feats(0.1 * x), z, atol=1e-2)  # relative dB: gain does not matter (up to the floor)
    active = z.abs().amax(1) > 0
    assert not active[:, -10:].any() and active[:, :50].all()  # padding frames are zeroed, speech kept
    mean = (z * active[:, None]).sum(-1) / active.sum(-1, keepdim=True)
    assert mean.abs().max() < 1e-4  # CMVN: zero mean over the active frames


def test_spec_augment_masks_and_model_modes():
    torch.manual_seed(0)
    z = torch.ones(8, 20, 50)
    m = spec_augment(z, 5, 10)
    assert (m == 0).any() and ((m == 0) | (m == 1)).all() and torch.equal(z, torch.ones(8, 20, 50))
    model = KeywordCNN(10)
    x = _utterance()
    model.eval()
    assert torch.equal(model(x), model(x))  # eval: no masks, no dropout
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, model(x))


@pytest.mark.parametrize("deltas", [True, False])
def test_input_gradient_is_finite_for_attacks(deltas):
    model = KeywordCNN(10, deltas=deltas).eval()
    assert model.body[0].in_channels == (60 if deltas else 20)
    x = _utterance().requires_grad_(True)
    model(x).logsumexp(1).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[:, :5000].abs().sum() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_mfcc must be <= n_mels=40"):
        CepstralFeatures(n_mfcc=41)
    with pytest.raises(ValueError, match="dropout"):
        KeywordCNN(dropout=1.0)


def test_frames_are_25_ms_with_a_10_ms_hop_at_any_sample_rate():
    eight, sixteen = CepstralFeatures(8000).melspec, CepstralFeatures(16000).melspec
    assert (eight.win_length, eight.hop_length, eight.n_fft) == (200, 80, 256)  # the FSDD setting, unchanged
    assert (sixteen.win_length, sixteen.hop_length, sixteen.n_fft) == (400, 160, 512)
    # one second gives 101 frames at either rate, so SpecAugment's masks and the CNN see the same time scale
    assert KeywordCNN(12, sample_rate=16000).eval()(torch.randn(2, 16000) * 0.1).shape == (2, 12)
    assert CepstralFeatures(16000)(torch.randn(1, 16000)).shape[-1] == CepstralFeatures(8000)(torch.randn(1, 8000)).shape[-1]
    with pytest.raises(ValueError, match="n_fft must be an integer >= 400"):
        CepstralFeatures(16000, n_fft=256)
