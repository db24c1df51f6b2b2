"""Random bit errors in quantised weights (Stutz et al. 2021, https://arxiv.org/abs/2006.13977, Sec. 3).

Each of the ``m`` bits of every quantised weight's memory word (two's complement for symmetric, unsigned
for asymmetric quantisation) flips independently with probability ``p``:

.. math:: \\tilde u_i = u_i \\oplus e_i,\\quad e_{i,j} \\sim \\text{Bernoulli}(p)\\ \\text{i.i.d. over weights } i
    \\text{ and bits } j

Patterns are drawn exactly and in ``O(pNm)`` time: the gaps between flipped bit positions of a
Bernoulli(``p``) process are i.i.d. geometric, :math:`\\lfloor \\log U / \\log(1-p) \\rfloor`, so only the
flipped positions are ever generated and touched (:class:`BitFlips` is sparse).
Injection never touches the float weights: the flips live on the :class:`FakeQuantize`
parametrisations and are removed on exit, so the clean weights come back bit-exactly, also on error.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Dict, Iterator, Optional

import torch
from torch import Tensor, nn

from ..errors import check_fraction
from ..utils import make_generator
from .quantization import (FakeQuantize, QuantizerConfig, quantize_model, quantized_modules, quantizer_input,
                           remove_quantizers)

__all__ = ["BitFlips", "sample_bit_flips", "bit_error_mask", "bit_errors", "popcount"]


@dataclass
class BitFlips:
    """A sparse bit-error pattern: XOR ``words`` for the flat element positions ``index`` of a tensor."""

    shape: torch.Size
    index: Tensor  # sorted unique flat element indices (int64)
    words: Tensor  # int32 XOR masks, one per index

    def dense(self) -> Tensor:
        """The ``int32`` XOR mask of the whole tensor (0 where nothing flips)."""
        out = torch.zeros(math.prod(self.shape), dtype=torch.int32, device=self.index.device)
        out[self.index] = self.words
        return out.reshape(self.shape)

    @property
    def num_flips(self) -> int:
        return int(popcount(self.words).sum()) if self.words.numel() else 0

    def to(self, device) -> "BitFlips":
        return BitFlips(self.shape, self.index.to(device), self.words.to(device))


def _bernoulli_positions(total: int, rate: float, generator: Optional[torch.Generator], device) -> Tensor:
    """Sorted positions in ``[0, total)`` of a Bernoulli(``rate``) process, via geometric gaps."""
    if rate == 0.0 or total == 0:
        return torch.empty(0, dtype=torch.long, device=device)
    if rate == 1.0:
        return torch.arange(total, device=device)
    log_q = math.log1p(-rate)
    chunks, last = [], -1
    expected = total * rate
    while last < total - 1:
        n = int(expected + 6 * math.sqrt(expected) + 16)
        u = 1.0 - torch.rand(n, generator=generator, dtype=torch.float64, device=device)  # in (0, 1]
        gaps = torch.floor(torch.log(u) / log_q).clamp_max(float(total)).long()
        pos = last + torch.cumsum(gaps + 1, 0)
        chunks.append(pos)
        last = int(pos[-1])
    pos = torch.cat(chunks)
    return pos[pos < total]


def sample_bit_flips(shape, bits: int, rate: float, *, generator: Optional[torch.Generator] = None,
                     device=None) -> BitFlips:
    """Flip each of the low ``bits`` bits of every element of a tensor of ``shape`` with probability ``rate``."""
    rate = check_fraction("rate", rate)
    shape = torch.Size(shape)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    pos = _bernoulli_positions(math.prod(shape) * bits, rate, generator, gen_device)
    element = pos // bits
    word = torch.bitwise_left_shift(torch.ones_like(pos, dtype=torch.int32), (pos % bits).to(torch.int32))
    index, inverse = torch.unique_consecutive(element, return_inverse=True)
    # distinct bits of one element: their sum is their OR
    words = torch.zeros(index.numel(), dtype=torch.int32, device=gen_device).index_add_(0, inverse, word)
    flips = BitFlips(shape, index, words)
    return flips.to(device) if device is not None else flips


def bit_error_mask(shape, bits: int, rate: float, *, generator: Optional[torch.Generator] = None,
                   device=None) -> Tensor:
    """Dense ``int32`` XOR masks of ``shape``: each of the low ``bits`` bits set independently with prob. ``rate``."""
    return sample_bit_flips(shape, bits, rate, generator=generator, device=device).dense()


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
               quantizer: Optional[QuantizerConfig] = None) -> Iterator[Dict[str, BitFlips]]:
    """Run ``model`` with random bit errors at ``rate`` in its quantised weights.

    Yields the :class:`BitFlips` by layer name (for inspection; ``.dense()`` gives the XOR masks). The same ``seed`` gives the same pattern,
    on any device (a ``seed`` is drawn from on the CPU and the flips moved to the weights);
    ``generator`` continues a stream instead (RandBET draws a fresh pattern per step), on its own device.
    A model without :class:`FakeQuantize` weights needs ``quantizer``: it is then quantised for the
    duration of the block (post-training quantisation) and restored afterwards.

    Example (a model without quantised weights is quantised for the block and restored after it):
        >>> import torch
        >>> from mmrobust.compression import QuantizerConfig
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> before = model[1].weight.clone()
        >>> with bit_errors(model, 0.1, seed=3, quantizer=QuantizerConfig(bits=8)) as flips:
        ...     acc = (model(x).argmax(1) == y).float().mean()
        >>> sorted(flips), flips["1"].shape, len(flips["1"].index) > 0
        (['1'], torch.Size([3, 4]), True)
        >>> torch.equal(model[1].weight, before)
        True
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
        # on the CPU whatever the model's device (the flips are moved to each weight's device), so the same
        # seed gives the same pattern on CPU and CUDA
        generator = make_generator(seed, "cpu") if seed is not None else None
    layers = list(quantized_modules(model))
    masks: Dict[str, BitFlips] = {}
    try:
        for name, module, fq in layers:
            # the quantiser's input (after a Fourier kernel or a pruning mask), not the stored original
            with torch.no_grad():
                w = quantizer_input(module, fq)
            fq.flips = sample_bit_flips(w.shape, fq.cfg.bits, rate, generator=generator, device=w.device)
            masks[name] = fq.flips
        yield masks
    finally:
        for _, _, fq in layers:
            fq.flips = None
        if temporary:
            remove_quantizers(model)   # only the quantisers added here: pruning masks / Fourier kernels stay


def clear_bit_errors(model: nn.Module) -> None:
    """Remove any injected flip masks (e.g. after an interrupted manual injection)."""
    for _, _, fq in quantized_modules(model):
        fq.flips = None


def has_quantized_weights(model: nn.Module) -> bool:
    return any(isinstance(p, FakeQuantize) for _, _, p in quantized_modules(model))
