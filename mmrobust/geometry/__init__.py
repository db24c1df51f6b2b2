"""Geometry of robustness: boundary distance, local Lipschitz constant, curvature, decision slices and the
geometric regularisers (CLIP, CURE, input-gradient norm, GradAlign)."""

from .alignment import GradientAlignment, gradient_cosines
from ..adapters.predicted import PredictedLabelAdapter
from ..attacks.minimal_norm import MinimalNormSearch
from ..threats.per_unit import PerUnitRadius
from .boundary import boundary_distance, boundary_distances, with_predicted_labels
from .curvature import curvature, curvature_direction, hessian_vector_norm
from .lipschitz import LipschitzPairs, adversarial_pairs, difference_quotient, local_lipschitz
from .regularizers import CurvatureRegularizer, InputGradientNorm, LipschitzRegularizer, Regularizer
from .slices import DecisionSlice, decision_slice, render_slice

__all__ = ["MinimalNormSearch", "PerUnitRadius", "PredictedLabelAdapter", "with_predicted_labels",
           "CurvatureRegularizer", "GradientAlignment", "InputGradientNorm", "gradient_cosines", "LipschitzRegularizer",
           "Regularizer", "boundary_distance", "boundary_distances", "curvature",
           "curvature_direction", "hessian_vector_norm", "LipschitzPairs", "adversarial_pairs",
           "difference_quotient", "local_lipschitz", "DecisionSlice", "decision_slice", "render_slice"]
