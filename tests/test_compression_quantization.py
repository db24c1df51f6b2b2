"""Quantisation, random bit errors, RandBET and BitErrorAccuracy."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _reliability_common import LitClassifier
from mmrobust.callbacks import Quantization, RandomBitErrorTraining
from mmrobust.compression import (QuantizerConfig, bit_error_mask, bit_errors, dequantize_model, export_quantized,
                                  model_size_bytes, popcount, quantize_model, quantize_tensor, quantized_modules)
from mmrobust.compression.quantization import code_limits, dequantize_tensor, to_unsigned
from mmrobust.metrics import BitErrorAccuracy


def small_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("per_channel", [True, False])
def test_quantised_values_lie_on_the_grid(bits, symmetric, per_channel):
    w = torch.randn(6, 3, 3, 3)
    cfg = QuantizerConfig(bits=bits, symmetric=symmetric, per_channel=per_channel)
    q, scale, zero = quantize_tensor(w, cfg)
    lo, hi = code_limits(cfg)
    assert int(q.min()) >= lo and int(q.max()) <= hi
    w_hat = dequantize_tensor(q, scale, zero, per_channel)
    s = scale.reshape(-1, 1, 1, 1) if per_channel else scale
    z = zero.reshape(-1, 1, 1, 1) if per_channel else zero
    grid = w_hat / s + z
    assert torch.allclose(grid, grid.round(), atol=1e-4)
    # rounding error at most half a step inside the range
    assert bool(((w_hat - w).abs() <= s / 2 + 1e-6).all())
    if symmetric:  # extremes are representable
        assert torch.allclose(w_hat.abs().amax(), w.abs().amax(), rtol=1e-5)


def test_bad_quantiser_arguments_name_the_argument():
    with pytest.raises(ValueError, match="bits"):
        QuantizerConfig(bits=9)
    with pytest.raises(ValueError, match="clip"):
        QuantizerConfig(clip=-1.0)
    with pytest.raises(ValueError, match="rate"):
        bit_error_mask((3,), 8, 1.5)


def test_quantized_model_forward_straight_through_and_export():
    model = quantize_model(small_mlp(), bits=4, per_channel=True)
    x = torch.rand(5, 1, 8, 8)
    model(x).sum().backward()
    lin = model[1]
    # straight-through: the float weight gets the gradient of the quantised weight
    assert lin.parametrizations.weight.original.grad is not None
    assert lin.parametrizations.weight.original.grad.abs().sum() > 0
    exported = export_quantized(model)
    assert set(exported) == {"1", "3"} and exported["1"]["codes"].dtype == torch.int8
    rebuilt = dequantize_tensor(exported["1"]["codes"].to(torch.int32), exported["1"]["scale"],
                                exported["1"]["zero_point"], True)
    assert torch.allclose(rebuilt, lin.weight.detach(), atol=1e-6)
    # ranges are saved with the model and restored with it
    assert "1.parametrizations.weight.0.high" in model.state_dict()
    clone = copy.deepcopy(model)
    assert torch.equal(clone(x), model(x))
    n_weights = 64 * 32 + 32 * 10
    expected = (n_weights * 4 + (32 + 10) * 32 + (32 + 10) * 32) // 8
    assert model_size_bytes(model) == expected
    assert model_size_bytes(dequantize_model(small_mlp())) == (n_weights + 42) * 4


@pytest.mark.parametrize("symmetric", [True, False])
def test_bit_flips_hit_exactly_the_mask_and_restore_bit_exactly(symmetric):
    model = quantize_model(small_mlp(), bits=8, symmetric=symmetric)
    x = torch.rand(16, 1, 8, 8)
    clean_out = model(x).detach()
    clean_float = {n: m.parametrizations.weight.original.detach().clone() for n, m, _ in quantized_modules(model)}
    clean_codes = {n: fq.codes(m.parametrizations.weight.original) for n, m, fq in quantized_modules(model)}
    with bit_errors(model, 0.02, seed=7) as masks:
        for name, module, fq in quantized_modules(model):
            scale_zero = quantize_tensor(module.parametrizations.weight.original, fq.cfg)[1:]
            noisy_codes = torch.round(module.weight.detach() / scale_zero[0] + scale_zero[1]).to(torch.int32)
            noisy_words = to_unsigned(noisy_codes, 8, symmetric)
            clean_words = to_unsigned(clean_codes[name], 8, symmetric)
            hamming = popcount(noisy_words ^ clean_words, 8)
            assert torch.equal(hamming, popcount(masks[name].dense(), 8))
            assert int(popcount(masks[name].dense(), 8).sum()) > 0
        noisy_out = model(x).detach()
    assert not torch.equal(noisy_out, clean_out)
    for name, module, _ in quantized_modules(model):
        assert torch.equal(module.parametrizations.weight.original, clean_float[name])
    assert torch.equal(model(x), clean_out)


def test_bit_error_patterns_rate_and_reproducibility():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    m1 = bit_error_mask((20000,), 8, 0.01, generator=g1)
    m2 = bit_error_mask((20000,), 8, 0.01, generator=g2)
    assert torch.equal(m1, m2)
    flips = int(popcount(m1, 8).sum())
    assert abs(flips - 1600) < 5 * 40  # Binomial(160000, 0.01): std ~ 40
    per_bit = torch.stack([(m1 >> j) & 1 for j in range(8)]).sum(1).float()
    assert bool((per_bit > 120).all()) and bool((per_bit < 280).all())  # every bit position is hit evenly
    assert int(m1.max()) < 256
    assert torch.equal(bit_error_mask((4, 4), 3, 1.0), torch.full((4, 4), 7, dtype=torch.int32))
    assert int(bit_error_mask((4, 4), 3, 0.0).abs().sum()) == 0


def test_bit_errors_restore_on_exception_and_temporary_quantisation():
    model = small_mlp()
    x = torch.rand(4, 1, 8, 8)
    ref = model(x).detach()
    with pytest.raises(ValueError, match="quantised"):
        with bit_errors(model, 0.01):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with bit_errors(model, 0.5, seed=0, quantizer=QuantizerConfig(bits=8)):
            raise RuntimeError("boom")
    assert not any(True for _ in quantized_modules(model))
    assert torch.equal(model(x), ref)


def test_bit_error_accuracy_known_cases(digits, digits_cnn):
    x, y, xt, yt = digits
    model = quantize_model(copy.deepcopy(digits_cnn), bits=8)
    model.eval()
    metric = BitErrorAccuracy(rates=(0.0, 0.02), patterns=3, seed=1)
    metric.update(model, (xt[:150], yt[:150]))
    metric.update(model, (xt[150:300], yt[150:300]))
    out = metric.compute()
    clean = (model(xt[:300]).argmax(1) == yt[:300]).float().mean().item()
    assert out["clean"].item() == pytest.approx(clean)
    # p = 0: every pattern is the clean model
    assert out["mean"][0].item() == pytest.approx(clean) and out["std"][0].item() == 0.0
    # p > 0: mean and std are those of the per-pattern accuracies, each over the whole data
    per_pattern = []
    for k in range(3):
        gen = torch.Generator().manual_seed(metric.pattern_seed(1, k))
        with torch.no_grad(), bit_errors(model, 0.02, generator=gen):
            per_pattern.append((model(xt[:150]).argmax(1) == yt[:150]).sum().item())
            per_pattern.append((model(xt[150:300]).argmax(1) == yt[150:300]).sum().item())
    accs = torch.tensor(per_pattern, dtype=torch.float64).reshape(3, 2).sum(1) / 300
    assert out["mean"][1].item() == pytest.approx(accs.mean().item())
    assert out["std"][1].item() == pytest.approx(accs.std().item())
    assert out["min"][1].item() == pytest.approx(accs.min().item())
    assert out["mean"][1] < clean  # 2% bit errors hurt an unprotected 8-bit model


def _trainer(callbacks, epochs, tmp_path):
    return pl.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      accelerator="cpu", deterministic=True)


def test_quantization_callback_trains_clips_and_saves_ranges(digits, tmp_path):
    x, y, xt, yt = digits
    pl.seed_everything(0)
    lit = LitClassifier(small_mlp())
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    _trainer([Quantization(bits=4, clip=0.1)], 6, tmp_path).fit(lit, loader)
    for _, module, fq in quantized_modules(lit):
        assert float(module.parametrizations.weight.original.detach().abs().max()) <= 0.1 + 1e-7
        assert float(fq.high.max()) == pytest.approx(0.1)
    acc = (lit(xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.8  # 4-bit QAT with clipping still learns digits


@pytest.mark.slow
def test_randbet_keeps_more_accuracy_under_bit_errors_than_normal_training(digits, tmp_path):
    x, y, xt, yt = digits
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    results = {}
    for name, extra in [("normal", []), ("randbet", [RandomBitErrorTraining(rate=0.05, seed=0)])]:
        pl.seed_everything(0)
        lit = LitClassifier(small_mlp())
        clip = None if name == "normal" else 0.25
        _trainer([Quantization(bits=8, clip=clip, symmetric=False), *extra], 12, tmp_path).fit(lit, loader)
        metric = BitErrorAccuracy(rates=(0.1,), patterns=10, seed=5)
        metric.update(lit, (xt, yt))
        results[name] = metric.compute()
    # measured: clean 0.95 / 0.93, at p = 10%: normal 0.51, RandBET 0.83
    assert results["randbet"]["clean"] > 0.88 and results["normal"]["clean"] > 0.88
    assert float(results["randbet"]["mean"]) > float(results["normal"]["mean"]) + 0.15  # one rate: a scalar


def test_quantisation_and_bit_errors_on_speech_and_graph_layers():
    pytest.importorskip("torch_geometric")
    from torch_geometric.nn import GCNConv

    torch.manual_seed(0)
    speech = nn.Sequential(nn.Conv1d(1, 4, 9, stride=4), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                           nn.Linear(4, 3))
    quantize_model(speech, bits=6, per_channel=True)
    assert [n for n, _, _ in quantized_modules(speech)] == ["0", "4"]
    wave = torch.randn(2, 1, 400)
    with bit_errors(speech, 0.05, seed=0):
        noisy = speech(wave)
    assert noisy.shape == (2, 3) and torch.isfinite(noisy).all()

    gcn = GCNConv(5, 3)
    quantize_model(gcn, bits=8)
    assert [n for n, _, _ in quantized_modules(gcn)] == ["lin"]
    x, edge_index = torch.randn(6, 5), torch.tensor([[0, 1, 2, 3, 4], [1, 2, 3, 4, 5]])
    clean = gcn(x, edge_index).detach()
    with bit_errors(gcn, 0.1, seed=0):
        assert not torch.equal(gcn(x, edge_index), clean)
    assert torch.equal(gcn(x, edge_index), clean)


def test_pruned_then_quantised_weights_keep_exact_zeros():
    from mmrobust.compression import make_permanent, prune_magnitude, pruning_mask

    model = prune_magnitude(small_mlp(), 0.6, scope="layer")
    quantize_model(model, bits=4, symmetric=True)
    exported = export_quantized(model)
    for name, module, _ in quantized_modules(model):
        mask = pruning_mask(module)
        assert bool((exported[name]["codes"][mask == 0] == 0).all())
        assert bool((module.weight[mask == 0] == 0).all())
    clone = copy.deepcopy(model)
    make_permanent(clone)
    dequantize_model(clone, keep_quantized_values=True)
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(clone(x), model(x), atol=1e-6)
    assert any(True for _ in quantized_modules(model))  # the original keeps its parametrisations
