"""Certified accuracy of sparse randomized smoothing over (additions, deletions) radii (Bojchevski et al. 2020)."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torchmetrics import Metric

from ..errors import check_int
from .functional import certified_accuracy_compute, sparse_certified_accuracy_update


class SparseCertifiedAccuracy(Metric):
    """Fraction of nodes whose smoothed prediction is correct *and* certified for each radius
    ``(r_add, r_del)``: :math:`\\frac{1}{N}\\sum_v \\mathbb 1[g(A)_v = y_v \\wedge \\text{certified}_v(r_a, r_d)]`
    (Bojchevski et al. 2020, https://arxiv.org/abs/2008.12952, Sec. 5 "certified ratio" restricted to correct
    predictions), the graph counterpart of :class:`~mmrobust.metrics.CertifiedAccuracy`.

    ``update(certificate, target, mask=None)`` takes a :class:`~mmrobust.graph.certify.SparseCertificate` and node
    labels (``mask`` selects the evaluated nodes, e.g. ``data.test_mask``); ``compute()`` returns a
    ``(len(radii),)`` tensor.  Abstentions count as wrong.

    Example:
        >>> import torch
        >>> from mmrobust.graph.certify import SparseCertificate
        >>> from mmrobust.metrics import SparseCertifiedAccuracy
        >>> certificate = SparseCertificate(          # normally SparseSmoothing(model, ...).certify(data)
        ...     prediction=torch.tensor([0, 1, 1, -1]), p_lower=torch.tensor([0.99, 0.9, 0.6, 0.4]),
        ...     counts=torch.zeros(4, 2), p_plus=0.01, p_minus=0.4)
        >>> metric = SparseCertifiedAccuracy(radii=[(0, 0), (0, 1), (0, 2)])
        >>> metric.update(certificate, torch.tensor([0, 1, 0, 1]))     # node 2 is wrong, node 3 abstains
        >>> metric.compute()
        tensor([0.5000, 0.5000, 0.2500], dtype=torch.float64)
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
        counts, total = sparse_certified_accuracy_update(certificate, target, self.radii, mask)
        self.certified_correct += counts.to(self.certified_correct.device)
        self.total += total

    def compute(self) -> Tensor:
        return certified_accuracy_compute(self.certified_correct, self.total, "SparseCertifiedAccuracy.compute() called before any update()")

__all__ = ["SparseCertifiedAccuracy"]
