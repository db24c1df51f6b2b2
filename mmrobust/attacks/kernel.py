"""The attack kernel: the pieces every gradient attack is made of.

One forward/backward pass at a perturbation (:func:`input_gradients`), the start of a run
(:func:`initial_delta`), the projection onto every threat model (:func:`project`), the working set of
an early-stopping attack (:func:`may_drop_units`, :func:`restrict`) and the per-unit best point over
iterations, restarts and target classes (:class:`BestPoint`). PGD, APGD, FMN and FAB are written with
them, so each attack file reads like its paper's algorithm.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ..adapters.base import BatchView
from ..errors import NonFiniteError
from ..threats.base import ThreatModel, per_unit
from .reading import apply_masks, prepare_victim


def input_gradients(attack, victim: BatchView, x: Dict[str, Tensor], delta: Dict[str, Tensor],
                    target_labels: Optional[Tensor], need_grad: bool = True):
    """One forward (and backward) pass at ``x + delta``.

    Returns per-output logits, per-output loss (``attack.output_loss``), and the gradients of the summed
    loss with respect to each perturbation (``None`` when ``need_grad`` is false).
    """
    if need_grad:
        leaves = {k: d.detach().requires_grad_(True) for k, d in delta.items()}
        logits = victim.forward({k: x[k] + leaves[k] if k in leaves else x[k] for k in x})
        loss = attack.output_loss(logits, victim, target_labels)
        require_input_graph(loss, leaves)
        grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
        # only the samples the adapter lets change count: a step normalised over the padding's gradient too
        # (L2/SNR, L1 top-k) would lose the padding's share of its length when the mask is applied after it
        grads = apply_masks(dict(zip(leaves.keys(), grads)), victim)
        for k, g in grads.items():
            if not bool(torch.isfinite(g).all()):
                raise NonFiniteError(f"NaN/Inf in the input gradient of {k!r}; the model or loss overflows")
        return logits.detach(), loss.detach(), grads
    with torch.no_grad():
        logits = victim.forward({k: x[k] + delta[k] if k in delta else x[k] for k in x})
        loss = attack.output_loss(logits, victim, target_labels)
    return logits, loss, None


def require_input_graph(out: Tensor, leaves: Dict[str, Tensor]) -> None:
    """Raise a clear error when ``out`` does not depend on the perturbations through autograd: the model's
    forward cut the input's gradient (``x.detach()``, ``.numpy()``, ``torch.no_grad()`` inside forward)."""
    if out.requires_grad:
        return
    raise RuntimeError(
        f"the model's output does not depend on the input {sorted(leaves)} through autograd: its forward cuts "
        "the input's gradient (e.g. x.detach(), x.numpy() or torch.no_grad() inside forward), so a gradient "
        "attack cannot run. Keep the forward differentiable in the input, or evaluate it with a black-box "
        "attack (mmrobust.attacks.Square) or an EOT/BPDA-style wrapper; a gradient attack on it would overstate "
        "robustness (Athalye et al. 2018, https://arxiv.org/abs/1802.00420)")


def unit_scores(attack, victim: BatchView, logits: Tensor, loss: Tensor,
                target_labels: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Per unit: the number of outputs where the attack's goal holds, and the summed loss."""
    succ = victim.per_unit(attack.is_success(logits, victim, target_labels).float())
    return succ, victim.per_unit(loss)


def may_drop_units(victim: BatchView) -> bool:
    """Whether an evaluating attack may take units out of its working batch once they are adversarial:
    the forward is deterministic (one success is final), outputs are units, and the adapter can select."""
    return victim.deterministic and victim.unit is None and victim.select is not None


def initial_delta(victim: BatchView, threats: Dict[str, ThreatModel], generator: Optional[torch.Generator],
                  random: bool, units: Optional[Tensor] = None) -> Dict[str, Tensor]:
    """A run's starting perturbation: a random point of each ball, or zero.

    Random starts are drawn for the whole batch and then restricted to ``units``, so a unit starts from
    the same point whichever units an early-stopping attack still works on.
    """
    x = victim.inputs
    if random:
        delta = {k: t.random_init(x[k], generator) for k, t in threats.items()}
    else:
        delta = {k: torch.zeros_like(x[k]) for k in threats}
    return delta if units is None else {k: d[units] for k, d in delta.items()}


def restrict(victim: BatchView, units: Optional[Tensor], target_labels: Optional[Tensor],
             threats: Dict[str, ThreatModel]):
    """The victim, target labels and threat models restricted to ``units`` (``None``: all)."""
    if units is None or units.numel() == victim.num_units:
        return victim, target_labels, threats
    return (prepare_victim(victim.select(units)), None if target_labels is None else target_labels[units],
            {k: t.subset(units) for k, t in threats.items()})


def kept(keep: Tensor, *values):
    """Each value -- a per-unit tensor or a dict of them -- restricted to the units where ``keep`` is true:
    the state of a run that units leave (early stopping)."""
    return [{k: v[keep] for k, v in o.items()} if isinstance(o, dict) else o[keep] for o in values]


def project(delta: Dict[str, Tensor], threats: Dict[str, ThreatModel], x: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Each perturbation projected onto its threat model at ``x`` (ball and value box)."""
    return {k: threats[k].project(delta[k], x[k]) for k in threats}


class BestPoint:
    """Per-unit best point so far, ordered by (number of successful outputs, loss).

    PGD and APGD keep it over iterations, restarts and target classes, so more of any of them never makes
    the returned point worse (AutoAttack's order). ``logits`` start as ``logits`` (e.g. the clean ones)
    or as the first update's; losses are kept in ``dtype`` (the model's, for float64 models).
    """

    def __init__(self, x: Dict[str, Tensor], keys, num_units: int, device, *,
                 logits: Optional[Tensor] = None, dtype: Optional[torch.dtype] = None):
        self.delta = {k: torch.zeros_like(x[k]) for k in keys}
        self.succ = torch.full((num_units,), -1.0, device=device)
        self.loss = torch.full((num_units,), float("-inf"), device=device, dtype=dtype)
        self.logits: Optional[Tensor] = logits

    def remaining(self) -> Tensor:
        """The units not yet adversarial (an early-stopping attack's work)."""
        return (self.succ < 1).nonzero().squeeze(1)

    def update(self, victim: BatchView, delta: Dict[str, Tensor], logits: Tensor, succ_units: Tensor,
               loss_units: Tensor, at: Optional[Tensor] = None) -> None:
        """Keep the better of the stored and the given points; ``at``: the units the given values belong
        to when a run works on a subset (one output per unit)."""
        if at is not None:
            better = (succ_units > self.succ[at]) | ((succ_units == self.succ[at]) & (loss_units > self.loss[at]))
            sel = at[better]
            self.succ[sel] = succ_units[better]
            self.loss[sel] = loss_units[better].to(self.loss.dtype)
            self.logits[sel] = logits[better].to(self.logits.dtype)
            for k in self.delta:
                self.delta[k][sel] = delta[k][better]
            return
        better = (succ_units > self.succ) | ((succ_units == self.succ) & (loss_units > self.loss))
        if not bool(better.any()):
            return
        self.succ = torch.where(better, succ_units, self.succ)
        self.loss = torch.where(better, loss_units, self.loss)
        for k in self.delta:
            self.delta[k] = torch.where(per_unit(better, delta[k]), delta[k], self.delta[k])
        out_better = victim.per_output(better)[:, None]
        self.logits = logits if self.logits is None else torch.where(out_better, logits, self.logits)

    def take(self, units: Tensor) -> "BestPoint":
        """The best points of ``units`` (one output per unit), to continue on a smaller batch."""
        part = object.__new__(BestPoint)
        part.delta = {k: d[units] for k, d in self.delta.items()}
        part.succ, part.loss = self.succ[units], self.loss[units]
        part.logits = None if self.logits is None else self.logits[units]
        return part

    def put(self, units: Tensor, part: "BestPoint") -> None:
        """Write back what :meth:`take` handed out, after a run on those units."""
        for k in self.delta:
            self.delta[k][units] = part.delta[k]
        self.succ[units], self.loss[units] = part.succ, part.loss
        self.logits[units] = part.logits

    def adversarial(self, victim: BatchView) -> Dict[str, Tensor]:
        """The victim's inputs moved to the best points."""
        return perturbed(victim, self.delta)


def perturbed(victim: BatchView, delta: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """``victim.inputs`` plus ``delta`` (inputs without a perturbation stay clean)."""
    x = victim.inputs
    return {k: x[k] + delta[k] if k in delta else x[k] for k in x}


class TargetClassRuns:
    """For targeted attacks used as AutoAttack uses them (APGD-T, FAB-T; mix in before the attack class).

    Called without ``target_labels``, the attack runs towards each of the ``n_target_classes`` most
    likely wrong classes of the clean input in turn (:meth:`target_classes`) and success means
    *misclassified*; with explicit ``target_labels`` success means *classified as the target*. Which of
    the two a call is, is its objective's ``reach_targets`` (:meth:`objective_for`).
    """

    n_target_classes: int

    def objective_for(self, victim, target_labels, clean_logits):
        return dataclasses.replace(super().objective_for(victim, target_labels, clean_logits),
                                   reach_targets=target_labels is not None)

    def explicit_targets(self) -> bool:
        """Whether the call in progress runs towards targets its caller gave."""
        return self.objective is not None and self.objective.reach_targets

    def reached(self, logits: Tensor, labels: Tensor, targets: Optional[Tensor]) -> Tensor:
        """Per output: the call's goal is reached (the target for explicit targets, else misclassified)."""
        if self.explicit_targets():
            return logits.argmax(1) == targets
        return logits.argmax(1) != labels

    def target_classes(self, victim: BatchView, clean_logits: Tensor) -> List[Tensor]:
        """The most likely wrong classes of the clean input, most likely first, one tensor per rank."""
        n_classes = clean_logits.shape[1]
        ranked = clean_logits.masked_fill(torch.nn.functional.one_hot(victim.target, n_classes).bool(),
                                          float("-inf")).argsort(1, descending=True)
        return [ranked[:, r] for r in range(min(self.n_target_classes, n_classes - 1))]
