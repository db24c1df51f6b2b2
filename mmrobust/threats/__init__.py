"""Threat models: the sets of perturbations an adversary may choose from."""

from .base import ThreatModel, db_to_ratio, per_unit
from .norms import L1Ball, L2Ball, LinfBall

__all__ = ["ThreatModel", "LinfBall", "L2Ball", "L1Ball", "per_unit", "db_to_ratio"]

from .weights import WeightBall, perturbed_weights  # noqa: E402  (weight-space threat model)

__all__ += ["WeightBall", "perturbed_weights"]
