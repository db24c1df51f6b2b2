"""mmrobust: robustness, robust training and compression for image, speech and graph models."""

from . import adapters, attacks, threats
from .attacks import APGD, APGDT, FGSM, FMN, PGD, Attack, AttackResult, Ensemble, Square
from .threats import L1Ball, L2Ball, LinfBall, ThreatModel
from .evaluation import evaluate

__version__ = "0.1.0"
