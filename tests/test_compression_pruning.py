"""Magnitude pruning (one-shot, gradual callback, resume), HYDRA and structured channel pruning."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _reliability_common import LitClassifier
from mmrobust.callbacks import Pruning
from mmrobust.compression.quantization import original_weight
from mmrobust.compression import (pruning_mask, hydra_prune, magnitude_masks, make_permanent, prunable_modules, prune_channels,
                                  prune_magnitude, sparsity_at, weight_sparsity)


def test_zhu_gupta_schedule():
    kw = dict(final=0.9, initial=0.0, begin=100, end=500, frequency=100)
    assert sparsity_at(0, **kw) == 0.0
    assert sparsity_at(100, **kw) == 0.0
    assert sparsity_at(300, **kw) == pytest.approx(0.9 - 0.9 * 0.5 ** 3)
    assert sparsity_at(350, **kw) == sparsity_at(300, **kw)  # changes only every frequency steps
    assert sparsity_at(500, **kw) == sparsity_at(10_000, **kw) == 0.9
    values = [sparsity_at(t, **kw) for t in range(0, 600, 10)]
    assert values == sorted(values)
    # cubic: prunes fastest at the start
    assert sparsity_at(200, **kw) - sparsity_at(100, **kw) > sparsity_at(500, **kw) - sparsity_at(400, **kw)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_pruning_removes_the_smallest_weights(scope):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 8, 5), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 12, 4))
    before = copy.deepcopy(model)
    prune_magnitude(model, 0.7, scope=scope)
    assert weight_sparsity(model) == pytest.approx(0.7, abs=1e-2)
    layers = prunable_modules(model)
    if scope == "layer":
        for _, m in layers:
            assert float((m.weight == 0).float().mean()) == pytest.approx(0.7, abs=1e-2)
    kept = torch.cat([m.weight[pruning_mask(m).bool()].abs().reshape(-1) for _, m in layers])
    if scope == "global":
        removed = torch.cat([original_weight(m)[~pruning_mask(m).bool()].abs().reshape(-1) for _, m in layers])
        assert float(kept.min()) >= float(removed.max())
    # unpruned weights untouched; the original model untouched
    for (_, m), (_, b) in zip(layers, prunable_modules(before)):
        assert torch.equal(original_weight(m).detach(), b.weight.detach())
    assert weight_sparsity(before) == 0.0
    assert model(torch.randn(3, 2, 16)).shape == (3, 4)
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_masks(layers, 1.5)


def test_pruning_a_gnn_layer():
    pytest.importorskip("torch_geometric")
    from torch_geometric.nn import GCNConv

    class GCN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = GCNConv(6, 16), GCNConv(16, 3)

        def forward(self, x, edge_index):
            return self.conv2(self.conv1(x, edge_index).relu(), edge_index)

    torch.manual_seed(0)
    model = GCN()
    prune_magnitude(model, 0.5, scope="layer")
    assert weight_sparsity(model) == pytest.approx(0.5, abs=0.02)
    assert [n for n, _ in prunable_modules(model)] == ["conv1.lin", "conv2.lin"]
    edge_index = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
    assert model(torch.randn(4, 6), edge_index).shape == (4, 3)


def pruning_classifier() -> LitClassifier:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 16, 32), nn.ReLU(), nn.Linear(32, 10))
    return LitClassifier(model, 3e-3, torch.optim.AdamW, weight_decay=1e-2)


def _trainer(tmp_path, callbacks, max_epochs):
    return pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      accelerator="cpu")


def _masked_weights_are_zero(module):
    return all(bool((m.weight[pruning_mask(m) == 0] == 0).all()) for _, m in prunable_modules(module))


def test_gradual_pruning_keeps_pruned_weights_zero_through_training_and_resume(digits, tmp_path):
    x, y, xt, yt = digits
    loader = DataLoader(TensorDataset(x[:1280], y[:1280]), batch_size=64, shuffle=True)  # 20 steps per epoch
    lit = pruning_classifier()
    callback = Pruning(0.8, begin_step=10, end_step=40, frequency=10)
    _trainer(tmp_path, [callback], 3).fit(lit, loader)
    assert callback.current_sparsity == pytest.approx(0.8)
    assert weight_sparsity(lit) == pytest.approx(0.8, abs=0.01)
    assert _masked_weights_are_zero(lit)
    masks = {n: pruning_mask(m).clone() for n, m in prunable_modules(lit)}
    acc = (lit(xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.6  # (measured 0.74) training went on after pruning, with Adam's momentum and weight decay on weight_orig
    ckpt = tmp_path / "pruned.ckpt"
    trainer = _trainer(tmp_path, [callback], 3)
    trainer.strategy.connect(lit)  # save without fitting again
    trainer.save_checkpoint(ckpt)

    resumed = pruning_classifier()
    callback2 = Pruning(0.8, begin_step=10, end_step=40, frequency=10)
    _trainer(tmp_path, [callback2], 5).fit(resumed, loader, ckpt_path=ckpt)
    assert callback2.current_sparsity == pytest.approx(0.8)
    for n, m in prunable_modules(resumed):
        assert torch.equal(pruning_mask(m), masks[n])
    assert _masked_weights_are_zero(resumed)
    clone = copy.deepcopy(resumed)
    assert _masked_weights_are_zero(clone) and weight_sparsity(clone) == pytest.approx(0.8, abs=0.01)
    make_permanent(clone)
    assert not any(pruning_mask(m) is not None for _, m in prunable_modules(clone))
    assert weight_sparsity(clone) == pytest.approx(0.8, abs=0.01)


def test_structured_channel_pruning_shrinks_the_model():
    pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(32, 10))
    model.eval()
    x = torch.randn(2, 1, 8, 8)
    n_before = sum(p.numel() for p in model.parameters())
    prune_channels(model, x, 0.5)
    assert model[0].out_channels == 8 and model[1].num_features == 8 and model[3].in_channels == 8
    assert model[3].out_channels == 16 and model[7].in_features == 16 and model[7].out_features == 10
    assert sum(p.numel() for p in model.parameters()) < 0.4 * n_before
    assert model(x).shape == (2, 10)
    with pytest.raises(ValueError, match="sparsity"):
        prune_channels(model, x, 1.0)


def test_hydra_learns_masks_of_the_requested_sparsity(digits, digits_cnn):
    from mmrobust import PGD, LinfBall

    x, y, xt, yt = digits
    model = copy.deepcopy(digits_cnn)
    loader = DataLoader(TensorDataset(x[:512], y[:512]), batch_size=64)
    attack = PGD(LinfBall(0.05, lower=0, upper=1), steps=3, seed=0)
    clean_before = (digits_cnn(xt).argmax(1) == yt).float().mean().item()
    hydra_prune(model, loader, 0.8, attack=attack, epochs=1, lr=0.1)
    for _, m in prunable_modules(model):
        assert float((m.weight == 0).float().mean()) == pytest.approx(0.8, abs=0.01)
    # the weights themselves are not trained, only masked
    for (_, m), (_, m0) in zip(prunable_modules(model), prunable_modules(digits_cnn)):
        assert torch.equal(original_weight(m), m0.weight)
    clean_after = (model(xt).argmax(1) == yt).float().mean().item()
    assert clean_after > 0.5 and clean_before > 0.9
