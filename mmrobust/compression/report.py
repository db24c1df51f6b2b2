"""One table of what compression bought and what it cost: size, sparsity, bits, clean and robust accuracy."""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from .fourier import fourier_modules, fourier_stats
from .quantization import model_size_bytes, quantized_modules


def _effective_parameters(model: nn.Module):
    """``(name, tensor)`` of every parameter as the model uses it (parametrised weights evaluated)."""
    for mod_name, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList):
            continue
        for name, p in module.named_parameters(recurse=False):
            yield f"{mod_name}.{name}" if mod_name else name, p
        if parametrize.is_parametrized(module):
            for name in module.parametrizations:
                yield f"{mod_name}.{name}" if mod_name else name, getattr(module, name)


@torch.no_grad()
def compression_report(model: nn.Module, *, dataloader: Optional[Iterable] = None, attacks: Any = None,
                       float_bits: int = 32, max_batches: Optional[int] = None, progress: bool = False
                       ) -> Dict[str, Any]:
    """Size and accuracy of a (pruned / quantised / Fourier-sparse) model.

    Returns ``parameters`` (as used by the model: parametrised weights count with their effective shape),
    ``nonzeros``, ``sparsity``, ``bits_per_weight`` (mean storage bits of the parameters: the quantiser's
    bits for quantised weights, ``float_bits`` otherwise), ``bytes`` (true dense size with the quantised
    representation and its scales, :func:`~mmrobust.compression.model_size_bytes`), ``bytes_float``
    (the same model in ``float_bits``), ``compression`` (``bytes_float / bytes``), ``fourier`` (Fourier-domain
    statistics when kernels are Fourier-parametrised) and, given ``dataloader`` and ``attacks``,
    ``clean_accuracy`` and ``robust_accuracy`` (worst case over the attacks) from :func:`mmrobust.evaluate`.
    """
    params = list(_effective_parameters(model))
    total = sum(t.numel() for _, t in params)
    nonzeros = sum(int((t != 0).sum()) for _, t in params)
    bits = {id(m): fq.cfg.bits for _, m, fq in quantized_modules(model)}
    stored_bits = 0
    for mod_name, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList):
            continue
        for _, p in module.named_parameters(recurse=False):
            stored_bits += p.numel() * float_bits
        if parametrize.is_parametrized(module):
            for name in module.parametrizations:
                b = bits.get(id(module), float_bits) if name == "weight" else float_bits
                stored_bits += getattr(module, name).numel() * b
    if fourier_modules(model):
        size = None  # coefficients are the stored representation; report them separately
    else:
        size = model_size_bytes(model, float_bits=float_bits)
    report: Dict[str, Any] = {
        "parameters": total, "nonzeros": nonzeros, "sparsity": 1 - nonzeros / max(1, total),
        "bits_per_weight": stored_bits / max(1, total),
        "bytes": size if size is not None else math.ceil(stored_bits / 8),
        "bytes_float": math.ceil(total * float_bits / 8),
    }
    report["compression"] = report["bytes_float"] / max(1, report["bytes"])
    if fourier_modules(model):
        report["fourier"] = fourier_stats(model)
    if dataloader is not None:
        if attacks is None:
            raise ValueError("compression_report with a dataloader needs attacks (e.g. PGD(LinfBall(0.3)))")
        from ..evaluation import evaluate

        with torch.enable_grad():
            result = evaluate(model, dataloader, attacks, max_batches=max_batches, progress=progress)
        report["clean_accuracy"] = result["clean_accuracy"]
        report["robust_accuracy"] = result["robust_accuracy"]
        report["per_attack"] = result.get("per_attack")
    return report
