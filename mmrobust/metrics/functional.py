"""Functional twins of the robustness metrics (torchmetrics' style): one batch of results in, the value out.

Each metric class in :mod:`mmrobust.metrics` accumulates the counts of ``*_update`` and computes its value
with the matching ``*_compute``; the public functions chain the two for a single batch. Example:

>>> import torch
>>> from mmrobust.attacks import AttackResult
>>> from mmrobust.metrics.functional import attack_success_rate, clean_accuracy, robust_accuracy
>>> y = torch.tensor([0, 1, 1, 0])
>>> clean = torch.tensor([[2., 0], [0, 2], [2, 0], [2, 0]])      # the third output is already wrong
>>> adv = torch.tensor([[0., 2], [0, 2], [2, 0], [2, 0]])        # the attack flips the first one
>>> r = AttackResult(batch=None, inputs={}, target=y, clean_logits=clean, logits=adv,
...                  success=adv.argmax(1) != y, loss=torch.zeros(4), size={})
>>> robust_accuracy(r), clean_accuracy(r), attack_success_rate(r)
(tensor(0.5000), tensor(0.7500), tensor(0.3333))
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
from torch import Tensor

from ..attacks.result import AttackResult

Results = Union[AttackResult, Sequence[AttackResult]]

__all__ = ["robust_accuracy", "clean_accuracy", "attack_success_rate", "worst_case_robust", "as_result_list"]


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


def ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` as a float, NaN when nothing was counted (an empty evaluation has no accuracy)."""
    return num.float() / den.float() if bool(den > 0) else torch.tensor(float("nan"), device=num.device)


def accuracy_update(results: Results) -> Tuple[Tensor, Tensor, int]:
    """Counts of one batch: robust outputs (worst case over the results), clean-correct outputs, outputs."""
    results = as_result_list(results)
    robust = worst_case_robust(results)
    return robust.sum(), results[0].clean_correct.sum(), robust.numel()


def robust_accuracy(results: Results) -> Tensor:
    """Worst-case robust accuracy of one batch (see :class:`~mmrobust.metrics.RobustAccuracy`)."""
    robust, _, total = accuracy_update(results)
    return ratio(robust, torch.tensor(total))


def clean_accuracy(results: Results) -> Tensor:
    """Accuracy on the clean inputs of one batch (see :class:`~mmrobust.metrics.CleanAccuracy`)."""
    _, clean, total = accuracy_update(results)
    return ratio(clean, torch.tensor(total))


def attack_success_update(results: Results) -> Tuple[Tensor, Tensor]:
    """Counts of one batch: clean-correct outputs some attack broke, and clean-correct outputs."""
    results = as_result_list(results)
    correct = results[0].clean_correct
    broken = torch.zeros_like(correct)
    for r in results:
        broken = broken | r.success.to(correct.device).bool()
    return (broken & correct).sum(), correct.sum()


def attack_success_rate(results: Results) -> Tensor:
    """Attack success rate of one batch (see :class:`~mmrobust.metrics.AttackSuccessRate`)."""
    return ratio(*attack_success_update(results))
