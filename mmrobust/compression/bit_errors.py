"""Random bit errors in quantised weights (Stutz et al. 2021, https://arxiv.org/abs/2006.13977, Sec. 3).

Each of the ``m`` bits of every quantised weight's memory word (two's complement for symmetric, unsigned
for asymmetric quantisation) flips independently with probability ``p``:

.. math:: \\tilde u_i = u_i \\oplus e_i,\\quad e_{i,j} \\sim \\text{Bernoulli}(p)\\ \\text{i.i.d. over weights } i
    \\text{ and bits } j

Patterns are drawn exactly: the number of flips ``K ~ Binomial(N m, p)`` and then ``K`` distinct bit
positions uniformly, which costs ``O(pNm)`` instead of ``N m`` uniform draws per pattern.
Injection never touches the float weights: the flip masks live on the :class:`FakeQuantize`
parametrisations and are removed on exit, so the clean weights come back bit-exactly, also on error.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional

import torch
from torch import Tensor, nn

from ..errors import check_fraction
from ..utils import make_generator
from .quantization import (FakeQuantize, QuantizerConfig, dequantize_model, quantize_model,
                           quantized_modules)

__all__ = ["bit_error_mask", "bit_errors", "popcount"]


def bit_error_mask(shape, bits: int, rate: float, *, generator: Optional[torch.Generator] = None,
                   device=None) -> Tensor:
    """``int32`` XOR masks of ``shape``: each of the low ``bits`` bits set independently with prob. ``rate``."""
    rate = check_fraction("rate", rate)
    numel = 1
    for s in shape:
        numel *= int(s)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    total = numel * bits
    mask = torch.zeros(numel, dtype=torch.int32, device=gen_device)
    if total == 0 or rate == 0.0:
        return mask.reshape(shape).to(device or gen_device)
    if rate == 1.0:
        k = total
    else:
        k = int(torch.binomial(torch.tensor(float(total), device=gen_device),
                               torch.tensor(rate, device=gen_device), generator=generator).item())
    if k == total:
        positions = torch.arange(total, device=gen_device)
    else:
        # K distinct positions, uniformly: draw with replacement until K distinct ones are found
        positions = torch.empty(0, dtype=torch.long, device=gen_device)
        while positions.numel() < k:
            extra = torch.randint(total, (k - positions.numel(),), generator=generator, device=gen_device)
            positions = torch.unique(torch.cat([positions, extra]))
    values = torch.bitwise_left_shift(torch.ones_like(positions, dtype=torch.int32),
                                      (positions % bits).to(torch.int32))
    mask.index_put_((positions // bits,), values, accumulate=True)  # distinct bits: sum == OR
    return mask.reshape(shape).to(device or gen_device)


def popcount(x: Tensor, bits: int = 32) -> Tensor:
    """Number of set bits among the low ``bits`` bits of each integer."""
    x = x.to(torch.int64)
    count = torch.zeros_like(x)
    for j in range(bits):
        count += (x >> j) & 1
    return count


@contextlib.contextmanager
def bit_errors(model: nn.Module, rate: float, *, seed: Optional[int] = None,
               generator: Optional[torch.Generator] = None,
               quantizer: Optional[QuantizerConfig] = None) -> Iterator[Dict[str, Tensor]]:
    """Run ``model`` with random bit errors at ``rate`` in its quantised weights.

    Yields the flip masks by layer name (for inspection). The same ``seed`` gives the same pattern;
    ``generator`` continues a stream instead (RandBET draws a fresh pattern per step).
    A model without :class:`FakeQuantize` weights needs ``quantizer``: it is then quantised for the
    duration of the block (post-training quantisation) and restored afterwards.

    Example::

        with bit_errors(model, 0.01, seed=3):
            acc = (model(x).argmax(1) == y).float().mean()
    """
    rate = check_fraction("rate", rate)
    temporary = False
    if not any(True for _ in quantized_modules(model)):
        if quantizer is None:
            raise ValueError("model has no quantised weights; quantise it with mmrobust.compression.quantize_model "
                             "(or the Quantization callback) or pass quantizer=QuantizerConfig(...)")
        quantize_model(model, quantizer)
        temporary = True
    if generator is None:
        device = next(model.parameters()).device
        generator = make_generator(seed, device) if seed is not None else None
    layers = list(quantized_modules(model))
    masks: Dict[str, Tensor] = {}
    try:
        for name, module, fq in layers:
            w = module.parametrizations.weight.original
            fq.flip_mask = bit_error_mask(w.shape, fq.cfg.bits, rate, generator=generator, device=w.device)
            masks[name] = fq.flip_mask
        yield masks
    finally:
        for _, _, fq in layers:
            fq.flip_mask = None
        if temporary:
            dequantize_model(model)


def clear_bit_errors(model: nn.Module) -> None:
    """Remove any injected flip masks (e.g. after an interrupted manual injection)."""
    for _, _, fq in quantized_modules(model):
        fq.flip_mask = None


def has_quantized_weights(model: nn.Module) -> bool:
    return any(isinstance(p, FakeQuantize) for _, _, p in quantized_modules(model))
