"""Per-output losses that attacks maximise.

Every function maps ``(logits, labels)`` to one value per row; a larger value means a stronger attack.
Targeted variants are maximised by moving towards ``target_labels``.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]


def _other_max(logits: Tensor, labels: Tensor) -> Tensor:
    """Largest logit among the classes other than ``labels``."""
    mask = F.one_hot(labels, logits.shape[1]).bool()
    return logits.masked_fill(mask, float("-inf")).amax(1)


def cross_entropy(logits: Tensor, labels: Tensor, target_labels: Optional[Tensor] = None) -> Tensor:
    """CE to the true class (untargeted) or minus CE to the target class (targeted)."""
    if target_labels is None:
        return F.cross_entropy(logits, labels, reduction="none")
    return -F.cross_entropy(logits, target_labels, reduction="none")


def margin(logits: Tensor, labels: Tensor, target_labels: Optional[Tensor] = None) -> Tensor:
    """Carlini & Wagner (2017) logit margin: ``max_{j != y} z_j - z_y`` (or ``z_t - max_{j != t} z_j``)."""
    if target_labels is None:
        return _other_max(logits, labels) - logits.gather(1, labels[:, None]).squeeze(1)
    return logits.gather(1, target_labels[:, None]).squeeze(1) - _other_max(logits, target_labels)


def dlr(logits: Tensor, labels: Tensor, target_labels: Optional[Tensor] = None) -> Tensor:
    """Difference of logits ratio (Croce & Hein 2020, https://arxiv.org/abs/2003.01690, Eq. 6 and 7).

    Untargeted: :math:`-(z_y - \\max_{i\\ne y} z_i) / (z_{\\pi_1} - z_{\\pi_3})`.
    Targeted:   :math:`-(z_y - z_t) / (z_{\\pi_1} - (z_{\\pi_3} + z_{\\pi_4}) / 2)`.
    Needs at least 3 (untargeted) or 4 (targeted) classes.
    """
    srt = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    if target_labels is None:
        if logits.shape[1] < 3:
            raise ValueError(f"the DLR loss needs at least 3 classes, the model returns {logits.shape[1]}")
        return -(z_y - _other_max(logits, labels)) / (srt[:, 0] - srt[:, 2] + 1e-12)
    if logits.shape[1] < 4:
        raise ValueError(f"the targeted DLR loss needs at least 4 classes, the model returns {logits.shape[1]}")
    z_t = logits.gather(1, target_labels[:, None]).squeeze(1)
    return -(z_y - z_t) / (srt[:, 0] - 0.5 * (srt[:, 2] + srt[:, 3]) + 1e-12)


def probability_margin(logits: Tensor, labels: Tensor, target_labels: Optional[Tensor] = None) -> Tensor:
    """Margin of softmax probabilities (Geisler et al. 2021): ``max_{j != y} p_j - p_y``."""
    return margin(logits.softmax(1), labels, target_labels)


def tanh_margin(logits: Tensor, labels: Tensor, target_labels: Optional[Tensor] = None) -> Tensor:
    """``tanh`` of the logit margin (Geisler et al. 2021): bounded, so no output dominates."""
    return torch.tanh(margin(logits, labels, target_labels))


def masked_cross_entropy(logits: Tensor, labels: Tensor, target_labels: Optional[Tensor] = None) -> Tensor:
    """Cross-entropy on the still correctly classified outputs only (Geisler et al. 2021,
    https://arxiv.org/abs/2110.14038, Sec. 4, "masked CE", their recommended loss for greedy attacks):
    misclassified outputs contribute zero, so the budget goes to outputs not yet fooled.

    .. math:: \\ell_i = \\mathbb{1}[\\arg\\max_j z_{ij} = y_i] \\cdot \\mathrm{CE}(z_i, y_i)
    """
    if target_labels is not None:
        raise ValueError("masked_ce is an untargeted loss; use 'ce' or 'margin' for targeted attacks")
    correct = (logits.argmax(1) == labels).to(logits.dtype)
    return correct * F.cross_entropy(logits, labels, reduction="none")


LOSSES: Dict[str, LossFn] = {
    "ce": cross_entropy,
    "margin": margin,
    "dlr": dlr,
    "prob_margin": probability_margin,
    "tanh_margin": tanh_margin,
    "masked_ce": masked_cross_entropy,
}


def get_loss(loss) -> LossFn:
    """Resolve a loss by name (``ce``, ``margin``, ``dlr``, ``prob_margin``, ``tanh_margin``,
    ``masked_ce``) or pass a callable."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable, got {loss!r}")
    return LOSSES[loss]


def fixed_loss(attack: str, kwargs: dict, loss: str = "margin") -> str:
    """Take ``loss`` out of the keyword arguments of an attack whose objective is fixed by its method (FAB, FMN,
    Square: the margin): another loss given there is an error, not silently replaced."""
    given = kwargs.pop("loss", loss)
    if given != loss and get_loss(given) is not get_loss(loss):
        raise ValueError(f"{attack} optimises the {loss} loss by construction; loss={given!r} is not an option "
                         f"(leave it out, or use PGD/APGD to attack another loss)")
    return loss

