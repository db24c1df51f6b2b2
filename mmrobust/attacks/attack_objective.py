"""What one call of an attack maximises and when a unit counts as broken: :class:`AttackObjective`.

(Not to be confused with :mod:`mmrobust.objectives`, the *training* losses built from clean and attacked
outputs.) :meth:`Attack.run <mmrobust.attacks.Attack.run>` builds one per call with
:meth:`Attack.objective_for <mmrobust.attacks.Attack.objective_for>` -- or takes the one a composite
passes -- and runs the attack on a per-call copy holding it, so the user's attack object never holds the
state of a call.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from torch import Tensor


@dataclasses.dataclass(frozen=True)
class AttackObjective:
    """The loss an attack call maximises, its success test and the reference points that go with them.

    Args:
        loss_fn: ``(logits, labels, target_labels) -> per-output loss`` (larger = closer to the goal), e.g.
            one of :mod:`mmrobust.attacks.losses`.
        targets: the call's explicit target labels (per output), ``None`` when the caller gave none.
        targeted: whether the loss is given the target labels (else ``None``).
        reach_targets: success means *classified as the target*; otherwise *misclassified*. AutoAttack's
            APGD-T and FAB-T run a targeted loss towards several classes but count misclassification.
        reference: a per-output reference the loss compares with (TRADES' clean log-probabilities), for
            reading; ``loss_fn`` already holds it.

    Example:
        >>> import torch
        >>> from mmrobust.attacks.attack_objective import AttackObjective
        >>> from mmrobust.attacks.losses import cross_entropy
        >>> objective = AttackObjective(cross_entropy)
        >>> logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
        >>> objective.success(logits, labels, None)
        tensor([False,  True])
        >>> objective.loss(logits, labels, None).shape
        torch.Size([2])
    """

    loss_fn: Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]
    targets: Optional[Tensor] = None
    targeted: bool = False
    reach_targets: bool = False
    reference: Optional[Tensor] = None

    def loss(self, logits: Tensor, labels: Tensor, target_labels: Optional[Tensor]) -> Tensor:
        """Per-output loss at ``logits`` (``target_labels``: those of the outputs given, e.g. of a run's class)."""
        return self.loss_fn(logits, labels, target_labels if self.targeted else None)

    def success(self, logits: Tensor, labels: Tensor, target_labels: Optional[Tensor]) -> Tensor:
        """Per output: the goal is reached (the target class, or any wrong class)."""
        pred = logits.argmax(1)
        return pred == target_labels if self.reach_targets else pred != labels
