"""Compression and weight robustness: quantisation, random bit errors, pruning, Fourier sparsity, distillation."""

from .bit_errors import BitFlips, bit_error_mask, bit_errors, popcount, sample_bit_flips
from .distillation import DistillationObjective, kd_loss, load_teacher, soft_kl
from .fourier import FourierKernel, fourier_parametrize, fourier_prune, fourier_stats, remove_fourier
from .pruning import (PruningMask, add_masks, hydra_prune, magnitude_masks, make_permanent, prunable_modules,
                      prune_channels, prune_magnitude, pruning_mask, set_masks, sparsity_at, weight_sparsity)
from .quantization import (FakeQuantize, QuantizerConfig, clip_weights, dequantize_model, export_quantized,
                           fake_quantize, model_size_bytes, quantize_model, quantize_tensor, quantized_modules)
from .report import compression_report

__all__ = [
    # quantisation
    "QuantizerConfig", "FakeQuantize", "quantize_model", "dequantize_model", "quantize_tensor", "fake_quantize",
    "quantized_modules", "clip_weights", "export_quantized", "model_size_bytes",
    # random bit errors
    "bit_errors", "bit_error_mask", "BitFlips", "sample_bit_flips", "popcount",
    # pruning
    "PruningMask", "pruning_mask", "prunable_modules", "add_masks", "magnitude_masks", "set_masks", "sparsity_at",
    "weight_sparsity", "prune_magnitude", "make_permanent", "hydra_prune", "prune_channels",
    # Fourier sparsity
    "FourierKernel", "fourier_parametrize", "fourier_prune", "fourier_stats", "remove_fourier",
    # distillation and the report
    "DistillationObjective", "kd_loss", "soft_kl", "load_teacher", "compression_report",
]
