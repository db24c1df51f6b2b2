"""mmrobust: robustness, robust training and compression for image, speech and graph models."""

from . import adapters, attacks, threats
from .attacks import FGSM, PGD, Attack, AttackResult
from .threats import L1Ball, L2Ball, LinfBall, ThreatModel
from .evaluation import evaluate

__version__ = "0.1.0"
