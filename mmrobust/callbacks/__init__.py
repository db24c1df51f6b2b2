from .adversarial import AdversarialTraining, FastAdversarialTraining, catastrophic_overfitting
from .noise import GaussianNoiseTraining
from .weight_perturbation import AdversarialWeightPerturbation
from .bit_errors import RandomBitErrorTraining
from .quantization import Quantization
