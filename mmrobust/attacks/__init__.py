"""Attacks: one file per attack family, all written against :class:`~mmrobust.threats.ThreatModel`."""

from .amortized import AmortizedAttack, ConvPerturbationGenerator, MLPPerturbationGenerator
from .apgd import APGD, APGDT
from .attack_objective import AttackObjective
from .base import Attack, AttackResult, attack_mode
from .ctc import CTCTargetedAttack
from .ensemble import Ensemble
from .eot import EOT, eot_victim
from .fab import FAB, FABT
from .fmn import FMN
from .imperceptible import MaskingPenalty, MaskingPenaltyAttack
from .graph_attack import GraphAttack
from .graph_baselines import DICE, RandomFlips
from .grbcd import GRBCD
from .minimal_norm import MinimalNormSearch
from .losses import LOSSES, cross_entropy, dlr, get_loss, margin, masked_cross_entropy
from .pgd import FGSM, PGD
from .single_step import FGSMRS, NFGSM
from .prbcd import PRBCD
from .local import LocalGreedy, LocalResult
from .square import Square
from .universal import UniversalPerturbation

__all__ = [
    # base
    "Attack", "AttackObjective", "AttackResult", "attack_mode",
    # losses
    "LOSSES", "get_loss", "cross_entropy", "margin", "dlr",
    # gradient-based, bounded
    "FGSM", "FGSMRS", "NFGSM", "PGD", "APGD", "APGDT", "EOT", "eot_victim", "UniversalPerturbation", "CTCTargetedAttack",
    "MaskingPenalty", "MaskingPenaltyAttack",
    # minimal norm and black box
    "FMN", "FAB", "FABT", "MinimalNormSearch", "Square",
    # combinations and learned attacks
    "Ensemble", "AmortizedAttack", "ConvPerturbationGenerator", "MLPPerturbationGenerator",
    # graph structure
    "PRBCD", "GRBCD", "GraphAttack", "masked_cross_entropy", "DICE", "RandomFlips",
    # local (targeted) structure attacks
    "LocalGreedy", "LocalResult",
]
