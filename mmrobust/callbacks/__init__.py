"""Lightning callbacks: robust training, weight perturbations, compression and robustness evaluation."""

from .adversarial import AdversarialTraining
from .fast_adversarial import FastAdversarialTraining
from .overfitting_monitor import CatastrophicOverfittingMonitor, CollapseRule, catastrophic_overfitting, robustness_drop
from .bit_errors import RandomBitErrorTraining
from .distillation import Distillation
from .evaluation import RobustnessEvaluation
from .extra_loss import ExtraLossCallback
from .fourier import FourierSparsity
from .noise import GaussianNoiseTraining
from .pruning import Pruning
from .quantization import Quantization
from .regularization import GeometricRegularization
from .rng import GlobalRNGState
from .weight_perturbation import AdversarialWeightPerturbation

__all__ = ["AdversarialTraining", "FastAdversarialTraining", "catastrophic_overfitting", "CatastrophicOverfittingMonitor",
           "CollapseRule", "robustness_drop", "AdversarialWeightPerturbation",
           "GaussianNoiseTraining", "GeometricRegularization", "RobustnessEvaluation", "Pruning", "FourierSparsity",
           "Quantization", "RandomBitErrorTraining", "Distillation", "ExtraLossCallback",
           "GlobalRNGState"]
