"""Robustness metrics: torchmetrics ``Metric``s fed by :class:`~mmrobust.attacks.AttackResult`s."""

from .bit_errors import BitErrorAccuracy
from .certified import CertifiedAccuracy
from .certified_graph import SparseCertifiedAccuracy
from .confidence import ConfidenceThresholdedError
from .flatness import WeightFlatness
from .geometry import BoundaryDistance, GeometryStatistic
from .minimal_perturbation import MinimalPerturbation
from . import functional
from .functional import worst_case_robust
from .robust_accuracy import AttackSuccessRate, CleanAccuracy, RobustAccuracy

__all__ = [
    "RobustAccuracy", "CleanAccuracy", "AttackSuccessRate", "worst_case_robust", "MinimalPerturbation",
    "ConfidenceThresholdedError", "CertifiedAccuracy", "SparseCertifiedAccuracy", "BoundaryDistance", "GeometryStatistic",
    "BitErrorAccuracy", "WeightFlatness", "functional",
]
