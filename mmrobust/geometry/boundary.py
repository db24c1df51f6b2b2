"""Distance to the decision boundary, measured by a minimal-norm attack.

For a correctly classified input the distance to the decision boundary in norm :math:`\\|\\cdot\\|` is

.. math:: d(x) = \\min \\{\\|\\delta\\| : \\arg\\max_k f_k(x + \\delta) \\ne y\\}

(Szegedy et al. 2014; Fawzi et al. 2018, https://arxiv.org/abs/1802.08686, Eq. 1). Any minimal-norm attack
gives an upper bound on it. The convention for :class:`~mmrobust.attacks.base.AttackResult` is the one of
the library's minimal-norm attacks (e.g. FMN): ``size`` is the smallest norm found, ``+inf`` when no
adversarial example was found, and ``0`` for inputs the model already misclassifies.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..adapters.base import BatchAdapter
from ..adapters.predicted import PredictedLabelAdapter
from ..attacks.base import Attack
from ..attacks.minimal_norm import MinimalNormSearch
from ..attacks.result import AttackResult
from ..errors import check_choice, check_int
from ..threats.base import ThreatModel


def boundary_distances(result: AttackResult, name: Optional[str] = None) -> Tensor:
    """Per-output boundary distance from a minimal-norm attack's result.

    ``0`` where the clean input is already misclassified, the attack's size where it succeeded and
    ``+inf`` where it did not (so the distance is only bounded below by the search range).
    """
    size = result.output_size(name).to(torch.float64 if result.logits.dtype == torch.float64 else torch.float32)
    dist = torch.where(result.success, size, torch.full_like(size, float("inf")))
    return torch.where(result.clean_correct, dist, torch.zeros_like(dist))


def boundary_distance(model: nn.Module, batch: Any, attack: Optional[Attack] = None, *,
                      threat: Optional[ThreatModel] = None, steps: int = 100, search_steps: int = 8,
                      adapter: Optional[BatchAdapter] = None, relative_to: str = "label") -> Tensor:
    """Distance to the decision boundary for every output of ``batch`` (Fawzi et al. 2018, Eq. 1).

    .. math:: d(x) = \\min \\{\\|\\delta\\| : \\arg\\max_k f_k(x + \\delta) \\ne y\\}

    Args:
        attack: a minimal-norm attack (``FMN``, :class:`MinimalNormSearch`, or any attack whose result size is
            the smallest adversarial norm, ``+inf`` when none was found).
        threat: when ``attack`` is ``None``: the norm to measure in. L-inf/L2/L1 balls use
            ``FMN(threat, steps=steps)`` (Pintor et al. 2021; ``eps`` is ignored); other threat models a
            :class:`MinimalNormSearch` over ``PGD(threat, steps=20, random_start=False)`` with the margin loss,
            bisecting ``search_steps`` times below ``threat.eps``.
        relative_to: ``"label"`` (misclassified inputs get ``0``) or ``"prediction"`` (distance to where the
            prediction changes, for every input; see :class:`PredictedLabelAdapter`).
    Returns:
        ``(outputs,)`` distances; ``0`` for misclassified inputs, ``+inf`` when none was found.
    """
    check_choice("relative_to", relative_to, ("label", "prediction"))
    if attack is None:
        if threat is None:
            raise ValueError("pass a minimal-norm attack or a threat (e.g. L2Ball(3.0)) giving the norm")
        if threat.norm in ("linf", "l2", "l1"):
            from ..attacks.fmn import FMN
            attack = FMN(threat, steps=check_int("steps", steps, 1), adapter=adapter)
        else:
            from ..attacks.pgd import PGD
            # from the clean point, the first step follows the gradient exactly (random starts cost precision)
            attack = MinimalNormSearch(PGD(threat, steps=20, loss="margin", random_start=False, adapter=adapter),
                                       search_steps=search_steps)
    if relative_to == "prediction":
        attack = with_predicted_labels(attack)
    return boundary_distances(attack(model, batch))


def with_predicted_labels(attack: Attack) -> Attack:
    """A shallow copy of ``attack`` that reads batches through :class:`PredictedLabelAdapter`."""
    clone = copy.copy(attack)
    clone.adapter = PredictedLabelAdapter(attack.adapter)
    return clone
