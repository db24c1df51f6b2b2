"""Latent-space threat model (on-manifold attacks) with the reference VAEs trained by our own code."""

from __future__ import annotations

import pytest
import torch

from mmrobust.attacks import PGD
from mmrobust.generative import VAE, audio_feature_vae, image_vae, train_vae
from mmrobust.threats import L2Ball, LatentBall


@pytest.fixture(scope="module")
def digits_vae(digits):
    x, _, _, _ = digits
    vae = image_vae(1, 8, latent_dim=6)
    history = train_vae(vae, x, epochs=20, batch_size=64, lr=3e-3, seed=0)
    assert history["loss"][-1] < 0.8 * history["loss"][0], "the VAE did not learn"
    return vae.eval()


def test_latent_pgd_stays_in_latent_budget_decodes_to_valid_images_and_fools(digits, digits_cnn, digits_vae):
    _, _, xt, yt = digits
    x, y = xt[:100], yt[:100]
    x0 = x.clone()
    threat = LatentBall(1.5, digits_vae.encode_mean, digits_vae.decode)
    result = PGD(threat, adapter=threat.adapter(), steps=20, seed=0)(digits_cnn, (x, y))
    z = digits_vae.encode_mean(x)
    assert torch.equal(x, x0)
    # attacks see latent codes; the sizes are latent norms within the budget
    assert bool((result.size["image"] <= 1.5 + 1e-4).all())
    assert result.inputs["image"].shape == z.shape
    assert bool(((result.inputs["image"] - z).norm(dim=1) <= 1.5 + 1e-4).all())
    # the returned batch holds decoded images: valid pixel values, the decoder's image of the latent point
    adv = result.batch[0]
    assert adv.shape == x.shape and float(adv.min()) >= 0 and float(adv.max()) <= 1
    with torch.no_grad():
        assert torch.allclose(adv, digits_vae.decode(result.inputs["image"]), atol=1e-6)
    # the reference is the reconstruction; the attack removes most of its accuracy
    clean_acc = result.clean_correct.float().mean().item()
    assert clean_acc > 0.6
    assert result.adv_correct.float().mean().item() < 0.5 * clean_acc
    assert digits_vae.training is False and all(p.requires_grad for p in digits_vae.parameters())


def test_latent_ball_restores_generative_model_state_and_checks_arguments(digits, digits_cnn, digits_vae):
    _, _, xt, yt = digits
    digits_vae.train()
    try:
        threat = LatentBall(0.5, digits_vae.encode_mean, digits_vae.decode, norm="linf")
        result = PGD(threat, adapter=threat.adapter(), steps=3)(digits_cnn, (xt[:8], yt[:8]))
        assert digits_vae.training and all(p.requires_grad for p in digits_vae.parameters())
        assert bool((result.size["image"] <= 0.5 + 1e-6).all())
    finally:
        digits_vae.eval()
    with pytest.raises(ValueError, match="norm must be one of"):
        LatentBall(0.5, digits_vae.encode_mean, digits_vae.decode, norm="l3")
    with pytest.raises(ValueError, match="eps must be"):
        LatentBall(-1.0, digits_vae.encode_mean, digits_vae.decode)
    with pytest.raises(ValueError, match="latent codes must have shape"):
        digits_vae.decode(torch.zeros(2, 3))


def test_on_manifold_examples_are_closer_to_the_data_than_input_space_ones(digits, digits_cnn, digits_vae):
    """Stutz et al. 2019: latent attacks stay near the manifold, so re-encoding reproduces them well."""
    _, _, xt, yt = digits
    x, y = xt[:50], yt[:50]
    threat = LatentBall(1.5, digits_vae.encode_mean, digits_vae.decode)
    on = PGD(threat, adapter=threat.adapter(), steps=10, seed=0)(digits_cnn, (x, y)).batch[0]
    off = PGD(L2Ball(1.0, lower=0, upper=1), steps=10, seed=0)(digits_cnn, (x, y)).batch[0]
    with torch.no_grad():
        def manifold_error(v):
            return (digits_vae.decode(digits_vae.encode_mean(v)) - v).flatten(1).norm(dim=1).mean()
        assert manifold_error(on) < manifold_error(off)


def test_audio_feature_vae_trains_on_log_mel_frames():
    import torchaudio

    torch.manual_seed(0)
    sr = 8000
    t = torch.arange(sr // 4) / sr
    tones = torch.stack([torch.sin(2 * torch.pi * f * t) for f in torch.linspace(200, 2000, 24)])
    mel = torchaudio.transforms.MelSpectrogram(sr, n_fft=256, hop_length=128, n_mels=20)(tones)
    frames = torch.log(mel + 1e-6).transpose(1, 2).reshape(-1, 20, 1)
    frames = (frames - frames.mean()) / frames.std()
    vae = audio_feature_vae(n_mels=20, frames=1, latent_dim=4)
    hist = train_vae(vae, frames, epochs=15, batch_size=64, lr=3e-3)
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    z = vae.encode_mean(frames[:5])
    assert vae.decode(z).shape == (5, 20, 1)
    with pytest.raises(ValueError, match="Bernoulli VAE needs inputs"):
        train_vae(VAE((20, 1), 4, (16,), "bernoulli"), frames, epochs=1)
