"""Certified accuracy of sparse randomized smoothing over (additions, deletions) radii (Bojchevski et al. 2020)."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torchmetrics import Metric

from ..errors import check_int


class SparseCertifiedAccuracy(Metric):
    """Fraction of nodes whose smoothed prediction is correct *and* certified for each radius
    ``(r_add, r_del)``: :math:`\\frac{1}{N}\\sum_v \\mathbb 1[g(A)_v = y_v \\wedge \\text{certified}_v(r_a, r_d)]`
    (Bojchevski et al. 2020, https://arxiv.org/abs/2008.12952, Sec. 5 "certified ratio" restricted to correct
    predictions), the graph counterpart of :class:`~mmrobust.metrics.CertifiedAccuracy`.

    ``update(certificate, target, mask=None)`` takes a :class:`~mmrobust.graph.certify.SparseCertificate` and node
    labels (``mask`` selects the evaluated nodes, e.g. ``data.test_mask``); ``compute()`` returns a
    ``(len(radii),)`` tensor.  Abstentions count as wrong.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, radii: Sequence[Tuple[int, int]] = ((0, 0), (1, 0), (0, 1), (0, 2), (0, 4)), **kwargs):
        super().__init__(**kwargs)
        radii = [tuple(r) for r in radii]
        if not radii or any(len(r) != 2 for r in radii):
            raise ValueError("radii must be a non-empty list of (additions, deletions) pairs, e.g. [(0, 0), (0, 1)]")
        self.radii = [(check_int("r_add", a, 0), check_int("r_del", d, 0)) for a, d in radii]
        self.add_state("certified_correct", default=torch.zeros(len(radii), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, certificate, target: Tensor, mask: Optional[Tensor] = None) -> None:
        if not hasattr(certificate, "certified"):
            raise TypeError("update takes a SparseCertificate (from SparseSmoothing.certify), target and a mask")
        pred = certificate.prediction
        if target.shape != pred.shape:
            raise ValueError(f"target must have one label per node {tuple(pred.shape)}, got {tuple(target.shape)}")
        keep = torch.ones_like(pred, dtype=torch.bool) if mask is None else mask.to(pred.device).bool()
        correct = (pred == target.to(pred.device)) & keep
        dev = self.certified_correct.device
        counts = [int((correct & certificate.certified(a, d)).sum()) for a, d in self.radii]
        self.certified_correct += torch.tensor(counts, dtype=torch.long, device=dev)
        self.total += int(keep.sum())

    def compute(self) -> Tensor:
        if int(self.total) == 0:
            raise RuntimeError("SparseCertifiedAccuracy.compute() called before any update()")
        return self.certified_correct.double() / self.total


__all__ = ["SparseCertifiedAccuracy"]
