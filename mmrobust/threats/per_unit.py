"""A threat model with a separate radius per unit, for budget searches."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import check_finite_nonneg
from .base import ThreatModel


class PerUnitRadius(ThreatModel):
    """``base`` with a separate radius per unit (used by budget searches); everything else is ``base``'s.

    Example:
        >>> import torch
        >>> from mmrobust.threats import L2Ball, PerUnitRadius
        >>> threat = PerUnitRadius(L2Ball(1.0), torch.tensor([0.5, 2.0]))
        >>> x = torch.zeros(2, 3)
        >>> delta = threat.project(torch.ones(2, 3), x)   # unit 0 is cut to 0.5, unit 1 (norm 1.73) fits
        >>> threat.size(delta, x)
        tensor([0.5000, 1.7321])
    """

    def __init__(self, base: ThreatModel, radii: Tensor):
        if not isinstance(base, ThreatModel):
            raise TypeError(f"base must be a ThreatModel, got {type(base).__name__}")
        super().__init__(float(radii.max()) if radii.numel() else 0.0, lower=base.lower, upper=base.upper)
        self.base = base
        self.radii = radii.detach()
        self.norm = base.norm

    def radius(self, x: Tensor) -> Tensor:
        if self.radii.shape != (x.shape[0],):
            raise ValueError(f"PerUnitRadius has {self.radii.numel()} radii for {x.shape[0]} units")
        return self.radii.to(device=x.device, dtype=x.dtype)

    def subset(self, units: Tensor) -> "PerUnitRadius":
        return PerUnitRadius(self.base, self.radii[units.to(self.radii.device)])

    def scaled(self, factor: float) -> "PerUnitRadius":
        return PerUnitRadius(self.base, self.radii * check_finite_nonneg("factor", factor))

    def random_init(self, x, generator=None):
        # a random start of the base set, stretched from the base's radius to this unit's one (units where the
        # base allows nothing start at 0)
        start = self.base.random_init(x, generator)
        base_r = self.base.radius(x)
        ratio = torch.where(base_r > 0, self.radius(x) / base_r.clamp_min(torch.finfo(x.dtype).tiny),
                            torch.zeros_like(base_r))
        return self.project(start * ratio.reshape(-1, *([1] * (x.dim() - 1))), x)

    def step(self, delta, grad, step_size):
        return self.base.step(delta, grad, step_size)

    def project(self, delta, x, radius=None):
        return self.base.project(delta, x, self.radius(x) if radius is None else radius)

    def size(self, delta, x):
        return self.base.size(delta, x)
