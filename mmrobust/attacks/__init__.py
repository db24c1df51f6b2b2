"""Attacks: one file per attack family, all written against :class:`~mmrobust.threats.ThreatModel`."""

from .base import Attack, AttackResult, attack_mode
from .losses import LOSSES, cross_entropy, dlr, get_loss, margin
from .pgd import FGSM, PGD

__all__ = ["Attack", "AttackResult", "attack_mode", "PGD", "FGSM", "LOSSES", "get_loss", "cross_entropy",
           "margin", "dlr"]
