"""Randomized smoothing: SmoothedClassifier, CertifiedAccuracy and GaussianNoiseTraining."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from scipy.stats import norm
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _reliability_common import LitClassifier
from mmrobust.callbacks import GaussianNoiseTraining
from mmrobust.certify import ABSTAIN, SmoothedClassifier, clopper_pearson_lower
from mmrobust.metrics import CertifiedAccuracy


class LinearTwoClass(nn.Module):
    """Logits ``(-w.x, w.x)`` with unit ``w``: class 1 iff ``w.x > 0``; the exact L2 robust radius is ``|w.x|``."""

    def __init__(self, dim: int):
        super().__init__()
        w = torch.zeros(dim)
        w[0] = 0.6
        w[1] = 0.8
        self.register_buffer("w", w)

    def forward(self, x):
        s = x.flatten(1) @ self.w
        return torch.stack([-s, s], 1)


def points_with_margin(margins, dim=6):
    x = torch.zeros(len(margins), dim)
    x[:, 0] = 0.6 * torch.tensor(margins)
    x[:, 1] = 0.8 * torch.tensor(margins)
    x[:, 2:] = 0.3  # directions orthogonal to w do not matter
    return x


def test_certified_radius_matches_the_closed_form_on_a_linear_classifier():
    sigma, n, alpha = 0.5, 4000, 0.001
    smoothed = SmoothedClassifier(LinearTwoClass(6), sigma, num_classes=2, n0=50, n=n, alpha=alpha,
                                  batch_size=1000, generator=0)
    margins = [0.5, -0.8, 1.2]
    x = points_with_margin(margins)
    x_before = x.clone()
    cert = smoothed.certify(x)
    assert torch.equal(x, x_before)
    assert cert.prediction.tolist() == [1, 0, 1]
    for i, m in enumerate(margins):
        # the vote count is Binomial(n, Phi(|m| / sigma)); the certified radius is sigma * Phi^-1(p_lower) <= |m|
        p_true = norm.cdf(abs(m) / sigma)
        n_a = int(cert.counts[i, cert.prediction[i]])
        assert abs(n_a / n - p_true) < 4 * math.sqrt(p_true * (1 - p_true) / n) + 1e-3
        expected = sigma * norm.ppf(clopper_pearson_lower(n_a, n, alpha))
        assert float(cert.radius[i]) == pytest.approx(expected, rel=1e-6)
        assert float(cert.p_lower[i]) <= n_a / n
        assert 0.8 * abs(m) < float(cert.radius[i]) <= abs(m)  # sound and reasonably tight


def test_ambiguous_points_abstain_and_confident_points_are_predicted():
    smoothed = SmoothedClassifier(LinearTwoClass(6), 0.5, num_classes=2, n0=50, n=1000, alpha=0.001,
                                  batch_size=500, generator=1)
    x = points_with_margin([0.0, 0.0, 1.0, -1.0])
    cert = smoothed.certify(x)
    assert cert.prediction[:2].tolist() == [ABSTAIN, ABSTAIN]
    assert cert.radius[:2].tolist() == [0.0, 0.0]
    assert cert.abstained.tolist() == [True, True, False, False]
    pred = smoothed.predict(x)
    assert pred.tolist() == [ABSTAIN, ABSTAIN, 1, 0]
    assert smoothed(x)[2:].tolist() == [1, 0]  # forward is PREDICT


def test_smoothing_is_seeded_and_restores_the_base_model():
    torch.manual_seed(0)  # the base model and x are drawn from the global RNG: other tests must not decide them
    base = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.Linear(16, 3)).train()
    x = torch.randn(4, 6)
    a = SmoothedClassifier(base, 0.25, num_classes=3, n0=20, n=200, batch_size=64, generator=7).certify(x)
    b = SmoothedClassifier(base, 0.25, num_classes=3, n0=20, n=200, batch_size=64, generator=7).certify(x)
    assert torch.equal(a.counts, b.counts) and torch.equal(a.radius, b.radius)
    c = SmoothedClassifier(base, 0.25, num_classes=3, n0=20, n=200, batch_size=64, generator=8).certify(x)
    assert not torch.equal(a.counts, c.counts)
    assert base.training and all(p.requires_grad for p in base.parameters())
    assert a.counts.sum(1).tolist() == [200] * 4


def test_smoothed_classifier_argument_errors():
    base = LinearTwoClass(6)
    with pytest.raises(ValueError, match="sigma"):
        SmoothedClassifier(base, 0.0, num_classes=2)
    with pytest.raises(ValueError, match="alpha"):
        SmoothedClassifier(base, 0.5, num_classes=2, alpha=1.0)
    with pytest.raises(ValueError, match="num_classes"):
        SmoothedClassifier(base, 0.5, num_classes=1)
    with pytest.raises(ValueError, match="num_classes=3"):
        SmoothedClassifier(base, 0.5, num_classes=3, n=10, batch_size=10).certify(torch.zeros(1, 6))
    with pytest.raises(ValueError, match="floating-point"):
        SmoothedClassifier(base, 0.5, num_classes=2).predict(torch.zeros(1, 6, dtype=torch.long))


def test_certified_accuracy_counts_abstentions_as_wrong_and_is_monotone():
    metric = CertifiedAccuracy(radii=[0.0, 0.25, 0.5, 1.0])
    prediction = torch.tensor([1, 2, ABSTAIN, 0, 3])
    radius = torch.tensor([0.3, 0.9, 0.0, 0.6, 0.1])
    target = torch.tensor([1, 2, 2, 1, 3])
    metric.update(prediction, radius, target)
    acc = metric.compute()
    assert acc.tolist() == pytest.approx([3 / 5, 2 / 5, 1 / 5, 0.0])
    assert bool((acc[1:] <= acc[:-1]).all())
    with pytest.raises(ValueError, match="radii"):
        CertifiedAccuracy(radii=[-0.1])
    with pytest.raises(ValueError, match="same shape"):
        metric.update(prediction, radius[:2], target)


def test_certified_accuracy_of_a_noise_trained_digits_model(digits):
    """GaussianNoiseTraining + SmoothedClassifier + CertifiedAccuracy end to end, through a Lightning fit."""
    x, y, xt, yt = digits

    pl.seed_everything(0)
    module = LitClassifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), 1e-2)
    noise = GaussianNoiseTraining(0.25, seed=0)
    loader = DataLoader(TensorDataset(x, y), batch_size=100, shuffle=True)
    x_before = x.clone()
    pl.Trainer(max_epochs=8, callbacks=[noise], logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(module, loader)
    assert torch.equal(x, x_before)  # the dataset's tensors were never written to
    smoothed = SmoothedClassifier(module.model, 0.25, num_classes=10, n0=20, n=200, alpha=0.01, batch_size=200,
                                  generator=0)
    metric = CertifiedAccuracy(radii=[0.0, 0.25, 0.5, 1.0])
    metric.update(smoothed.certify(xt[:60]), yt[:60])
    acc = metric.compute()
    assert acc[0] > 0.7, acc  # smoothed accuracy of the noise-trained model
    assert acc[1] > 0.4, acc
    assert bool((acc[1:] <= acc[:-1]).all())
    assert acc[-1] < acc[0]


def test_gaussian_noise_training_adds_seeded_noise_without_touching_user_tensors():
    x = torch.rand(256, 1, 8, 8)
    x_before = x.clone()
    y = torch.randint(0, 10, (256,))
    batch = [x, y]
    cb = GaussianNoiseTraining(0.5, seed=3)
    state = cb.state_dict()

    class FakeTrainer:
        current_epoch = 0

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    cb.on_train_batch_start(FakeTrainer(), model, batch, 0)
    assert batch[1] is y and batch[0] is not x
    assert torch.equal(x, x_before)  # the user's tensor is untouched
    noise = batch[0] - x
    assert abs(float(noise.std()) - 0.5) < 0.02 and abs(float(noise.mean())) < 0.02
    # resuming from the saved state draws the same noise
    again = GaussianNoiseTraining(0.1)
    again.load_state_dict(state)
    batch2 = [x, y]
    again.on_train_batch_start(FakeTrainer(), model, batch2, 0)
    assert torch.equal(batch2[0], batch[0]) and again.sigma == 0.5
    with pytest.raises(TypeError, match="immutable"):
        cb.on_train_batch_start(FakeTrainer(), model, (x, y), 0)
    with pytest.raises(ValueError, match="sigma"):
        GaussianNoiseTraining(-1.0)


def test_gaussian_noise_training_on_dict_batches_only_touches_the_input():
    x = torch.rand(8, 1, 8, 8)
    batch = {"image": x, "label": torch.arange(8), "extra": "kept"}

    class FakeTrainer:
        current_epoch = 0

    cb = GaussianNoiseTraining(0.1, seed=0, warmup_epochs=1)
    cb.on_train_batch_start(FakeTrainer(), nn.Identity(), batch, 0)
    assert batch["image"] is x  # still warming up
    FakeTrainer.current_epoch = 1
    cb.on_train_batch_start(FakeTrainer(), nn.Identity(), batch, 0)
    assert batch["image"] is not x and batch["extra"] == "kept" and torch.equal(batch["label"], torch.arange(8))
    assert 0 < float((batch["image"] - x).abs().max()) < 1
