"""Threat models: the sets of perturbations an adversary may choose from."""

from .base import ThreatModel, db_to_ratio, per_unit
from .norms import L1Ball, L2Ball, LinfBall
from .audio import PeakDBBall, SNRBall, db_x, snr_db

__all__ = ["ThreatModel", "LinfBall", "L2Ball", "L1Ball", "per_unit", "db_to_ratio",
           "SNRBall", "PeakDBBall", "snr_db", "db_x"]

from .weights import WeightBall, perturbed_weights  # noqa: E402  (weight-space threat model)

__all__ += ["WeightBall", "perturbed_weights"]

from .joint import Joint  # noqa: E402  (several inputs, each with its own budget)

__all__ += ["Joint"]

from .latent import LatentAdapter, LatentBall  # noqa: E402  (latent space of a generative model)

__all__ += ["LatentBall", "LatentAdapter"]
from .graph import BinaryFeatureFlips, EdgeFlips, FeatureBall  # noqa: E402  (graph structure and node features)
__all__ += ["EdgeFlips", "FeatureBall", "BinaryFeatureFlips"]
