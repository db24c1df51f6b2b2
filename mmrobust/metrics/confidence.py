"""Confidence-thresholded robust test error (Stutz et al. 2020, CCAT)."""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ..errors import check_fraction
from .functional import (Results, choose_threshold, confidence_thresholded_error_compute,
                         confidence_thresholded_error_update, errors_at)


class ConfidenceThresholdedError(Metric):
    """Robust test error when low-confidence predictions may be rejected.

    Stutz, Hein & Schiele 2020, "Confidence-Calibrated Adversarial Training"
    (https://arxiv.org/abs/1910.06259, Sec. 4.1). With confidence :math:`c(x) = \\max_k
    \\mathrm{softmax}(f(x))_k`, inputs with :math:`c(x) < \\tau` are rejected. The threshold is fixed
    on the *clean* examples so that a fraction ``tpr`` (99% in the paper) of the correctly classified
    clean examples is kept. With :math:`\\tilde x_n` the adversarial example of :math:`x_n`, the
    confidence-thresholded test and robust test errors (Sec. 4.1) are

    .. math::
        \\mathrm{Err}(\\tau) = \\frac{\\sum_n \\mathbb 1[f(x_n)\\ne y_n]\\,\\mathbb 1[c(x_n)\\ge\\tau]}
                                    {\\sum_n \\mathbb 1[c(x_n)\\ge\\tau]}, \\qquad
        \\mathrm{RErr}(\\tau) = \\frac{\\sum_n \\max\\{\\mathbb 1[f(x_n)\\ne y_n]\\mathbb 1[c(x_n)\\ge\\tau],\\;
                                                    \\mathbb 1[f(\\tilde x_n)\\ne y_n]\\mathbb 1[c(\\tilde x_n)\\ge\\tau]\\}}
                                     {\\sum_n \\max\\{\\mathbb 1[c(x_n)\\ge\\tau],\\; \\mathbb 1[c(\\tilde x_n)\\ge\\tau]\\}}

    i.e. an error counts only when it is made with confidence at least :math:`\\tau` (on the clean or
    on the perturbed input), and examples rejected both clean and perturbed leave the denominator. At
    :math:`\\tau = 0` RErr is the usual robust test error. This is the formula of the authors' evaluation
    code (``robust_test_error_at_confidence``), over every attacked example.

    Several attacks (a list of results for the same batch) are combined per example as the worst case
    for RErr: :math:`\\tilde x_n` is the misclassified adversarial example of highest confidence if any
    attack misclassifies, otherwise the correctly classified one of lowest confidence (which, if
    rejected, leaves the denominator). The paper's code picks the attack with the best attack
    objective instead; the objectives of different attacks are not comparable in general.

    The paper chooses :math:`\\tau` on held-out clean examples; pass ``threshold=`` (e.g. the
    ``threshold`` this metric computed on validation data) to do the same, otherwise it is chosen on
    the evaluated clean examples.

    Args:
        tpr: fraction of correctly classified clean outputs that the threshold keeps, in (0, 1].
        threshold: a fixed :math:`\\tau` in [0, 1] (e.g. chosen on held-out data) instead of choosing it
            on the evaluated clean examples.

    ``compute()`` returns a dict with ``robust_error`` (RErr), ``clean_error`` (Err), ``threshold``
    (:math:`\\tau`) and ``robust_error_unthresholded`` (RErr(0)). Choosing :math:`\\tau` needs every
    confidence, so per-output values are ``cat`` states.

    Example:
        >>> from mmrobust.attacks import PGD
        >>> from mmrobust.metrics import ConfidenceThresholdedError
        >>> from mmrobust.threats import LinfBall
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> metric = ConfidenceThresholdedError(tpr=0.99)
        >>> metric.update(PGD(LinfBall(0.1, lower=0, upper=1), steps=3, seed=0)(model, [x, y]))
        >>> sorted(metric.compute())
        ['clean_error', 'robust_error', 'robust_error_unthresholded', 'threshold']
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, tpr: float = 0.99, threshold: Optional[float] = None, **kwargs):
        super().__init__(**kwargs)
        self.tpr = check_fraction("tpr", tpr, open_low=True)
        self.threshold = None if threshold is None else check_fraction("threshold", threshold)
        self.add_state("clean_confidence", default=[], dist_reduce_fx="cat")
        self.add_state("clean_correct", default=[], dist_reduce_fx="cat")
        self.add_state("adv_confidence", default=[], dist_reduce_fx="cat")
        self.add_state("adv_wrong", default=[], dist_reduce_fx="cat")

    def update(self, results: Results) -> None:
        for state, value in zip(("clean_confidence", "clean_correct", "adv_confidence", "adv_wrong"),
                                confidence_thresholded_error_update(results)):
            getattr(self, state).append(value.detach().clone())

    #: the threshold rule and the errors at a threshold (:mod:`mmrobust.metrics.functional`)
    choose_threshold = staticmethod(choose_threshold)
    errors_at = staticmethod(errors_at)

    def compute(self) -> Dict[str, Tensor]:
        if isinstance(self.clean_confidence, list) and not self.clean_confidence:
            return confidence_thresholded_error_compute(*(torch.zeros(0),) * 4)
        return confidence_thresholded_error_compute(
            dim_zero_cat(self.clean_confidence), dim_zero_cat(self.clean_correct), dim_zero_cat(self.adv_confidence),
            dim_zero_cat(self.adv_wrong), tpr=self.tpr, threshold=self.threshold)
