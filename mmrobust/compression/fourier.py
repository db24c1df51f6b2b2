"""Convolution kernels parametrised by their Fourier coefficients, pruned to sparsity in the Fourier domain.

Each kernel ``w`` of a Conv2d (2-D spatial FFT) or Conv1d (1-D FFT, e.g. speech models) is stored as its
real-input DFT :math:`\\hat w = \\mathcal F(w)` (``torch.fft.rfftn`` over the spatial axes, complex
values kept as real pairs); the layer uses

.. math:: w = \\mathcal F^{-1}(\\hat w \\odot m)

with a 0/1 mask ``m`` over the coefficients (``torch.fft.irfftn`` with the kernel size, so the result is
real). With ``m = 1`` this reproduces the kernel exactly up to float rounding. Pruning keeps the
largest-magnitude coefficients :math:`|\\hat w_k|` (globally or per layer). Sparsity in the frequency
domain of conv filters is the compression studied by Liu et al. 2018, "Frequency-domain dynamic pruning
for CNNs" (NeurIPS 2018, magnitude pruning of DCT coefficients), and low-frequency kernels are
linked to robustness by Wang et al. 2020, "High-frequency component helps explain the generalization of
CNNs" (https://arxiv.org/abs/1905.13545).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple, Type

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import check_choice, check_fraction
from .quantization import own_parametrized_class

__all__ = ["FourierKernel", "fourier_parametrize", "fourier_modules", "fourier_prune", "fourier_stats",
           "remove_fourier"]


class FourierKernel(nn.Module):
    """Parametrisation ``weight = irfftn(coefficients * mask)`` over the last ``spatial_dims`` axes.

    The trainable ``original`` is ``view_as_real(rfftn(weight))`` (set through :meth:`right_inverse`);
    ``mask`` is a buffer with one entry per complex coefficient.
    """

    def __init__(self, weight: Tensor, spatial_dims: int):
        super().__init__()
        self.spatial_dims = spatial_dims
        self.kernel_size = tuple(weight.shape[-spatial_dims:])
        spec_shape = list(weight.shape)
        spec_shape[-1] = spec_shape[-1] // 2 + 1
        self.register_buffer("mask", torch.ones(spec_shape, dtype=weight.dtype, device=weight.device))

    @property
    def dims(self) -> Tuple[int, ...]:
        return tuple(range(-self.spatial_dims, 0))

    def forward(self, coefficients: Tensor) -> Tensor:
        work = _fft_precision(coefficients)
        spec = torch.view_as_complex(work) * self.mask.to(work.dtype)
        # dims shift by one: the real pair axis is gone in the complex view
        return torch.fft.irfftn(spec, s=self.kernel_size, dim=self.dims).to(coefficients.dtype)

    def right_inverse(self, weight: Tensor) -> Tensor:
        coefficients = torch.fft.rfftn(_fft_precision(weight), dim=self.dims)
        return torch.view_as_real(coefficients).contiguous().to(weight.dtype)

    def magnitudes(self, coefficients: Tensor) -> Tensor:
        return torch.view_as_complex(_fft_precision(coefficients.detach())).abs()


def _fft_precision(t: Tensor) -> Tensor:
    """``t`` in float32 when it is half precision (Trainer(precision="bf16-true")): there are no bf16
    complex numbers, and CPU FFTs do not take float16."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def fourier_modules(model: nn.Module) -> List[Tuple[str, nn.Module, FourierKernel]]:
    out = []
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, FourierKernel):
                    out.append((name, module, p))
    return out


def fourier_parametrize(model: nn.Module, *, types: Sequence[Type[nn.Module]] = (nn.Conv1d, nn.Conv2d),
                        exclude: Sequence[str] = ()) -> nn.Module:
    """Re-parametrise every conv kernel of ``types`` by its Fourier coefficients (in place; idempotent).

    Do it before creating the optimizer: the trainable parameter becomes the coefficients.
    """
    done = {id(m) for _, m, _ in fourier_modules(model)}
    found = 0
    for name, module in model.named_modules():
        if not isinstance(module, tuple(types)) or name in exclude or id(module) in done:
            continue
        if parametrize.is_parametrized(module, "weight"):
            raise ValueError(f"layer {name!r} already has a weight parametrisation; apply the Fourier one first")
        spatial = module.weight.dim() - 2
        if spatial not in (1, 2):
            raise ValueError(f"layer {name!r}: Fourier kernels support 1-D and 2-D convolutions, got {spatial}-D")
        parametrize.register_parametrization(module, "weight", FourierKernel(module.weight, spatial))
        found += 1
    if found == 0 and not done:
        raise ValueError(f"model has no layer of types {[t.__name__ for t in types]} to parametrise")
    return model


@torch.no_grad()
def fourier_prune(model: nn.Module, sparsity: float, *, scope: str = "global") -> None:
    """Mask the smallest-magnitude Fourier coefficients until ``sparsity`` of them are zero (masks only grow)."""
    sparsity = check_fraction("sparsity", sparsity)
    check_choice("scope", scope, {"global", "layer"})
    layers = fourier_modules(model)
    if not layers:
        raise ValueError("model has no Fourier-parametrised kernels; call fourier_parametrize(model) first")
    scores = []
    for _, module, fk in layers:
        mag = fk.magnitudes(module.parametrizations.weight.original)
        scores.append(torch.where(fk.mask.bool(), mag, torch.full_like(mag, -1.0)))

    def top(s: Tensor, keep: int) -> Tensor:
        m = torch.zeros(s.numel(), dtype=s.dtype, device=s.device)
        if keep > 0:
            m[torch.topk(s.reshape(-1), keep, sorted=False).indices] = 1
        return m.reshape(s.shape)

    if scope == "layer":
        masks = [top(s, s.numel() - int(round(sparsity * s.numel()))) for s in scores]
    else:
        flat = torch.cat([s.reshape(-1) for s in scores])
        mask = top(flat, flat.numel() - int(round(sparsity * flat.numel())))
        masks, start = [], 0
        for s in scores:
            masks.append(mask[start:start + s.numel()].reshape(s.shape))
            start += s.numel()
    for (_, _, fk), m in zip(layers, masks):
        fk.mask.copy_(m)


def fourier_stats(model: nn.Module) -> Dict[str, float]:
    """Compression in the Fourier domain.

    ``coefficients``/``kept``: complex coefficients of the real DFTs and how many are unmasked;
    ``sparsity`` = 1 - kept/coefficients; ``spatial_weights``: the kernels' weight count;
    ``compression_ratio`` = spatial weights / real numbers stored (2 per kept complex coefficient).
    """
    total = kept = spatial = 0
    for _, module, fk in fourier_modules(model):
        total += fk.mask.numel()
        kept += int(fk.mask.sum())
        spatial += module.weight.numel()
    if total == 0:
        raise ValueError("model has no Fourier-parametrised kernels")
    return {"coefficients": total, "kept": kept, "sparsity": 1 - kept / total, "spatial_weights": spatial,
            "compression_ratio": spatial / max(1, 2 * kept)}


def remove_fourier(model: nn.Module) -> nn.Module:
    """Bake the (masked) kernels back into plain spatial weights."""
    for _, module, _ in fourier_modules(model):
        kernel = module.weight.detach().clone()
        # the stored spectrum has another shape than the kernel, so it cannot be overwritten in place
        own_parametrized_class(module)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        module.weight = nn.Parameter(kernel)
    return model
