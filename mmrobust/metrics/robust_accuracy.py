"""Robust accuracy (worst case over several attacks), clean accuracy and attack success rate.

All three count *outputs* (rows of the logits: images, clips, nodes), read from
:class:`~mmrobust.attacks.AttackResult`s, and keep only additive counts, so their distributed
reduction is an exact ``sum``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from .functional import Results, accuracy_update, attack_success_update, ratio

class RobustAccuracy(Metric):
    """Worst-case robust accuracy over one or several attacks (the AutoAttack convention).

    Croce & Hein 2020 (https://arxiv.org/abs/2003.01690, Sec. 5) report, per example, the worst case
    over an ensemble of attacks; an output counts as robust only if it is classified correctly on the
    clean input and on the perturbed input of every attack:

    .. math:: \\mathrm{RA} = \\frac{1}{N}\\sum_{n=1}^N \\mathbb 1[f(x_n)=y_n]\\prod_{a=1}^A \\mathbb 1[f(x_n+\\delta^a_n)=y_n]

    ``update`` takes one :class:`~mmrobust.attacks.AttackResult` or a list of results of several
    attacks on the same batch. ``compute()`` returns the robust accuracy; :meth:`clean_accuracy` the
    accuracy on the clean inputs of the same outputs. Both are NaN before any update.
    :func:`mmrobust.metrics.functional.robust_accuracy` is the same for one batch.

    Example:
        >>> from mmrobust.threats import LinfBall
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> from mmrobust.attacks import FGSM, PGD
        >>> from mmrobust.metrics import RobustAccuracy
        >>> threat = LinfBall(0.1, lower=0, upper=1)
        >>> metric = RobustAccuracy()
        >>> metric.update([FGSM(threat)(model, [x, y]), PGD(threat, steps=5, seed=0)(model, [x, y])])
        >>> bool(metric.compute() <= metric.clean_accuracy())
        True
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("robust", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("clean", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, results: Results) -> None:
        robust, clean, total = accuracy_update(results)
        # not in place: states may be inference tensors after a reset inside Lightning's eval loop
        self.robust = self.robust + robust.to(self.robust.device)
        self.clean = self.clean + clean.to(self.clean.device)
        self.total = self.total + total

    def compute(self) -> Tensor:
        return ratio(self.robust, self.total)

    def clean_accuracy(self) -> Tensor:
        """Accuracy on the clean inputs of the outputs seen so far (synchronised across processes)."""
        with self.sync_context(should_sync=self._to_sync, should_unsync=True):
            return ratio(self.clean, self.total)


class CleanAccuracy(RobustAccuracy):
    """Accuracy on the clean inputs of the attacked outputs, fed by the same results as
    :class:`RobustAccuracy` (so both are always computed over exactly the same outputs).

    .. math:: \\mathrm{CA} = \\frac{1}{N}\\sum_{n=1}^N \\mathbb 1[f(x_n)=y_n]

    Example:
        >>> from mmrobust.attacks import FGSM
        >>> from mmrobust.metrics import CleanAccuracy
        >>> from mmrobust.threats import LinfBall
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> metric = CleanAccuracy()
        >>> metric.update(FGSM(LinfBall(0.1, lower=0, upper=1))(model, [x, y]))
        >>> bool(metric.compute() == (model(x).argmax(1) == y).float().mean())
        True
    """

    def compute(self) -> Tensor:
        return ratio(self.clean, self.total)


class AttackSuccessRate(Metric):
    """Fraction of clean-correct outputs on which the attack reaches its goal.

    For untargeted attacks the goal is a misclassification, for targeted ones the target class
    (``AttackResult.success`` already encodes which). With several attacks on the same batch an
    output counts as broken if any attack succeeds:

    .. math:: \\mathrm{ASR} = \\frac{\\sum_n \\mathbb 1[f(x_n)=y_n]\\,\\max_a s^a_n}{\\sum_n \\mathbb 1[f(x_n)=y_n]}

    Outputs misclassified already on the clean input are not counted (there is nothing to flip),
    following Carlini & Wagner 2017 (https://arxiv.org/abs/1608.04644, Sec. VI), who attack only
    correctly classified examples. NaN when no clean-correct output was seen.

    Example:
        >>> from mmrobust.attacks import PGD
        >>> from mmrobust.metrics import AttackSuccessRate
        >>> from mmrobust.threats import LinfBall
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> metric = AttackSuccessRate()                          # among outputs classified correctly when clean
        >>> metric.update(PGD(LinfBall(0.3, lower=0, upper=1), steps=5, seed=0)(model, [x, y]))
        >>> 0.0 <= float(metric.compute()) <= 1.0
        True
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("successes", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("attacked", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, results: Results) -> None:
        successes, attacked = attack_success_update(results)
        self.successes = self.successes + successes.to(self.successes.device)
        self.attacked = self.attacked + attacked.to(self.attacked.device)

    def compute(self) -> Tensor:
        return ratio(self.successes, self.attacked)
