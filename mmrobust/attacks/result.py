"""What an attack returns: :class:`AttackResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from ..adapters.base import BatchView
from ..threats.verify import UNVERIFIED  # also re-exported: the extras key documented below


@dataclass
class AttackResult:
    """What an attack returns.

    Attributes:
        batch: the perturbed batch, of the same type as the user's batch.
        inputs: the perturbed attackable tensors by name.
        target: true labels of the scored outputs.
        clean_logits / logits: model outputs on the clean and on the perturbed batch.
        success: per output, whether the attack's goal was reached (misclassified, or the target class
            for targeted attacks).
        loss: per output, the attack loss at the returned point.
        size: per input name, the per-unit perturbation size in that threat model's own measure.
        unit: maps outputs to units (``None``: output i is unit i).
        attack: a description of the attack that produced the result.
        extras: attack- or modality-specific extras (e.g. sizes in dB for audio). Results of attacks
            unbounded by design (``FMN(cap=False)``, ``FAB(cap=False)``, a ``MinimalNormSearch`` with a
            larger ``eps_max``) carry ``extras[UNVERIFIED]`` until
            :func:`~mmrobust.threats.verify.verify_result` has counted their points outside the threat
            model as not broken; the accuracy metrics and :attr:`robust` refuse such results (their successes
            include points of any size).

    Example:
        >>> from mmrobust.attacks import PGD
        >>> from mmrobust.threats import LinfBall
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> result = PGD(LinfBall(0.1, lower=0, upper=1), steps=3, seed=0)(model, [x, y])
        >>> adversarial_x, labels = result.batch                 # the user's batch type, perturbed
        >>> bool((result.robust == (result.clean_correct & result.adv_correct)).all())
        True
    """

    batch: Any
    inputs: Dict[str, Tensor]
    target: Tensor
    clean_logits: Tensor
    logits: Tensor
    success: Tensor
    loss: Tensor
    size: Dict[str, Tensor]
    unit: Optional[Tensor] = None
    attack: str = ""
    extras: Dict[str, Any] = field(default_factory=dict)

    @property
    def clean_correct(self) -> Tensor:
        return self.clean_logits.argmax(1) == self.target

    @property
    def adv_correct(self) -> Tensor:
        return self.logits.argmax(1) == self.target

    @property
    def robust(self) -> Tensor:
        """Correct on the clean input and on the perturbed one (the AutoAttack convention): robust at the
        attack's budget. A ``ValueError`` for a result still marked ``extras[UNVERIFIED]`` (its perturbed points
        may lie outside the budget; ``clean_correct & adv_correct`` reads them as they are)."""
        check_verified(self)
        return self.clean_correct & self.adv_correct

    @property
    def confidence(self) -> Tensor:
        """Max softmax probability on the perturbed input."""
        return self.logits.softmax(1).amax(1)

    def output_size(self, name: Optional[str] = None) -> Tensor:
        """Perturbation size per output (broadcast from units) for input ``name`` (default: the only one)."""
        if name is None:
            if len(self.size) != 1:
                raise ValueError(f"result has several inputs {sorted(self.size)}; name one")
            name = next(iter(self.size))
        s = self.size[name]
        return s if self.unit is None else s[self.unit]


def check_verified(result: "AttackResult", argument: str = "result") -> None:
    """Refuse a result of an attack unbounded by design whose points were not checked against its threat model
    (``extras[UNVERIFIED]``): a robustness number read from it would count breaks of any size."""
    if result.extras.get(UNVERIFIED):
        raise ValueError(
            f"{argument} comes from {result.attack or 'an attack'}, which is unbounded by design (a minimal-norm "
            "attack without cap): its successes include points outside the threat model, so robustness at the "
            "budget would be understated. Build the attack with cap=True (FMN, FAB) or without eps_max "
            "(MinimalNormSearch), or pass the result through mmrobust.threats.verify.verify_result(attack, "
            "model, batch, result) -- as mmrobust.evaluate and Ensemble do -- which counts points outside the "
            "budget as not broken; MinimalPerturbation takes the unbounded result as it is")


def mark_not_found(result: "AttackResult", found: Optional[Tensor], victim: BatchView) -> "AttackResult":
    """Minimal-norm attacks: units where no adversarial point was found get size ``inf`` and no success."""
    if found is not None:
        for name in result.size:
            result.size[name] = torch.where(found, result.size[name],
                                            torch.full_like(result.size[name], float("inf")))
        result.success = result.success & victim.per_output(found)
    return result
