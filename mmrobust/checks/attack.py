"""Checks that rerun a cheap attack on a few units of the first batch and compare with the evaluation.

Each costs about one attack run on those units (``FailureChecks(units=...)``, 32 by default): a single
gradient step (:func:`transfer_gap`), the reference attack at a much larger budget (:func:`budget_curve`),
or the reference attack again with its loss recorded at every step (:func:`loss_trace`, read by
:func:`unconverged_loss` and :func:`late_restarts`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from ..adapters.base import BatchAdapter, BatchView, infer_adapter
from ..attacks.base import Attack
from ..attacks.losses import margin
from ..threats.graph import EdgeFlips
from ..threats.joint import scaled_threat
from ..threats.verify import run_checked
from .base import CheckResult, not_applicable, register


def is_edge_threat(threat: Any) -> bool:
    if isinstance(threat, Mapping):
        return any(isinstance(t, EdgeFlips) for t in threat.values())
    return isinstance(threat, EdgeFlips)


@register("transfer_gap", "rerun", "a single gradient step from the clean point breaks units the attacks left robust")
def transfer_gap(model: nn.Module, batch: Any, attack: Attack, robust: Tensor, *, max_fraction: float = 0.05
                 ) -> CheckResult:
    """FGSM (one step of the full budget along the model's own clean gradient, Goodfellow et al. 2015,
    https://arxiv.org/abs/1412.6572) breaks outputs that every attack of the evaluation left robust: the
    iterative attacks are weaker than their own first step -- a step size, loss or number of steps that does
    not work, or a loss surface that misleads iterative attacks (Pintor et al. 2022,
    https://arxiv.org/abs/2106.09947, "transfer failure"; Carlini et al. 2019,
    https://arxiv.org/abs/1902.06705, Sec. 4.4: an iterative attack must beat a single step).

    ``robust``: per output of ``batch``, robust under every attack of the evaluation. Fires when FGSM breaks
    more than ``max_fraction`` of the robust outputs (and at least one). Cost: one forward and backward pass
    and two forward passes.
    """
    from ..attacks.pgd import FGSM

    if is_edge_threat(attack.threat):
        return not_applicable("transfer_gap", "edge-flip budgets have no single gradient step")
    if not bool(robust.any()):
        return not_applicable("transfer_gap", "no output is robust under the evaluation's attacks: nothing for "
                                              "a single step to break")
    fgsm = FGSM(attack.threat, adapter=attack.adapter)
    res = run_checked(fgsm, model, batch)
    robust = robust.to(res.robust.device)
    broken = robust & ~res.robust
    n_robust, n_broken = int(robust.sum()), int(broken.sum())
    clean = res.clean_correct
    fgsm_rate = float((~res.robust & clean).sum()) / max(1, int(clean.sum()))
    eval_rate = float((~robust & clean).sum()) / max(1, int(clean.sum()))
    fired = n_broken > 0 and n_broken > max_fraction * n_robust
    evidence = (f"FGSM from the clean gradient breaks {n_broken} of the {n_robust} outputs the evaluation's attacks "
                f"left robust (success on clean-correct outputs: FGSM {fgsm_rate:.3f}, the evaluation "
                f"{eval_rate:.3f}; {res.target.numel()} outputs)")
    return CheckResult("transfer_gap", fired, evidence,
                       "the attacks are weaker than a single gradient step: check their step size, steps and loss "
                       "(use APGD, which adapts its step), and add FGSM-started restarts" if fired else "",
                       values={"robust": n_robust, "broken_by_fgsm": n_broken, "fgsm_success": fgsm_rate,
                               "evaluation_success": eval_rate})


def accuracy_curve_check(budgets: Sequence[float], accuracies: Sequence[float], *, unbounded: bool = True,
                         tolerance: float = 0.0, max_accuracy: float = 0.1, name: str = "budget_curve",
                         larger_is_stronger: bool = True) -> CheckResult:
    """Robust accuracy over increasing budgets must not increase, and for a budget large enough to reach any
    input (``unbounded``) must come close to 0 (Carlini et al. 2019, https://arxiv.org/abs/1902.06705,
    Sec. 5.2.4 and 5.2.5): a rise, or a plateau far above 0, means the attack failed, not the model resisted.

    Args:
        budgets, accuracies: the curve (any order of budgets; sorted here).
        unbounded: the largest budget should break (almost) every output; ``False`` checks monotonicity only
            (e.g. edge-flip budgets, where a graph may keep some nodes correct).
        tolerance: accuracy increase tolerated between budgets (sampling noise of a randomised attack).
        max_accuracy: the largest accuracy accepted at the largest budget when ``unbounded``.
        larger_is_stronger: ``False`` where a larger budget value is a smaller perturbation (an SNR in dB,
            :attr:`~mmrobust.threats.ThreatModel.larger_budget_is_stronger`): the curve is read from the largest
            value down.
    """
    if len(budgets) != len(accuracies) or len(budgets) < 2:
        return not_applicable(name, "needs accuracies at two or more budgets")
    pairs = sorted(zip(budgets, accuracies), reverse=not larger_is_stronger)  # weakest budget first
    rises = [(a, b) for a, b in zip(pairs, pairs[1:]) if b[1] > a[1] + tolerance]
    top_budget, top_acc = pairs[-1]
    plateau = unbounded and top_acc > max_accuracy
    curve = ", ".join(f"{b:g}: {a:.3f}" for b, a in pairs)
    parts = [f"robust accuracy by budget {curve}"]
    if rises:
        parts.append("rises from " + "; ".join(f"{a[0]:g} to {b[0]:g}" for a, b in rises))
    if plateau:
        parts.append(f"stays at {top_acc:.3f} (> {max_accuracy:g}) at the largest budget {top_budget:g}")
    fired = bool(rises) or plateau
    return CheckResult(name, fired, "; ".join(parts),
                       "accuracy that rises with the budget or stays high at a huge budget means the attack "
                       "failed: look for gradient masking (the other checks), increase steps/restarts, add a "
                       "gradient-free attack (Square)" if fired else "",
                       values={"largest_budget_accuracy": float(top_acc), "rises": len(rises)})


def large_factor(threat: Any, factor: float) -> float:
    """``factor``, raised for an L-inf ball with a value box to the multiple that covers the whole box (every
    input reachable: any classifier can then be fooled, so a working attack breaks everything)."""
    if isinstance(threat, Mapping) or getattr(threat, "norm", None) != "linf":
        return factor
    eps, lower, upper = getattr(threat, "eps", None), getattr(threat, "lower", None), getattr(threat, "upper", None)
    if not isinstance(eps, (int, float)) or eps <= 0 or not isinstance(lower, (int, float)) \
            or not isinstance(upper, (int, float)):
        return factor
    return max(factor, (upper - lower) / eps)


@register("budget_curve", "rerun", "robust accuracy rises with the budget or stays high at a huge budget")
def budget_curve(model: nn.Module, batch: Any, attack: Attack, robust: Tensor, *, factor: float = 10.0,
                 max_accuracy: float = 0.1) -> CheckResult:
    """Reruns ``attack`` with every budget ``factor`` times larger (:meth:`~mmrobust.threats.ThreatModel.scaled`;
    for an L-inf ball with a value box at least the multiple that covers the whole box, :func:`large_factor`)
    and applies :func:`accuracy_curve_check` to the two points (the evaluation's robust accuracy on these
    outputs at the budget, and at the larger one the outputs that neither the evaluation nor the rerun broke:
    the balls are nested). At 10 times an image or audio budget the two should break almost everything; for
    edge flips only monotonicity of the rerun alone is checked.

    Cost: one run of ``attack`` on the checked units (early stopping on where it can).
    """
    factor = large_factor(attack.threat, factor)
    big = attack.private_copy().with_threat(scaled_threat(attack.threat, factor))
    big.reseed()
    if getattr(big, "can_stop_early", False):
        big.early_stop = True
    res = run_checked(big, model, batch)
    robust = robust.to(res.robust.device)
    n = max(1, robust.numel())
    at_budget = float(robust.sum()) / n
    unbounded = not is_edge_threat(attack.threat)
    big_robust = res.robust
    rerun_alone = float(big_robust.sum()) / n
    if unbounded:
        # the balls are nested: a point broken at the budget is broken at the larger one. An attack whose own
        # settings (step sizes scaled with the radius) serve it badly at a huge radius says nothing about the
        # evaluated budget, so only outputs neither run breaks count (Carlini et al.'s unbounded-attack test)
        big_robust = big_robust & robust
    at_big = float(big_robust.sum()) / n
    check = accuracy_curve_check([1.0, factor], [at_budget, at_big], unbounded=unbounded,
                                 max_accuracy=max_accuracy)
    rerun = f" (the rerun alone: {rerun_alone:.3f})" if unbounded and rerun_alone != at_big else ""
    check.evidence = (f"{type(attack).__name__} on {robust.numel()} outputs, budgets as multiples of the "
                      f"evaluation's: " + check.evidence + rerun)
    return check


@dataclass
class LossTrace:
    """The logit margin (``max_{j != y} z_j - z_y``, > 0 means misclassified) at every iterate of every run.

    Attributes:
        margins: ``(runs, steps + 1, outputs)``; a run is one restart (and target class, for APGD-T).
        attack: the description of the traced attack.
    """

    margins: Tensor
    attack: str


class _TracingAdapter(BatchAdapter):
    """Wraps an adapter so every forward pass of the victims it builds is recorded (logits, detached)."""

    def __init__(self, inner: BatchAdapter):
        self.inner = inner
        self.modality = inner.modality
        self.logits: List[Tensor] = []
        self.victims: List[BatchView] = []

    def victim(self, model: nn.Module, batch: Any) -> BatchView:
        victim = self.inner.victim(model, batch)
        forward = victim.forward

        def traced(inputs):
            out = forward(inputs)
            self.logits.append(out.detach())
            return out

        victim.forward = traced
        self.victims.append(victim)
        return victim

    def batch_size(self, batch: Any) -> int:
        return self.inner.batch_size(batch)


def loss_trace(model: nn.Module, batch: Any, attack: Attack) -> Optional[LossTrace]:
    """Rerun ``attack`` (a PGD or APGD family attack; a private copy, reseeded, without early stopping) on
    ``batch`` and record the logit margin at every iterate; ``None`` when the attack is not of that family.

    The trace comes from wrapping the attack's adapter (every ``BatchView.forward`` call is recorded), so the
    attacks themselves carry no tracing code. PGD (keeping the best iterate) and APGD make ``steps + 1``
    forward passes per run after one clean pass. Cost: one run of the attack on ``batch``.
    """
    from ..attacks.apgd import APGD
    from ..attacks.pgd import PGD

    if not isinstance(attack, (PGD, APGD)) or (isinstance(attack, PGD) and not attack.keep_best):
        return None
    traced = attack.private_copy()
    traced.reseed()
    traced.early_stop = False
    tracer = _TracingAdapter(attack.adapter or infer_adapter(batch))
    traced.adapter = tracer
    traced(model, batch)
    if len(tracer.victims) != 1:
        return None
    target = tracer.victims[0].target
    calls = tracer.logits[1:]  # the first is the clean pass
    per_run = attack.steps + 1
    if not calls or len(calls) % per_run or any(c.shape[0] != target.shape[0] for c in calls):
        return None
    margins = torch.stack([margin(c.float(), target) for c in calls]).reshape(-1, per_run, target.shape[0])
    return LossTrace(margins.cpu(), attack.describe())


@register("unconverged_loss", "rerun", "the attack's loss is still rising at its last steps")
def unconverged_loss(trace: Optional[LossTrace], *, last: float = 0.1, min_share: float = 0.1,
                     max_fraction: float = 0.2) -> CheckResult:
    """For outputs the traced attack leaves robust, the best loss is still improving in the last ``last``
    fraction of a run's steps: the run stopped before converging and more steps would help (Pintor et al.
    2022, https://arxiv.org/abs/2106.09947, "non-converging attack"/"incomplete optimization"; Carlini et al.
    2019, https://arxiv.org/abs/1902.06705, Sec. 5.2.1).

    An output counts when, in some run, the last steps added more than ``min_share`` of the run's total
    improvement of the logit margin; fires when more than ``max_fraction`` of the robust outputs count.
    Cost: the trace's attack run (:func:`loss_trace`).
    """
    if trace is None:
        return not_applicable("unconverged_loss", "needs a PGD or APGD attack (keeping its best iterate) to trace")
    m = trace.margins.double()
    robust = m.amax((0, 1)) <= 0
    if not bool(robust.any()):
        return not_applicable("unconverged_loss", f"{trace.attack} leaves no traced output robust: no loss "
                                                  "left to converge")
    runs, length, outputs = m.shape
    cut = max(1, min(length - 1, math.ceil((1 - last) * (length - 1))))
    best_all = m.amax(1)                      # (runs, outputs)
    best_before = m[:, :cut].amax(1)
    gained = best_all - m[:, 0]
    late = best_all - best_before
    rising = (late > min_share * gained.clamp_min(0)) & (late > 1e-4 * (1 + best_all.abs()))
    counted = rising.any(0) & robust
    n_robust, n = int(robust.sum()), int(counted.sum())
    fired = n > 0 and n > max_fraction * n_robust
    evidence = (f"{trace.attack}: on {n} of the {n_robust} outputs it leaves robust the margin loss still "
                f"improved by more than {min_share:.0%} of its run's gain in the last {last:.0%} of "
                f"{length - 1} steps ({runs} run(s) traced)")
    return CheckResult("unconverged_loss", fired, evidence,
                       "the attack had not converged: increase its steps (APGD: steps=100 or more) and check the "
                       "step size" if fired else "", values={"robust": n_robust, "rising": n, "steps": length - 1})


@register("late_restarts", "rerun", "the last restart still finds new adversarial examples")
def late_restarts(trace: Optional[LossTrace], *, min_new: int = 2, max_fraction: float = 0.02) -> CheckResult:
    """The last run (restart, or target class for APGD-T) of the traced attack breaks outputs no earlier run
    broke: more restarts would probably break more (Carlini et al. 2019, https://arxiv.org/abs/1902.06705,
    Sec. 5.2.1; Pintor et al. 2022, https://arxiv.org/abs/2106.09947). Fires when they are at least ``min_new``
    and more than ``max_fraction`` of the traced outputs (one lucky unit is not a trend). Cost: the trace's
    attack run.
    """
    if trace is None:
        return not_applicable("late_restarts", "needs a PGD or APGD attack (keeping its best iterate) to trace")
    runs = trace.margins.shape[0]
    if runs < 2:
        return not_applicable("late_restarts", f"{trace.attack} makes a single run (no restarts to compare)")
    success = (trace.margins > 0).any(1)      # (runs, outputs)
    new = success[-1] & ~success[:-1].any(0)
    n = int(new.sum())
    fired = n >= min_new and n > max_fraction * new.numel()
    evidence = (f"{trace.attack}: the last of {runs} runs broke {n} outputs no earlier run broke "
                f"({int(success.any(0).sum())} broken in all)")
    return CheckResult("late_restarts", fired, evidence,
                       "more restarts (or target classes) would break more: increase restarts until the last "
                       "ones find nothing new" if fired else "", values={"runs": runs, "new_in_last_run": n})
