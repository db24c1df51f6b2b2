"""Distance to the decision boundary from a minimal-norm attack, and the accuracy-vs-budget curve."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ..attacks.base import AttackResult
from ..errors import check_finite_nonneg
from .functional import minimal_perturbation_compute, minimal_perturbation_update


class MinimalPerturbation(Metric):
    """Median minimal adversarial perturbation size and robust accuracy as a function of the budget.

    Minimal-norm attacks (DDN, Rony et al. 2019, https://arxiv.org/abs/1811.09600; FMN, Pintor et al.
    2021, https://arxiv.org/abs/2102.12827) return, per output, the smallest perturbation found that
    changes the decision. With :math:`r_n` that size (:math:`0` when the clean input is already
    misclassified, :math:`+\\infty` when the attack found no adversarial example), one run gives both

    .. math:: \\operatorname{median}_n r_n \\qquad\\text{and}\\qquad
              \\mathrm{RA}(\\epsilon) = \\frac1N\\sum_n \\mathbb 1[f(x_n)=y_n]\\,\\mathbb 1[r_n > \\epsilon]

    (the "robust accuracy vs. epsilon" curves of Rony et al. 2019, Fig. 3). The median over all outputs,
    clean errors included at 0, is the number those papers report; it is ``inf`` when more than half the
    outputs were never broken.

    ``update(result, name=None)`` reads ``result.output_size(name)`` (the size in the threat model's
    own measure) and ``result.success``. ``inf`` means *not found within the attack's search*: feed
    results of uncapped attacks (``FMN(cap=False)``, the default); a capped attack reports ``inf`` for every
    output it could not break within its radius, so :meth:`accuracy_curve` beyond that radius would count
    those outputs as robust. Exact medians are not additive, so the sizes are kept as a
    ``cat`` state and gathered across processes.

    Example:
        >>> from mmrobust.attacks import FMN
        >>> from mmrobust.metrics import MinimalPerturbation
        >>> from mmrobust.threats import L2Ball
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> metric = MinimalPerturbation()
        >>> metric.update(FMN(L2Ball(1.0, lower=0, upper=1), steps=10)(model, [x, y]))
        >>> curve = metric.accuracy_curve([0.0, 0.5])            # robust accuracy at each budget
        >>> bool(curve[0] >= curve[1]), metric.compute().dim()
        (True, 0)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("sizes", default=[], dist_reduce_fx="cat")
        self.add_state("clean_correct", default=[], dist_reduce_fx="cat")

    def update(self, result: AttackResult, name: Optional[str] = None) -> None:
        size, correct = minimal_perturbation_update(result, name)
        self.sizes.append(size.detach().clone())
        self.clean_correct.append(correct.detach().clone())

    def _gathered(self):
        if isinstance(self.sizes, list) and not self.sizes:
            return None, None
        return dim_zero_cat(self.sizes), dim_zero_cat(self.clean_correct).bool()

    def compute(self) -> Tensor:
        """Median minimal perturbation size over all outputs (the mean of the two middle values for an
        even count); NaN before any update."""
        sizes, _ = self._gathered()
        return minimal_perturbation_compute(torch.zeros(0) if sizes is None else sizes)

    def accuracy_curve(self, eps_grid: Union[Sequence[float], Tensor]) -> Tensor:
        """Robust accuracy at every budget in ``eps_grid`` (an output is robust at ``eps`` if it is
        clean-correct and its minimal perturbation is larger than ``eps``); synchronised across processes."""
        grid = torch.as_tensor(eps_grid, dtype=torch.float32).flatten()
        for e in grid.tolist():
            check_finite_nonneg("eps_grid entries", e)
        with self.sync_context(should_sync=self._to_sync, should_unsync=True):
            sizes, correct = self._gathered()
        if sizes is None or sizes.numel() == 0:
            return torch.full((grid.numel(),), float("nan"))
        grid = grid.to(sizes.device)
        robust = correct[None, :] & (sizes[None, :] > grid[:, None])
        return robust.float().mean(1)
