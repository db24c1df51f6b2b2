"""Shared fixtures: small real data (scikit-learn digits) and a small trained CNN, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

torch.set_num_threads(int(os.environ.get("MMROBUST_TEST_THREADS", "2")))

# ../shared/data beside the checkout; MMROBUST_SHARED_DATA points elsewhere (e.g. from a git worktree)
SHARED_DATA = Path(os.environ.get("MMROBUST_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the project root; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits as ``(x_train, y_train, x_test, y_test)``, values in [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def make_digits_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 16, 64), nn.ReLU(), nn.Linear(64, 10))


def train_classifier(model: nn.Module, x, y, *, epochs: int, lr: float = 3e-3, batch_size: int = 64,
                     seed=None) -> nn.Module:
    """Plain Adam + cross-entropy training on shuffled mini-batches; returns the model in eval mode.

    ``seed`` reseeds the global RNG first (``None``: continue with its current state).
    """
    if seed is not None:
        torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(y))
        for i in range(0, len(y), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits_cnn(digits):
    """A small CNN trained normally on digits (about 97% clean test accuracy); do not modify it in tests."""
    x, y, xt, yt = digits
    torch.manual_seed(0)
    model = train_classifier(make_digits_cnn(), x, y, epochs=15, batch_size=64)
    acc = (model(xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.9, f"fixture model trained badly ({acc:.3f})"
    return model


def assert_projection_is_closest(threat, v, x, generator, draws: int):
    """``threat.project(v, x)`` is the admissible point closest to ``v`` (in L2): for ``draws`` other
    admissible points ``z`` the obtuse-angle condition :math:`\\langle v - p, z - p\\rangle \\le 0` holds and
    ``z`` is no closer to ``v`` than ``p``."""
    p = threat.project(v, x)
    for _ in range(draws):
        z = threat.project(torch.randn(v.shape, generator=generator, dtype=v.dtype) * v.abs().max().clamp_min(1e-3), x)
        d_vp, d_zp = (v - p).flatten(1), (z - p).flatten(1)
        inner = (d_vp * d_zp).sum(1)
        assert bool((inner <= 1e-7 * (1 + d_vp.norm(dim=1) * d_zp.norm(dim=1))).all()), (threat, inner)
        assert bool((d_vp.norm(dim=1) <= (v - z).flatten(1).norm(dim=1) + 1e-9).all())
