"""Small tensor helpers shared across modules."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor


def rand(shape: Sequence[int], generator: Optional[torch.Generator], like: Tensor) -> Tensor:
    """``torch.rand`` on ``like``'s device and dtype, drawing from ``generator`` wherever it lives."""
    if generator is None or generator.device == like.device:
        return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)
    return torch.rand(shape, generator=generator, dtype=like.dtype).to(like.device)


def randn(shape: Sequence[int], generator: Optional[torch.Generator], like: Tensor) -> Tensor:
    """``torch.randn`` on ``like``'s device and dtype, drawing from ``generator`` wherever it lives."""
    if generator is None or generator.device == like.device:
        return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
    return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)


def make_generator(seed: Optional[int], device: torch.device | str = "cpu") -> Optional[torch.Generator]:
    """A generator seeded with ``seed`` (``None`` -> use the global RNG)."""
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g
