"""Confidence-thresholded robust test error (Stutz et al. 2020, CCAT)."""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ..errors import check_fraction
from .functional import Results, as_result_list


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
        results = as_result_list(results)
        first = results[0]
        correct = first.clean_correct
        clean_conf = first.clean_logits.float().softmax(1).amax(1)
        # worst-case adversarial per output: highest-confidence error, else lowest-confidence correct
        wrong_conf = torch.full_like(clean_conf, -math.inf)
        right_conf = torch.full_like(clean_conf, math.inf)
        for r in results:
            conf = r.logits.float().softmax(1).amax(1).to(clean_conf.device)
            wrong = ~r.adv_correct.to(clean_conf.device)
            wrong_conf = torch.where(wrong, torch.maximum(wrong_conf, conf), wrong_conf)
            right_conf = torch.where(~wrong, torch.minimum(right_conf, conf), right_conf)
        adv_wrong = torch.isfinite(wrong_conf)
        adv_conf = torch.where(adv_wrong, wrong_conf, right_conf)
        self.clean_confidence.append(clean_conf.detach().clone())
        self.clean_correct.append(correct.detach().clone())
        self.adv_confidence.append(adv_conf.detach().clone())
        self.adv_wrong.append(adv_wrong.detach().clone())

    @staticmethod
    def choose_threshold(confidence: Tensor, correct: Tensor, tpr: float) -> float:
        """The largest :math:`\\tau` keeping at least ``tpr`` of the correctly classified examples (entry
        :math:`\\lfloor n(1-\\mathrm{tpr})\\rfloor` of their confidences sorted ascending, as in the paper's code)."""
        kept = confidence[correct.bool()]
        if kept.numel() == 0:
            return 0.0
        ordered = kept.sort(descending=True).values
        k = max(1, math.ceil(tpr * kept.numel() - 1e-9))
        return float(ordered[k - 1])

    @staticmethod
    def errors_at(tau: float, clean_conf: Tensor, clean_correct: Tensor, adv_conf: Tensor,
                  adv_wrong: Tensor) -> Dict[str, Tensor]:
        clean_hit = clean_conf >= tau
        adv_hit = adv_conf >= tau
        clean_err = ~clean_correct & clean_hit
        numerator = clean_err | (adv_wrong & adv_hit)
        denominator = clean_hit | adv_hit

        def ratio(a: Tensor, b: Tensor) -> Tensor:
            return a.sum().float() / b.sum() if bool(b.any()) else torch.tensor(0.0, device=a.device)

        return {"robust_error": ratio(numerator, denominator), "clean_error": ratio(clean_err, clean_hit)}

    def compute(self) -> Dict[str, Tensor]:
        if isinstance(self.clean_confidence, list) and not self.clean_confidence:
            nan = torch.tensor(float("nan"))
            return {"robust_error": nan, "clean_error": nan, "threshold": nan, "robust_error_unthresholded": nan}
        clean_conf = dim_zero_cat(self.clean_confidence)
        clean_correct = dim_zero_cat(self.clean_correct).bool()
        adv_conf = dim_zero_cat(self.adv_confidence)
        adv_wrong = dim_zero_cat(self.adv_wrong).bool()
        tau = self.threshold if self.threshold is not None else self.choose_threshold(clean_conf, clean_correct,
                                                                                       self.tpr)
        out = self.errors_at(tau, clean_conf, clean_correct, adv_conf, adv_wrong)
        out["threshold"] = torch.tensor(tau, device=clean_conf.device)
        out["robust_error_unthresholded"] = self.errors_at(0.0, clean_conf, clean_correct, adv_conf,
                                                           adv_wrong)["robust_error"]
        return out
