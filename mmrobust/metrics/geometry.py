"""Geometry metrics: the distribution of boundary distances and its relation to confidence and correctness,
and running statistics of per-unit geometric estimates (local Lipschitz constant, curvature)."""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional import spearman_corrcoef
from torchmetrics.utilities import dim_zero_cat

from ..attacks.base import AttackResult
from ..errors import check_fraction

DEFAULT_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def _quantiles(values: Tensor, qs: Sequence[float]) -> Tensor:
    """Quantiles that tolerate ``+inf``: :func:`~mmrobust.metrics.functional.size_quantile` (the library's one
    definition, linear interpolation between order statistics) at each level of ``qs``; NaN when empty."""
    from .functional import size_quantile   # here: functional imports this module at its end

    if values.numel() == 0:
        return torch.full((len(qs),), float("nan"))
    v = values.double()
    return torch.stack([size_quantile(v, float(q)) for q in qs]).float()


def _spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation; ``+inf`` distances rank above every finite one; NaN for < 3 points."""
    if a.numel() < 3:
        return float("nan")
    a = a.double()
    finite = torch.isfinite(a)
    top = a[finite].abs().max() if bool(finite.any()) else torch.tensor(1.0, dtype=a.dtype)
    a = torch.where(finite, a, 2 * top + 1)
    return float(spearman_corrcoef(a.float(), b.float()))


class BoundaryDistance(Metric):
    """Distribution of the distance to the decision boundary and its relation to confidence and correctness.

    Per output, :math:`d(x) = \\min\\{\\|\\delta\\| : \\arg\\max f(x+\\delta) \\ne \\hat y\\}` as measured by a
    minimal-norm attack (Fawzi et al. 2018, https://arxiv.org/abs/1802.08686, Eq. 1). ``compute()`` returns

    * ``median``, ``q10`` ... ``q90``: quantiles of :math:`d` (``+inf`` counts as larger than everything),
    * ``fraction_unbroken``: share of outputs for which no adversarial example was found (:math:`d=\\infty`),
    * ``median_correct`` / ``median_incorrect``: medians over correctly / wrongly classified outputs,
    * ``spearman_correct`` / ``spearman_incorrect``: Spearman's :math:`\\rho` between :math:`d` and the clean
      confidence :math:`\\max_k \\mathrm{softmax}(f(x))_k` within each group (a well-behaved model is
      confident far from its boundary),
    * ``count_correct`` / ``count_incorrect``: how many outputs each group holds.

    Every key is always present: a statistic with no outputs to summarise (a group that is empty, or no
    update yet) is NaN, like the library's other metrics before their first update.

    Feed it ``update(result)`` with a result of an attack run through
    :func:`~mmrobust.geometry.boundary.with_predicted_labels` (so misclassified inputs get their distance to
    where the prediction changes; correctness is read from ``result.extras["true_target"]``), or of a plain
    minimal-norm attack (misclassified inputs then count as distance 0), or ``update(distances=...,
    confidence=..., correct=...)`` directly.

    Example:
        >>> import torch
        >>> from mmrobust.metrics import BoundaryDistance
        >>> metric = BoundaryDistance()
        >>> metric.update(distances=torch.tensor([0.1, 0.5, 0.2, float("inf"), 0.05]),   # or update(attack_result)
        ...               confidence=torch.tensor([0.6, 0.9, 0.7, 0.99, 0.5]),
        ...               correct=torch.tensor([True, True, True, True, False]))
        >>> out = metric.compute()
        >>> [round(float(out[k]), 3) for k in ("median", "fraction_unbroken", "median_correct", "spearman_correct")]
        [0.2, 0.2, 0.35, 1.0]
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, quantiles: Sequence[float] = DEFAULT_QUANTILES, **kwargs):
        super().__init__(**kwargs)
        self.quantiles = tuple(check_fraction("quantiles", q) for q in quantiles)
        self.add_state("distances", default=[], dist_reduce_fx="cat")
        self.add_state("confidence", default=[], dist_reduce_fx="cat")
        self.add_state("correct", default=[], dist_reduce_fx="cat")

    def update(self, result: Optional[AttackResult] = None, *, name: Optional[str] = None,
               distances: Optional[Tensor] = None, confidence: Optional[Tensor] = None,
               correct: Optional[Tensor] = None) -> None:
        distances, confidence, correct = boundary_distance_update(result, name=name, distances=distances,
                                                                  confidence=confidence, correct=correct)
        self.distances.append(distances.detach().float().clone())
        self.confidence.append(confidence.detach().float().clone())
        self.correct.append(correct.detach().bool().clone())

    def compute(self) -> Dict[str, Tensor]:
        """The summary above; before any update (or after updates with no outputs) the same keys, every
        statistic NaN and both counts 0."""
        if isinstance(self.distances, list) and not self.distances:
            empty = torch.zeros(0)
            return boundary_distance_compute(empty, empty, empty.bool(), self.quantiles)
        return boundary_distance_compute(dim_zero_cat(self.distances), dim_zero_cat(self.confidence),
                                         dim_zero_cat(self.correct), self.quantiles)


class GeometryStatistic(Metric):
    """Running summary (mean, max, median, 90% quantile) of a per-unit geometric estimate, e.g.
    :func:`~mmrobust.geometry.local_lipschitz` (CLIP, Bungert et al. 2021, Eq. 2.3) or
    :func:`~mmrobust.geometry.curvature` (CURE, Moosavi-Dezfooli et al. 2019, Eq. 6):
    :math:`\\bar v = \\frac1N\\sum_n v_n`, :math:`\\max_n v_n`.

    ``update(values)`` takes a ``(units,)`` tensor of finite values.

    Example:
        >>> import torch
        >>> from mmrobust.metrics import GeometryStatistic
        >>> metric = GeometryStatistic()
        >>> metric.update(torch.tensor([1.0, 2.0, 4.0]))        # e.g. local Lipschitz estimates of one batch
        >>> metric.update(torch.tensor([3.0]))
        >>> {k: round(float(v), 3) for k, v in metric.compute().items()}
        {'mean': 2.5, 'max': 4.0, 'median': 2.5, 'q90': 3.7}
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(self, values: Tensor) -> None:
        self.values.append(geometry_statistic_update(values).clone())

    def compute(self) -> Dict[str, Tensor]:
        """``mean``, ``max``, ``median``, ``q90``; all NaN before any update (or with no values)."""
        if isinstance(self.values, list) and not self.values:
            return geometry_statistic_compute(torch.zeros(0))
        return geometry_statistic_compute(dim_zero_cat(self.values))


def boundary_distance_update(result: Optional[AttackResult] = None, *, name: Optional[str] = None,
                             distances: Optional[Tensor] = None, confidence: Optional[Tensor] = None,
                             correct: Optional[Tensor] = None):
    """Per output of one batch: the boundary distance, the clean confidence and clean correctness (read from
    ``result``, or the tensors given), checked."""
    if result is not None:
        if not isinstance(result, AttackResult):
            raise TypeError(f"result must be an AttackResult of a minimal-norm attack, got {type(result).__name__}")
        from ..geometry.boundary import boundary_distances

        distances = boundary_distances(result, name)
        confidence = result.clean_logits.softmax(1).amax(1)
        true = result.extras.get("true_target", result.target)
        correct = result.clean_logits.argmax(1) == true.to(result.clean_logits.device)
    if distances is None or confidence is None or correct is None:
        raise ValueError("pass an AttackResult or all of distances, confidence and correct")
    if not (distances.shape == confidence.shape == correct.shape) or distances.dim() != 1:
        raise ValueError(f"distances, confidence and correct must be 1-D of equal length, got "
                         f"{tuple(distances.shape)}, {tuple(confidence.shape)}, {tuple(correct.shape)}")
    if bool((distances < 0).any()) or bool(torch.isnan(distances).any()):
        raise ValueError("distances must be >= 0 (or +inf), got negative or NaN values")
    return distances.detach().float(), confidence.detach().float(), correct.detach().bool()


def boundary_distance_compute(d: Tensor, c: Tensor, ok: Tensor,
                              quantiles: Sequence[float] = DEFAULT_QUANTILES) -> Dict[str, Tensor]:
    """:class:`BoundaryDistance`'s summary of the distances ``d``, confidences ``c`` and correctness ``ok``."""
    ok = ok.bool()
    q = _quantiles(d, quantiles)
    out = {f"q{round(p * 100):02d}": q[i] for i, p in enumerate(quantiles)}
    out["median"] = _quantiles(d, [0.5])[0]
    out["fraction_unbroken"] = torch.isinf(d).float().mean()
    out["median_correct"] = _quantiles(d[ok], [0.5])[0]
    out["median_incorrect"] = _quantiles(d[~ok], [0.5])[0]
    out["spearman_correct"] = torch.tensor(_spearman(d[ok], c[ok]))
    out["spearman_incorrect"] = torch.tensor(_spearman(d[~ok], c[~ok]))
    out["count_correct"] = ok.sum().float()
    out["count_incorrect"] = (~ok).sum().float()
    return out


def boundary_distance(result: Optional[AttackResult] = None, *, name: Optional[str] = None,
                      quantiles: Sequence[float] = DEFAULT_QUANTILES, **tensors: Tensor) -> Dict[str, Tensor]:
    """:class:`BoundaryDistance` of one batch (``result``, or ``distances=``, ``confidence=``, ``correct=``)."""
    quantiles = tuple(check_fraction("quantiles", q) for q in quantiles)
    return boundary_distance_compute(*boundary_distance_update(result, name=name, **tensors), quantiles)


def geometry_statistic_update(values: Tensor) -> Tensor:
    """``values`` checked (a 1-D tensor of finite per-unit estimates), as float."""
    if not isinstance(values, Tensor) or values.dim() != 1:
        raise ValueError(f"values must be a 1-D tensor of per-unit estimates, got {getattr(values, 'shape', values)}")
    if not bool(torch.isfinite(values).all()):
        bad = int((~torch.isfinite(values)).sum())
        raise ValueError(f"values must be finite, got {bad} NaN/Inf among {values.numel()} values")
    return values.detach().float()


def geometry_statistic_compute(v: Tensor) -> Dict[str, Tensor]:
    """Mean, max, median and 90 % quantile of the per-unit values ``v``; all NaN when ``v`` is empty."""
    q = _quantiles(v, [0.5, 0.9])
    if v.numel() == 0:
        nan = torch.tensor(math.nan)
        return {"mean": nan, "max": nan.clone(), "median": q[0], "q90": q[1]}
    return {"mean": v.mean(), "max": v.max(), "median": q[0], "q90": q[1]}


def geometry_statistic(values: Tensor) -> Dict[str, Tensor]:
    """:class:`GeometryStatistic` of one batch of per-unit values."""
    return geometry_statistic_compute(geometry_statistic_update(values))
