"""Robustness metrics: torchmetrics ``Metric``s fed by :class:`~mmrobust.attacks.AttackResult`s."""

from .bit_errors import BitErrorAccuracy
from .confidence import ConfidenceThresholdedError
from .geometry import BoundaryDistance, GeometryStatistic
from .minimal_perturbation import MinimalPerturbation
from .robust_accuracy import AttackSuccessRate, CleanAccuracy, RobustAccuracy, worst_case_robust

__all__ = ["BitErrorAccuracy", "RobustAccuracy", "CleanAccuracy", "AttackSuccessRate", "worst_case_robust", "MinimalPerturbation",
           "ConfidenceThresholdedError"]

from .certified import CertifiedAccuracy  # noqa: E402
from .flatness import WeightFlatness  # noqa: E402

__all__ += ["WeightFlatness", "CertifiedAccuracy", "BoundaryDistance", "GeometryStatistic"]
