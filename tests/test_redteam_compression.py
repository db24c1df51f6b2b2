"""Red team: temporary quantisation for bit-error evaluation must leave pruned / Fourier-sparse models as they were."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmrobust.compression import (QuantizerConfig, bit_errors, fourier_parametrize, fourier_prune, fourier_stats,
                                  prune_magnitude, pruning_mask, quantize_model, weight_sparsity)
from mmrobust.compression.fourier import fourier_modules
from mmrobust.metrics import BitErrorAccuracy


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _conv():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))


def test_bit_errors_with_a_temporary_quantiser_keep_the_pruning_masks():
    # the temporary quantiser was removed with dequantize_model, which drops every parametrisation of the
    # weight: a 50 % pruned model came back with sparsity 0.0 and no masks
    model = prune_magnitude(_mlp(), 0.5)
    x = torch.randn(5, 4)
    before = model(x)
    with bit_errors(model, 0.05, seed=0, quantizer=QuantizerConfig(bits=8)):
        model(x)
    assert weight_sparsity(model) == 0.5 and pruning_mask(model[0]) is not None
    assert torch.equal(model(x), before)


def test_bit_error_accuracy_with_a_quantizer_keeps_the_pruning_masks():
    model = prune_magnitude(_mlp(), 0.5)
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    metric = BitErrorAccuracy(rates=(0.01,), patterns=2, quantizer=QuantizerConfig(bits=8))
    metric.update(model, (x, y))
    assert weight_sparsity(model) == 0.5 and pruning_mask(model[2]) is not None


def test_bit_errors_on_fourier_kernels_flip_the_spatial_codes_and_restore_the_model():
    # flips were drawn with the shape of the stored spectrum (2x1x3x2x2) instead of the quantised 2x1x3x3
    # kernel: an IndexError, after which the Fourier parametrisation was gone and the conv unusable
    model = _conv()
    fourier_parametrize(model)
    fourier_prune(model, 0.5)
    x = torch.randn(3, 1, 4, 4)
    before, stats = model(x), fourier_stats(model)
    with bit_errors(model, 0.2, seed=0, quantizer=QuantizerConfig(bits=8)) as flips:
        assert flips["0"].shape == model[0].weight.shape
        assert not torch.equal(model(x), before)
    assert len(fourier_modules(model)) == 1 and fourier_stats(model) == stats
    assert torch.equal(model(x), before)


def test_bit_errors_on_a_quantised_fourier_model():
    model = _conv()
    fourier_parametrize(model)
    quantize_model(model, QuantizerConfig(bits=8))
    x = torch.randn(3, 1, 4, 4)
    before = model(x)
    with bit_errors(model, 0.2, seed=0) as flips:
        assert flips["0"].shape == (2, 1, 3, 3)
        model(x)
    assert torch.equal(model(x), before)


def test_weight_clipping_of_a_fourier_kernel_clamps_the_spatial_kernel():
    # clip_weights clamped the Fourier *coefficients* to [-clip, clip]: a kernel already inside the box (max |w|
    # 0.096 < 0.1) changed by 0.034 at every training step of FourierSparsity + Quantization(clip=0.1)
    from mmrobust.compression import clip_weights
    from mmrobust.compression.quantization import quantized_modules, quantizer_input

    model = _conv()
    with torch.no_grad():
        model[0].weight.mul_(0.3)
    assert float(model[0].weight.abs().max()) < 0.1
    fourier_parametrize(model)
    quantize_model(model, QuantizerConfig(bits=8, clip=0.1))
    (_, module, fq), _ = quantized_modules(model)
    inside = quantizer_input(module, fq).detach().clone()
    clip_weights(model)
    assert torch.allclose(quantizer_input(module, fq), inside, atol=1e-7)
    with torch.no_grad():   # a kernel outside the box is clamped in the spatial domain
        module.parametrizations.weight.original.mul_(10)
    clip_weights(model)
    assert float(quantizer_input(module, fq).abs().max()) <= 0.1 + 1e-6


def test_magnitude_pruning_of_a_fourier_kernel_ranks_its_spatial_weights():
    # the importance was |stored weight|, the Fourier coefficients, ranked against a spatial mask: a shape error
    model = _conv()
    fourier_parametrize(model)
    prune_magnitude(model, 0.5, scope="layer")
    kernel = model[0].weight.detach()
    assert float((kernel == 0).float().mean()) == pytest.approx(0.5, abs=1 / 18)
    assert len(fourier_modules(model)) == 1
    from mmrobust.compression import make_permanent

    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="remove_fourier"):   # the mask cannot be baked into the coefficients
        make_permanent(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_hydra_scores_the_network_it_deploys_on_a_pruned_model():
    # HYDRA's scored network folded the old mask into the weights (previously pruned weights read as 0), while
    # the top-k masks written afterwards replace the old ones (those weights come back with their stored
    # values): re-pruning an 80 % pruned model to 50 % deployed a network the scores were never trained on
    from mmrobust.compression import prunable_modules, set_masks
    from mmrobust.compression.pruning import _ScoredNetwork

    model = prune_magnitude(_mlp(), 0.8)
    modules = prunable_modules(model)
    scored = _ScoredNetwork(model, modules, 0.5, "layer")
    x = torch.randn(7, 4)
    with torch.no_grad():
        for s in scored.scores:   # trained scores: some weights pruned before are selected again
            s.add_(0.05 * torch.randn_like(s))
        expected = scored(x)
        set_masks(modules, scored.masks(differentiable=False))
        assert weight_sparsity(model) == pytest.approx(0.5, abs=0.02)
        assert torch.allclose(model(x), expected, atol=1e-6)
