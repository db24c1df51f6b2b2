"""Lightning callbacks: robust training, evaluation and weight perturbations."""

from .adversarial import AdversarialTraining, FastAdversarialTraining, catastrophic_overfitting
from .bit_errors import RandomBitErrorTraining
from .quantization import Quantization
from .noise import GaussianNoiseTraining
from .weight_perturbation import AdversarialWeightPerturbation
from .evaluation import RobustnessEvaluation
from .pruning import Pruning
from .fourier import FourierSparsity
from .distillation import Distillation
