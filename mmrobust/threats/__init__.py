"""Threat models: the sets of perturbations an adversary may choose from."""

from .audio import PeakDBBall, SNRBall, db_x, snr_db
from .base import ThreatModel, db_to_ratio, per_unit
from .graph import BinaryFeatureFlips, EdgeFlips, FeatureBall, feature_ball
from .joint import Joint
from .latent import LatentAdapter, LatentBall
from .norms import L1Ball, L2Ball, LinfBall
from .per_unit import PerUnitRadius
from .psychoacoustic import PsychoacousticBall, masking_report, masking_threshold
from .weights import WeightBall, perturbed_weights

__all__ = [
    "ThreatModel", "per_unit", "db_to_ratio",
    # input space
    "LinfBall", "L2Ball", "L1Ball", "SNRBall", "PeakDBBall", "snr_db", "db_x",
    "PsychoacousticBall", "masking_threshold", "masking_report",
    # several inputs, latent space, weight space
    "Joint", "LatentBall", "LatentAdapter", "WeightBall", "perturbed_weights", "PerUnitRadius",
    # graph structure and node features
    "EdgeFlips", "feature_ball", "FeatureBall", "BinaryFeatureFlips",
]
