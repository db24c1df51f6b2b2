"""Fourier-parametrised conv kernels and their sparsity."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _reliability_common import LitClassifier
from mmrobust.callbacks import FourierSparsity
from mmrobust.compression.fourier import (fourier_modules, fourier_parametrize, fourier_prune, fourier_stats,
                                          remove_fourier)


@pytest.mark.parametrize("conv", [nn.Conv2d(3, 4, 3), nn.Conv2d(2, 5, (4, 5)), nn.Conv1d(1, 6, 8), nn.Conv1d(2, 3, 5)])
def test_parametrisation_reproduces_the_kernel_when_nothing_is_pruned(conv):
    torch.manual_seed(0)
    model = nn.Sequential(copy.deepcopy(conv))
    w = conv.weight.detach().clone()
    fourier_parametrize(model)
    assert torch.allclose(model[0].weight, w, atol=1e-6)
    x = torch.randn(2, conv.in_channels, *([12] * (conv.weight.dim() - 2)))
    assert torch.allclose(model(x), conv(x), atol=1e-5)
    # the trainable parameter is the spectrum, and it gets gradients
    model(x).sum().backward()
    coeffs = model[0].parametrizations.weight.original
    assert coeffs.shape[-1] == 2 and coeffs.grad is not None and coeffs.grad.abs().sum() > 0


def test_fourier_pruning_sparsity_stats_and_low_pass_effect():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.Conv2d(8, 8, 3))
    fourier_parametrize(model)
    fourier_prune(model, 0.75, scope="layer")
    stats = fourier_stats(model)
    assert stats["sparsity"] == pytest.approx(0.75, abs=0.01)
    total = 8 * 1 * 5 * 3 + 8 * 8 * 3 * 2
    assert stats["coefficients"] == total
    assert stats["compression_ratio"] == pytest.approx((8 * 25 + 64 * 9) / (2 * stats["kept"]))
    for _, module, fk in fourier_modules(model):
        spec = torch.fft.rfftn(module.weight.detach(), dim=fk.dims)
        assert bool((spec.abs()[fk.mask == 0] < 1e-5).all())  # pruned coefficients are really gone
    with pytest.raises(ValueError, match="sparsity"):
        fourier_prune(model, -0.1)
    clone = copy.deepcopy(model)
    x = torch.randn(2, 1, 10, 10)
    assert torch.allclose(clone(x), model(x))
    remove_fourier(clone)
    assert not fourier_modules(clone) and torch.allclose(clone(x), model(x), atol=1e-5)
    assert fourier_modules(model)  # removing from a deepcopy leaves the original intact


def fourier_classifier() -> LitClassifier:
    torch.manual_seed(0)
    return LitClassifier(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                       nn.Linear(8 * 16, 10)), 3e-3)


def test_fourier_sparsity_callback_trains_a_sparse_spectrum(digits, tmp_path):
    x, y, xt, yt = digits
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    lit = fourier_classifier()
    cb = FourierSparsity(0.5, begin_step=5, end_step=30, frequency=5)
    pl.Trainer(max_epochs=3, callbacks=[cb], logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu").fit(lit, loader)
    stats = fourier_stats(lit)
    assert stats["sparsity"] == pytest.approx(0.5, abs=0.02) and cb.current_sparsity == pytest.approx(0.5)
    acc = (lit(xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.8
    assert "model.0.parametrizations.weight.0.mask" in lit.state_dict()
