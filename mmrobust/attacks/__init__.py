"""Attacks: one file per attack family, all written against :class:`~mmrobust.threats.ThreatModel`."""

from .base import Attack, AttackResult, attack_mode
from .losses import LOSSES, cross_entropy, dlr, get_loss, margin
from .pgd import FGSM, PGD
from .apgd import APGD, APGDT  # noqa: E402
from .ensemble import Ensemble  # noqa: E402
from .fmn import FMN  # noqa: E402
from .square import Square  # noqa: E402

__all__ = ["Attack", "AttackResult", "attack_mode", "PGD", "FGSM", "LOSSES", "get_loss", "cross_entropy",
           "margin", "dlr"]
__all__ += ["APGD", "APGDT", "Ensemble", "FMN", "Square"]

from .eot import EOT, eot_victim  # noqa: E402
from .universal import UniversalPerturbation  # noqa: E402
from .ctc import CTCTargetedAttack  # noqa: E402

__all__ += ["EOT", "eot_victim", "UniversalPerturbation", "CTCTargetedAttack"]

from .amortized import AmortizedAttack, ConvPerturbationGenerator, MLPPerturbationGenerator  # noqa: E402

__all__ += ["AmortizedAttack", "ConvPerturbationGenerator", "MLPPerturbationGenerator"]
from .prbcd import GRBCD, PRBCD, GraphAttack, masked_cross_entropy  # noqa: E402  (graph edge flips)
from .graph_baselines import DICE, RandomFlips  # noqa: E402
__all__ += ["PRBCD", "GRBCD", "GraphAttack", "masked_cross_entropy", "DICE", "RandomFlips"]
