"""Robust accuracy (worst case over several attacks), clean accuracy and attack success rate.

All three count *outputs* (rows of the logits: images, clips, nodes), read from
:class:`~mmrobust.attacks.AttackResult`s, and keep only additive counts, so their distributed
reduction is an exact ``sum``.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor
from torchmetrics import Metric

from ..attacks.base import AttackResult

Results = Union[AttackResult, Sequence[AttackResult]]


def as_result_list(results: Results, argument: str = "results") -> list:
    """One result or several results for the same batch (several attacks) as a checked list."""
    if isinstance(results, AttackResult):
        return [results]
    if not isinstance(results, (list, tuple)) or not results or not all(isinstance(r, AttackResult) for r in results):
        raise TypeError(f"{argument} must be an AttackResult or a non-empty list of AttackResults for the same batch, "
                        f"got {type(results).__name__}")
    first = results[0]
    for r in results[1:]:
        if r.target.shape != first.target.shape or not bool(torch.equal(r.target.to(first.target.device),
                                                                         first.target)):
            raise ValueError(f"all {argument} must come from the same batch (same outputs and labels); "
                             f"got targets of shapes {tuple(first.target.shape)} and {tuple(r.target.shape)} "
                             "or different labels")
    return list(results)


def worst_case_robust(results: Results) -> Tensor:
    """Per output: correct on the clean input and on the perturbed input of *every* attack."""
    results = as_result_list(results)
    robust = results[0].clean_correct
    for r in results:
        robust = robust & r.adv_correct.to(robust.device)
    return robust


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` as a float, NaN when nothing was counted (an empty evaluation has no accuracy)."""
    return num.float() / den.float() if bool(den > 0) else torch.tensor(float("nan"), device=num.device)


class RobustAccuracy(Metric):
    """Worst-case robust accuracy over one or several attacks (the AutoAttack convention).

    Croce & Hein 2020 (https://arxiv.org/abs/2003.01690, Sec. 5) report, per example, the worst case
    over an ensemble of attacks; an output counts as robust only if it is classified correctly on the
    clean input and on the perturbed input of every attack:

    .. math:: \\mathrm{RA} = \\frac{1}{N}\\sum_{n=1}^N \\mathbb 1[f(x_n)=y_n]\\prod_{a=1}^A \\mathbb 1[f(x_n+\\delta^a_n)=y_n]

    ``update`` takes one :class:`~mmrobust.attacks.AttackResult` or a list of results of several
    attacks on the same batch. ``compute()`` returns the robust accuracy; :meth:`clean_accuracy` the
    accuracy on the clean inputs of the same outputs. Both are NaN before any update.
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
        results = as_result_list(results)
        robust = worst_case_robust(results)
        # not in place: states may be inference tensors after a reset inside Lightning's eval loop
        self.robust = self.robust + robust.sum().to(self.robust.device)
        self.clean = self.clean + results[0].clean_correct.sum().to(self.clean.device)
        self.total = self.total + robust.numel()

    def compute(self) -> Tensor:
        return _ratio(self.robust, self.total)

    def clean_accuracy(self) -> Tensor:
        """Accuracy on the clean inputs of the outputs seen so far (synchronised across processes)."""
        with self.sync_context(should_sync=self._to_sync, should_unsync=True):
            return _ratio(self.clean, self.total)


class CleanAccuracy(RobustAccuracy):
    """Accuracy on the clean inputs of the attacked outputs, fed by the same results as
    :class:`RobustAccuracy` (so both are always computed over exactly the same outputs).

    .. math:: \\mathrm{CA} = \\frac{1}{N}\\sum_{n=1}^N \\mathbb 1[f(x_n)=y_n]
    """

    def compute(self) -> Tensor:
        return _ratio(self.clean, self.total)


class AttackSuccessRate(Metric):
    """Fraction of clean-correct outputs on which the attack reaches its goal.

    For untargeted attacks the goal is a misclassification, for targeted ones the target class
    (``AttackResult.success`` already encodes which). With several attacks on the same batch an
    output counts as broken if any attack succeeds:

    .. math:: \\mathrm{ASR} = \\frac{\\sum_n \\mathbb 1[f(x_n)=y_n]\\,\\max_a s^a_n}{\\sum_n \\mathbb 1[f(x_n)=y_n]}

    Outputs misclassified already on the clean input are not counted (there is nothing to flip),
    following Carlini & Wagner 2017 (https://arxiv.org/abs/1608.04644, Sec. VI), who attack only
    correctly classified examples. NaN when no clean-correct output was seen.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("successes", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("attacked", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, results: Results) -> None:
        results = as_result_list(results)
        correct = results[0].clean_correct
        broken = torch.zeros_like(correct)
        for r in results:
            broken = broken | r.success.to(correct.device).bool()
        self.successes = self.successes + (broken & correct).sum().to(self.successes.device)
        self.attacked = self.attacked + correct.sum().to(self.attacked.device)

    def compute(self) -> Tensor:
        return _ratio(self.successes, self.attacked)
