"""Functional twins of the robustness metrics (torchmetrics' style): one batch in, the value out.

Every metric class in :mod:`mmrobust.metrics` has a twin here (``RobustAccuracy`` -> :func:`robust_accuracy`,
``MinimalPerturbation`` -> :func:`minimal_perturbation`, ...). The class accumulates what ``*_update`` returns
for each batch and its ``compute`` calls the matching ``*_compute``; the twin chains the two for a single
batch. The twins of :class:`~mmrobust.metrics.BoundaryDistance`, :class:`~mmrobust.metrics.GeometryStatistic`,
:class:`~mmrobust.metrics.BitErrorAccuracy` and :class:`~mmrobust.metrics.WeightFlatness` live beside their
classes (their helpers and model measurements are there) and are imported here. Example:

>>> import torch
>>> from mmrobust.attacks import AttackResult
>>> from mmrobust.metrics.functional import attack_success_rate, clean_accuracy, robust_accuracy
>>> y = torch.tensor([0, 1, 1, 0])
>>> clean = torch.tensor([[2., 0], [0, 2], [2, 0], [2, 0]])      # the third output is already wrong
>>> adv = torch.tensor([[0., 2], [0, 2], [2, 0], [2, 0]])        # the attack flips the first one
>>> r = AttackResult(batch=None, inputs={}, target=y, clean_logits=clean, logits=adv,
...                  success=adv.argmax(1) != y, loss=torch.zeros(4), size={})
>>> robust_accuracy(r), clean_accuracy(r), attack_success_rate(r)
(tensor(0.5000), tensor(0.7500), tensor(0.3333))
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..attacks.result import AttackResult, check_verified
from ..errors import check_fraction

Results = Union[AttackResult, Sequence[AttackResult]]

__all__ = ["robust_accuracy", "clean_accuracy", "attack_success_rate", "worst_case_robust", "as_result_list",
           "minimal_perturbation", "confidence_thresholded_error", "certified_accuracy", "sparse_certified_accuracy",
           "boundary_distance", "geometry_statistic", "bit_error_accuracy", "weight_flatness"]


def as_result_list(results: Results, argument: str = "results") -> list:
    """One result or several results for the same batch (several attacks) as a checked list."""
    if isinstance(results, AttackResult):
        results = [results]
    if not isinstance(results, (list, tuple)) or not results or not all(isinstance(r, AttackResult) for r in results):
        raise TypeError(f"{argument} must be an AttackResult or a non-empty list of AttackResults for the same batch, "
                        f"got {type(results).__name__}")
    first = results[0]
    for r in results[1:]:
        if r.target.shape != first.target.shape or not bool(torch.equal(r.target.to(first.target.device),
                                                                         first.target)):
            raise ValueError(f"all {argument} must come from the same batch (same outputs and labels); "
                             f"got targets of shapes {tuple(first.target.shape)} and {tuple(r.target.shape)} "
                             "or different labels")
    for i, r in enumerate(results):
        check_verified(r, f"{argument}[{i}]")
    return list(results)


def worst_case_robust(results: Results) -> Tensor:
    """Per output: correct on the clean input and on the perturbed input of *every* attack."""
    results = as_result_list(results)
    robust = results[0].clean_correct
    for r in results:
        robust = robust & r.adv_correct.to(robust.device)
    return robust


def ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` as a float, NaN when nothing was counted (an empty evaluation has no accuracy)."""
    return num.float() / den.float() if bool(den > 0) else torch.tensor(float("nan"), device=num.device)


def accuracy_update(results: Results) -> Tuple[Tensor, Tensor, int]:
    """Counts of one batch: robust outputs (worst case over the results), clean-correct outputs, outputs."""
    results = as_result_list(results)
    robust = worst_case_robust(results)
    return robust.sum(), results[0].clean_correct.sum(), robust.numel()


def robust_accuracy(results: Results) -> Tensor:
    """Worst-case robust accuracy of one batch (see :class:`~mmrobust.metrics.RobustAccuracy`)."""
    robust, _, total = accuracy_update(results)
    return ratio(robust, torch.tensor(total))


def clean_accuracy(results: Results) -> Tensor:
    """Accuracy on the clean inputs of one batch (see :class:`~mmrobust.metrics.CleanAccuracy`)."""
    _, clean, total = accuracy_update(results)
    return ratio(clean, torch.tensor(total))


def attack_success_update(results: Results) -> Tuple[Tensor, Tensor]:
    """Counts of one batch: clean-correct outputs some attack broke, and clean-correct outputs."""
    results = as_result_list(results)
    correct = results[0].clean_correct
    broken = torch.zeros_like(correct)
    for r in results:
        broken = broken | r.success.to(correct.device).bool()
    return (broken & correct).sum(), correct.sum()


def attack_success_rate(results: Results) -> Tensor:
    """Attack success rate of one batch (see :class:`~mmrobust.metrics.AttackSuccessRate`)."""
    return ratio(*attack_success_update(results))


# -- minimal perturbation (MinimalPerturbation) -----------------------------------------------------

def minimal_perturbation_update(result: AttackResult, name: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """Per output of one batch: the minimal perturbation size (``0`` for clean errors, ``inf`` where the
    attack found nothing) and whether the clean input was classified correctly."""
    if not isinstance(result, AttackResult):
        raise TypeError(f"result must be an AttackResult of a minimal-norm attack, got {type(result).__name__}")
    correct = result.clean_correct
    size = result.output_size(name).to(correct.device).float()
    size = torch.where(result.success.to(correct.device).bool(), size, torch.full_like(size, math.inf))
    return torch.where(correct, size, torch.zeros_like(size)), correct


def size_quantile(sizes: Tensor, q: float) -> Tensor:
    """The ``q``-quantile of ``sizes`` by linear interpolation between the two nearest order statistics
    (NumPy's and ``torch.quantile``'s default): ``q=0.5`` is the median, the mean of the two middle values for
    an even count. Unlike ``torch.quantile`` it keeps ``inf`` entries (never-broken outputs) exact: a quantile
    that falls on or next to one is ``inf``, not NaN. NaN when ``sizes`` is empty. The one definition of the
    median and quartiles of minimal perturbation sizes in the library
    (:class:`~mmrobust.metrics.MinimalPerturbation`, :meth:`mmrobust.budget_sweep.BudgetSweep.min_norm_summary`)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be a quantile level in [0, 1], got {q!r} (e.g. q=0.5 for the median)")
    if sizes.numel() == 0:
        return torch.tensor(float("nan"))
    ordered = sizes.flatten().sort().values
    position = q * (ordered.numel() - 1)
    low, high = math.floor(position), math.ceil(position)
    frac = position - low
    if frac == 0.0:
        return ordered[low]
    return ordered[low] * (1.0 - frac) + ordered[high] * frac


def minimal_perturbation_compute(sizes: Tensor) -> Tensor:
    """The median of ``sizes`` (mean of the two middle values for an even count, :func:`size_quantile` at
    ``0.5``); NaN when empty."""
    return size_quantile(sizes, 0.5)


def minimal_perturbation(result: AttackResult, name: Optional[str] = None) -> Tensor:
    """Median minimal perturbation of one batch (see :class:`~mmrobust.metrics.MinimalPerturbation`)."""
    return minimal_perturbation_compute(minimal_perturbation_update(result, name)[0])


# -- confidence-thresholded error (ConfidenceThresholdedError) ----------------------------------------

def confidence_thresholded_error_update(results: Results) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per output: clean confidence, clean correctness, and the confidence and error of the worst-case
    adversarial point over the results (highest-confidence error, else lowest-confidence correct one)."""
    results = as_result_list(results)
    first = results[0]
    clean_conf = first.clean_logits.float().softmax(1).amax(1)
    wrong_conf = torch.full_like(clean_conf, -math.inf)
    right_conf = torch.full_like(clean_conf, math.inf)
    for r in results:
        conf = r.logits.float().softmax(1).amax(1).to(clean_conf.device)
        wrong = ~r.adv_correct.to(clean_conf.device)
        wrong_conf = torch.where(wrong, torch.maximum(wrong_conf, conf), wrong_conf)
        right_conf = torch.where(~wrong, torch.minimum(right_conf, conf), right_conf)
    adv_wrong = torch.isfinite(wrong_conf)
    return clean_conf, first.clean_correct, torch.where(adv_wrong, wrong_conf, right_conf), adv_wrong


def choose_threshold(confidence: Tensor, correct: Tensor, tpr: float) -> float:
    """The largest :math:`\\tau` keeping at least ``tpr`` of the correctly classified examples (entry
    :math:`\\lfloor n(1-\\mathrm{tpr})\\rfloor` of their confidences sorted ascending, as in the paper's code)."""
    kept = confidence[correct.bool()]
    if kept.numel() == 0:
        return 0.0
    ordered = kept.sort(descending=True).values
    k = max(1, math.ceil(tpr * kept.numel() - 1e-9))
    return float(ordered[k - 1])


def errors_at(tau: float, clean_conf: Tensor, clean_correct: Tensor, adv_conf: Tensor,
              adv_wrong: Tensor) -> Dict[str, Tensor]:
    """RErr and Err at the confidence threshold ``tau`` (Stutz et al. 2020, Sec. 4.1)."""
    clean_hit = clean_conf >= tau
    adv_hit = adv_conf >= tau
    clean_err = ~clean_correct & clean_hit
    numerator = clean_err | (adv_wrong & adv_hit)
    denominator = clean_hit | adv_hit

    def part(a: Tensor, b: Tensor) -> Tensor:
        return a.sum().float() / b.sum() if bool(b.any()) else torch.tensor(0.0, device=a.device)

    return {"robust_error": part(numerator, denominator), "clean_error": part(clean_err, clean_hit)}


def confidence_thresholded_error_compute(clean_conf: Tensor, clean_correct: Tensor, adv_conf: Tensor,
                                         adv_wrong: Tensor, tpr: float = 0.99,
                                         threshold: Optional[float] = None) -> Dict[str, Tensor]:
    """``robust_error``, ``clean_error``, ``threshold`` and ``robust_error_unthresholded`` of the outputs given."""
    if clean_conf.numel() == 0:
        nan = torch.tensor(float("nan"))
        return {"robust_error": nan, "clean_error": nan, "threshold": nan, "robust_error_unthresholded": nan}
    clean_correct, adv_wrong = clean_correct.bool(), adv_wrong.bool()
    tau = threshold if threshold is not None else choose_threshold(clean_conf, clean_correct, tpr)
    out = errors_at(tau, clean_conf, clean_correct, adv_conf, adv_wrong)
    out["threshold"] = torch.tensor(tau, device=clean_conf.device)
    out["robust_error_unthresholded"] = errors_at(0.0, clean_conf, clean_correct, adv_conf, adv_wrong)["robust_error"]
    return out


def confidence_thresholded_error(results: Results, tpr: float = 0.99,
                                 threshold: Optional[float] = None) -> Dict[str, Tensor]:
    """Confidence-thresholded errors of one batch (see :class:`~mmrobust.metrics.ConfidenceThresholdedError`)."""
    check_fraction("tpr", tpr, open_low=True)
    return confidence_thresholded_error_compute(*confidence_thresholded_error_update(results), tpr=tpr,
                                                threshold=threshold)


# -- certified accuracy (CertifiedAccuracy, SparseCertifiedAccuracy) --------------------------------------

def certified_accuracy_update(prediction: Tensor, radius: Tensor, target: Tensor,
                              radii: Sequence[float]) -> Tuple[Tensor, int]:
    """Per radius ``r``: how many examples are predicted correctly with a certified radius ``>= r``; and the
    number of examples."""
    prediction, radius, target = (torch.as_tensor(t) for t in (prediction, radius, target))
    if not (prediction.shape == radius.shape == target.shape) or prediction.dim() != 1:
        raise ValueError(f"prediction, radius and target must have the same shape (examples,), got "
                         f"{tuple(prediction.shape)}, {tuple(radius.shape)}, {tuple(target.shape)}")
    correct = prediction == target.to(prediction.device)
    thresholds = torch.tensor(list(radii), dtype=torch.float64, device=prediction.device)
    ok = correct[:, None] & (radius.to(prediction.device, torch.float64)[:, None] >= thresholds[None, :])
    return ok.sum(0), prediction.shape[0]


def certified_accuracy_compute(certified_correct: Tensor, total: Union[int, Tensor], name: str) -> Tensor:
    """``certified_correct / total`` per radius (float64)."""
    if int(total) == 0:
        raise RuntimeError(f"{name} (no examples counted)")
    return certified_correct.double() / total


def certified_accuracy(prediction: Tensor, radius: Tensor, target: Tensor,
                       radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> Tensor:
    """Certified accuracy of one batch at each radius (see :class:`~mmrobust.metrics.CertifiedAccuracy`)."""
    return certified_accuracy_compute(*certified_accuracy_update(prediction, radius, target, radii),
                                      "certified_accuracy() got no examples")


def sparse_certified_accuracy_update(certificate: Any, target: Tensor, radii: Sequence[Tuple[int, int]],
                                     mask: Optional[Tensor] = None) -> Tuple[Tensor, int]:
    """Per ``(r_add, r_del)``: how many selected nodes are predicted correctly and certified; and the number
    of selected nodes."""
    if not hasattr(certificate, "certified"):
        raise TypeError("give a SparseCertificate (from SparseSmoothing.certify), target and a mask")
    pred = certificate.prediction
    if target.shape != pred.shape:
        raise ValueError(f"target must have one label per node {tuple(pred.shape)}, got {tuple(target.shape)}")
    if mask is not None and (not isinstance(mask, Tensor) or mask.shape != pred.shape):
        # node indices (or a mask of another graph) would broadcast: one index counted every node, over 1
        raise ValueError(f"mask must be a boolean node mask of shape {tuple(pred.shape)} (e.g. data.test_mask), "
                         f"got {getattr(mask, 'shape', type(mask).__name__)}; for node indices idx pass "
                         "torch.zeros(num_nodes, dtype=torch.bool).index_fill_(0, idx, True)")
    keep = torch.ones_like(pred, dtype=torch.bool) if mask is None else mask.to(pred.device).bool()
    correct = (pred == target.to(pred.device)) & keep
    counts = [int((correct & certificate.certified(a, d)).sum()) for a, d in radii]
    return torch.tensor(counts, dtype=torch.long), int(keep.sum())


def sparse_certified_accuracy(certificate: Any, target: Tensor,
                              radii: Sequence[Tuple[int, int]] = ((0, 0), (1, 0), (0, 1), (0, 2), (0, 4)),
                              mask: Optional[Tensor] = None) -> Tensor:
    """Sparse certified accuracy of one graph (see :class:`~mmrobust.metrics.SparseCertifiedAccuracy`)."""
    return certified_accuracy_compute(*sparse_certified_accuracy_update(certificate, target, radii, mask),
                                      "sparse_certified_accuracy() got no nodes")


from .bit_errors import bit_error_accuracy  # noqa: E402  (beside their classes; see the module docstring)
from .flatness import weight_flatness  # noqa: E402
from .geometry import boundary_distance, geometry_statistic  # noqa: E402
