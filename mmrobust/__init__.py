"""mmrobust: robustness, robust training and compression for image, speech and graph models.

The most used names are importable from here; everything else from its subpackage
(:mod:`mmrobust.attacks`, :mod:`mmrobust.threats`, :mod:`mmrobust.metrics`, :mod:`mmrobust.callbacks`, ...).
The Lightning callbacks are not imported here, so ``import mmrobust`` does not import Lightning.
"""

from . import adapters, attacks, compression, errors, evaluation, metrics, threats, utils
from .attacks import APGD, APGDT, FGSM, FMN, PGD, PRBCD, Attack, AttackResult, Ensemble, Square
from .budget_sweep import BudgetSweep, sweep
from .certify import SmoothedClassifier
from .evaluation import evaluate
from .metrics import RobustAccuracy
from .threats import EdgeFlips, L1Ball, L2Ball, LinfBall, PeakDBBall, SNRBall, ThreatModel

__version__ = "0.1.0"

__all__ = [
    # subpackages and modules
    "adapters", "attacks", "compression", "errors", "evaluation", "metrics", "threats", "utils",
    # threat models
    "ThreatModel", "LinfBall", "L2Ball", "L1Ball", "SNRBall", "PeakDBBall", "EdgeFlips",
    # attacks
    "Attack", "AttackResult", "FGSM", "PGD", "APGD", "APGDT", "FMN", "Square", "Ensemble", "PRBCD",
    # evaluation and certification
    "evaluate", "sweep", "BudgetSweep", "RobustAccuracy", "SmoothedClassifier",
]
