"""Certified accuracy at several L2 radii (randomized smoothing's headline number)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor
from torchmetrics import Metric

from ..errors import check_finite_nonneg
from .functional import certified_accuracy_compute, certified_accuracy_update


class CertifiedAccuracy(Metric):
    """Fraction of examples whose certified prediction is correct with radius at least ``r``, for each ``r``.

    Cohen et al. 2019 (https://arxiv.org/abs/1902.02918), Sec. 4 ("approximate certified test accuracy"):

    .. math:: \\mathrm{CA}(r) = \\frac{1}{N} \\sum_i \\mathbb 1[g(x_i) = y_i \\wedge R_i \\ge r]

    Abstentions (class -1) count as wrong, so the curve is non-increasing in ``r`` and ``CA(0)`` is the
    smoothed classifier's (non-abstaining) accuracy.

    Args:
        radii: the radii to report, each ``>= 0``.

    ``update(certificate, target)`` takes a :class:`~mmrobust.certify.Certificate`, or
    ``update(prediction, radius, target)`` the tensors; ``compute()`` returns a ``(len(radii),)`` tensor.

    Example:
        >>> import torch
        >>> from mmrobust.metrics import CertifiedAccuracy
        >>> metric = CertifiedAccuracy(radii=[0.0, 0.5])
        >>> metric.update(torch.tensor([0, 1, -1]), torch.tensor([0.7, 0.2, 0.0]), torch.tensor([0, 1, 1]))  # -1: abstain
        >>> metric.compute()
        tensor([0.6667, 0.3333], dtype=torch.float64)
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), **kwargs):
        super().__init__(**kwargs)
        radii = [check_finite_nonneg(f"radii[{i}]", r) for i, r in enumerate(radii)]
        if not radii:
            raise ValueError("radii must name at least one radius >= 0")
        self.radii = radii
        self.add_state("certified_correct", default=torch.zeros(len(radii), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, prediction, radius: Union[Tensor, None] = None, target: Optional[Tensor] = None) -> None:
        if target is None:  # update(certificate, target)
            if radius is None or not hasattr(prediction, "radius"):
                raise TypeError("call update(certificate, target) or update(prediction, radius, target)")
            prediction, radius, target = prediction.prediction, prediction.radius, radius
        counts, total = certified_accuracy_update(prediction, radius, target, self.radii)
        self.certified_correct += counts.to(self.certified_correct.device)
        self.total += total

    def compute(self) -> Tensor:
        return certified_accuracy_compute(self.certified_correct, self.total, "CertifiedAccuracy.compute() called before any update()")

__all__ = ["CertifiedAccuracy"]
