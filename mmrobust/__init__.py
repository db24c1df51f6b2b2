"""mmrobust: robustness, robust training and compression for image, speech and graph models.

The most used names are importable from here; everything else from its subpackage
(:mod:`mmrobust.attacks`, :mod:`mmrobust.threats`, :mod:`mmrobust.metrics`, :mod:`mmrobust.callbacks`, ...).
Names and subpackages are imported on first use (PEP 562), so ``import mmrobust`` and the ``mmrobust`` command's
``--help`` do not import torch, Lightning, torchmetrics or PyG; ``from mmrobust import PGD`` imports what PGD needs.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, List

__version__ = "0.1.0"

#: the names importable from ``mmrobust`` -> the module that defines them
_NAMES = {
    **dict.fromkeys(("ThreatModel", "LinfBall", "L2Ball", "L1Ball", "SNRBall", "PeakDBBall", "EdgeFlips"), "threats"),
    **dict.fromkeys(("Attack", "AttackResult", "FGSM", "PGD", "APGD", "APGDT", "FMN", "Square", "Ensemble", "PRBCD"),
                    "attacks"),
    "evaluate": "evaluation", "sweep": "budget_sweep", "BudgetSweep": "budget_sweep", "RobustAccuracy": "metrics",
    "SmoothedClassifier": "certify",
}

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


def __getattr__(name: str) -> Any:
    """``mmrobust.PGD``, ``mmrobust.attacks``, ``mmrobust.image``, ...: imported on first access, then cached."""
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    elif not name.startswith("_") and ((Path(__file__).parent / name / "__init__.py").is_file()
                                       or (Path(__file__).parent / f"{name}.py").is_file()):
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))


def _import_all() -> None:
    """Import every name of ``__all__`` now (what ``import mmrobust`` did before names were imported on first use):
    the command line calls it before jsonargparse resolves ``class_path`` names among the loaded subclasses."""
    for name in __all__:
        __getattr__(name)
