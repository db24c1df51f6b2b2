"""Auto-PGD (Croce & Hein 2020): step-size free PGD with momentum, and its targeted DLR variant."""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional

import torch
from torch import Tensor

from ..errors import check_fraction, check_int, check_positive
from ..threats.base import ThreatModel, per_unit
from .base import Attack, Threat, apply_masks
from .kernel import BestPoint, initial_delta, input_gradients, kept, may_drop_units, perturbed, project, \
    restrict, TargetClassRuns, unit_scores


def apgd_checkpoints(steps: int) -> List[int]:
    """Iterations at which APGD may halve its step (Croce & Hein 2020, Sec. 3.2).

    .. math:: p_0 = 0,\\ p_1 = 0.22,\\ p_{j+1} = p_j + \\max(p_j - p_{j-1} - 0.03,\\ 0.06),\\quad w_j = \\lceil p_j N \\rceil
    """
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        # round away float noise (0.57 * 100 = 57.000000000000007) before the ceiling
    ws = {math.ceil(round(q * steps, 9)) for q in p[1:] if q < 1}
    return sorted(w for w in ws if 0 < w < steps)


class APGD(Attack):
    """Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks", https://arxiv.org/abs/2003.01690, Algorithm 1).

    .. math::
        z^{k+1} = \\Pi\\big(x^k + \\eta^k s(\\nabla f(x^k))\\big),\\quad
        x^{k+1} = \\Pi\\big(x^k + \\alpha (z^{k+1} - x^k) + (1 - \\alpha)(x^k - x^{k-1})\\big)

    with momentum :math:`\\alpha = 0.75` (:math:`\\alpha = 1` in the first step), initial step
    :math:`\\eta^0 = 2\\epsilon` and :math:`s` the threat model's steepest-ascent direction (sign for
    L-inf, normalised gradient for L2, the sparse step for L1). At the checkpoints
    :func:`apgd_checkpoints` the step is halved and the iterate reset to the best-loss point
    :math:`x_{max}` when (Eq. 4) the loss increased in fewer than :math:`\\rho = 0.75` of the steps since
    the last checkpoint, or (Eq. 5) the step was not halved at the last checkpoint and the best loss
    has not improved since.

    The returned point (per unit, over all iterations and restarts) is the best by number of
    successful outputs, then by loss. ``generate`` (training) returns :math:`x_{max}` of the last restart.

    Args:
        steps: iterations per restart (the paper's :math:`N_{iter}`; AutoAttack uses 100).
        restarts: random restarts; the best point over all of them is kept.
        loss: ``"ce"`` or ``"dlr"`` (Eq. 6) or any loss of :mod:`mmrobust.attacks.losses`.
        rho: the fraction of increasing steps below which the step is halved (Eq. 4).
        momentum: :math:`\\alpha` above.
        initial_step: :math:`\\eta^0` as a multiple of the budget radius (default 2; 1 for L1 balls).
        random_start: start each restart at a random point of the ball (else at the clean input).
        early_stop: when evaluating (``attack(model, batch)``), a unit leaves a run at its first
            adversarial iterate (step size, momentum and checkpoints are per unit, so the other units run
            on exactly as before), later restarts (and, for :class:`APGDT`, target classes) get only the
            units not yet adversarial -- as the reference implementation and torchattacks do -- and units
            misclassified on the clean input are not attacked. Robust accuracy is that of the full attack;
            the loss and confidence returned for a broken unit are those of its first adversarial point,
            not the highest found, so leave it off when a metric reads them. :func:`mmrobust.evaluate` and
            :class:`~mmrobust.callbacks.RobustnessEvaluation` turn it on for their private copies.

    Example:
        >>> from mmrobust.attacks import APGD
        >>> from mmrobust.threats import L2Ball
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> attack = APGD(L2Ball(0.5, lower=0, upper=1), steps=10, loss="dlr", seed=0)
        >>> robust_ok = attack(model, [x, y]).robust          # correct before and after the attack
        >>> robust_ok.dtype, robust_ok.shape
        (torch.bool, torch.Size([8]))
    """

    name = "apgd"
    #: whether ``early_stop`` may be switched on (see :class:`~mmrobust.attacks.PGD`)
    can_stop_early = True

    def __init__(self, threat: Threat, *, steps: int = 100, restarts: int = 1, loss="ce", rho: float = 0.75,
                 momentum: float = 0.75, initial_step: Optional[float] = None, random_start: bool = True,
                 early_stop: bool = False, **kwargs):
        super().__init__(threat, loss=loss, **kwargs)
        self.early_stop = bool(early_stop)
        self.steps = check_int("steps", steps, 1)
        self.restarts = check_int("restarts", restarts, 1)
        self.rho = check_fraction("rho", rho)
        self.momentum = check_fraction("momentum", momentum)
        self.initial_step = None if initial_step is None else check_positive("initial_step", initial_step)
        self.random_start = bool(random_start)

    def settings(self) -> List[str]:
        return super().settings() + [f"steps={self.steps}", f"restarts={self.restarts}"]

    def _initial_step(self, threats: Dict[str, ThreatModel]) -> float:
        if self.initial_step is not None:
            return self.initial_step
        return 1.0 if all(t.norm == "l1" for t in threats.values()) else 2.0

    def perturb(self, victim, threats, target_labels, clean_logits):
        if clean_logits is None:  # generate(): x_max of the last restart
            for _ in range(self.restarts):
                last_max = self.run_once(victim, threats, target_labels, None)
            return perturbed(victim, last_max)
        best = self.start_best(victim, threats, target_labels, clean_logits)
        for _ in range(self.restarts):
            if not self.run_on_remaining(victim, threats, target_labels, best):
                break
        return best.adversarial(victim), best.logits

    def stops_early(self, victim) -> bool:
        return self.early_stop and may_drop_units(victim)

    def start_best(self, victim, threats, target_labels, clean_logits) -> BestPoint:
        """An empty best point; with early stopping, units successful at the clean input count as done."""
        x = victim.inputs
        best = BestPoint(x, threats, victim.num_units, next(iter(x.values())).device)
        if self.stops_early(victim):
            succ, uloss = unit_scores(self, victim, clean_logits, self.output_loss(clean_logits, victim, target_labels),
                                           target_labels)
            done = succ >= 1
            best.succ = torch.where(done, succ, best.succ)
            best.loss = torch.where(done, uloss, best.loss)
            best.logits = clean_logits.clone()  # replaced for every other unit by its first iterate
        return best

    def run_on_remaining(self, victim, threats, target_labels, best: BestPoint) -> bool:
        """One run on the units ``best`` does not yet count as adversarial (all units without early
        stopping); ``False`` when none is left."""
        if not self.stops_early(victim):
            self.run_once(victim, threats, target_labels, best)
            return True
        active = (best.succ < 1).nonzero().squeeze(1)
        if active.numel() == 0:
            return False
        work, labels, wthreats = restrict(victim, active, target_labels, threats)
        if work is victim:
            self.run_once(victim, threats, target_labels, best)
            return True
        start = initial_delta(victim, threats, self.generator(), self.random_start, active)
        part = best.take(active)
        self.run_once(work, wthreats, labels, part, start=start)
        best.put(active, part)
        return True

    def run_once(self, victim, threats, target_labels, best: Optional[BestPoint],
                 start: Optional[Dict[str, Tensor]] = None) -> Dict[str, Tensor]:
        """One APGD run (Algorithm 1) from ``start`` (default: :func:`initial_delta`); updates ``best`` and
        returns :math:`x_{max} - x`.

        With early stopping a unit leaves the run at the first iterate that is adversarial (its step size,
        momentum and checkpoint state are per unit, so the others go on exactly as before)."""
        x = victim.inputs
        device = next(iter(x.values())).device
        if start is None:
            start = initial_delta(victim, threats, self.generator(), self.random_start)
        delta = project(apply_masks(start, victim), threats, x)
        early = best is not None and self.stops_early(victim)
        base, base_threats, base_labels = victim, threats, target_labels
        at: Optional[Tensor] = None  # the units still in the run, as positions in ``base`` (None: all)
        left: Optional[Dict[str, Tensor]] = None  # x_max - x of the units that left

        def step(d, grad, eta, radius):
            moved = {k: threats[k].step(d[k], grad[k], radius[k] * eta) for k in threats}
            return project(apply_masks(moved, victim), threats, x)

        eta = torch.full((victim.num_units,), self._initial_step(threats), device=device)
        checkpoints = set(apgd_checkpoints(self.steps))
        logits, loss, grad = input_gradients(self, victim, x, delta, target_labels)
        succ, uloss = unit_scores(self, victim, logits, loss, target_labels)
        if best is not None:
            best.update(victim, delta, logits, succ, uloss, at=at)
        r = _Run(eta=eta, radius={k: t.radius(x[k]) for k, t in threats.items()}, delta=delta, delta_prev=delta,
                 grad=grad, max_delta=delta, max_grad=grad, max_loss=uloss, prev_loss=uloss,
                 increases=torch.zeros_like(uloss), eta_at_ckpt=eta.clone(), max_loss_at_ckpt=uloss.clone())
        last_ckpt = 0
        for k in range(self.steps):
            if early and bool((succ >= 1).any()):  # adversarial units leave the run
                done = succ >= 1
                where = torch.arange(base.num_units, device=device) if at is None else at
                if left is None:  # the first departure: nothing has left yet, max_delta is full-size
                    left = {n: d.clone() for n, d in r.max_delta.items()}
                for n in r.max_delta:
                    left[n][where[done]] = r.max_delta[n][done]
                if bool(done.all()):
                    return left
                at, r = where[~done], r.kept(~done)
                victim, target_labels, threats = restrict(base, at, base_labels, base_threats)
                x = victim.inputs
            if k > 0 and k in checkpoints:
                oscillating = r.increases < self.rho * (k - last_ckpt)                     # Eq. 4
                stalled = (r.eta == r.eta_at_ckpt) & (r.max_loss <= r.max_loss_at_ckpt)   # Eq. 5
                reduce = oscillating | stalled
                r.eta_at_ckpt, r.max_loss_at_ckpt = r.eta.clone(), r.max_loss.clone()
                r.eta = torch.where(reduce, r.eta / 2, r.eta)
                r.delta = {n: torch.where(per_unit(reduce, r.delta[n]), r.max_delta[n], r.delta[n]) for n in threats}
                r.grad = {n: torch.where(per_unit(reduce, r.grad[n]), r.max_grad[n], r.grad[n]) for n in threats}
                # delta_prev stays x^(k-1): the next momentum term is x_max - x^(k-1) (Alg. 1, authors' code)
                r.increases = torch.zeros_like(r.increases)
                last_ckpt = k
            with torch.no_grad():
                if k == 0:
                    r.delta = step(r.delta, r.grad, r.eta, r.radius)  # first step without momentum
                else:
                    z = step(r.delta, r.grad, r.eta, r.radius)
                    a = self.momentum
                    moved = {n: r.delta[n] + a * (z[n] - r.delta[n]) + (1 - a) * (r.delta[n] - r.delta_prev[n])
                             for n in threats}
                    r.delta_prev = r.delta
                    r.delta = project(apply_masks(moved, victim), threats, x)
            need_grad = k + 1 < self.steps
            logits, loss, grad = input_gradients(self, victim, x, r.delta, target_labels, need_grad)
            succ, uloss = unit_scores(self, victim, logits, loss, target_labels)
            if best is not None:
                best.update(victim, r.delta, logits, succ, uloss, at=at)
            if need_grad:
                r.grad = grad
            improved = uloss > r.max_loss
            r.increases += (uloss > r.prev_loss).float()
            r.prev_loss = uloss
            r.max_loss = torch.where(improved, uloss, r.max_loss)
            r.max_delta = {n: torch.where(per_unit(improved, r.delta[n]), r.delta[n], r.max_delta[n]) for n in threats}
            if need_grad:
                r.max_grad = {n: torch.where(per_unit(improved, r.grad[n]), r.grad[n], r.max_grad[n]) for n in threats}
        if left is None:
            return r.max_delta
        for n in r.max_delta:
            left[n][at] = r.max_delta[n]
        return left


@dataclasses.dataclass
class _Run:
    """The per-unit state of one APGD run (Algorithm 1); units leaving the run take theirs with them."""

    eta: Tensor                    # step size, a multiple of the radius
    radius: Dict[str, Tensor]
    delta: Dict[str, Tensor]       # x^k - x
    delta_prev: Dict[str, Tensor]  # x^(k-1) - x
    grad: Dict[str, Tensor]        # the loss gradient at x^k
    max_delta: Dict[str, Tensor]   # x_max - x, the highest-loss iterate
    max_grad: Dict[str, Tensor]
    max_loss: Tensor
    prev_loss: Tensor
    increases: Tensor              # steps with a loss increase since the last checkpoint
    eta_at_ckpt: Tensor
    max_loss_at_ckpt: Tensor

    def kept(self, keep: Tensor) -> "_Run":
        """The state of the units where ``keep`` is true."""
        names = [f.name for f in dataclasses.fields(self)]
        return _Run(**dict(zip(names, kept(keep, *(getattr(self, n) for n in names)))))


class APGDT(TargetClassRuns, APGD):
    """Targeted APGD with the targeted DLR loss (Croce & Hein 2020, https://arxiv.org/abs/2003.01690, Eq. 7).

    .. math:: \\mathrm{DLR}_t(x, y) = -\\frac{z_y - z_t}{z_{\\pi_1} - (z_{\\pi_3} + z_{\\pi_4}) / 2}

    Without ``target_labels`` (the AutoAttack use) it runs APGD once towards each of the
    ``n_target_classes`` most likely wrong classes of the clean input and keeps, per unit, the best
    point; success then means *misclassified*. With explicit ``target_labels`` it runs towards those
    only and success means *classified as the target*.

    Args:
        n_target_classes: how many of the most likely wrong classes to try (AutoAttack: 9); capped at
            the number of classes minus one.
        Other arguments as :class:`APGD` (``loss`` defaults to ``"dlr"``; restarts are per target).

    Example:
        >>> from mmrobust.attacks import APGDT
        >>> from mmrobust.threats import LinfBall
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> attack = APGDT(LinfBall(0.1, lower=0, upper=1), steps=5, n_target_classes=2, loss="ce", seed=0)
        >>> attack(model, [x, y]).robust.shape         # 3 classes here; the DLR default needs 4
        ...                                            # success: misclassified
        torch.Size([8])
        >>> to = (y + 1) % 3
        >>> result = attack(model, [x, y], target_labels=to)   # success: classified as the target
        >>> bool((result.success == (result.logits.argmax(1) == to)).all())
        True
    """

    name = "apgd-t"

    def __init__(self, threat: Threat, *, n_target_classes: int = 9, loss="dlr", **kwargs):
        kwargs.pop("targeted", None)
        super().__init__(threat, loss=loss, targeted=True, **kwargs)
        self.n_target_classes = check_int("n_target_classes", n_target_classes, 1)

    def settings(self) -> List[str]:
        return super().settings() + [f"n_target_classes={self.n_target_classes}"]

    def perturb(self, victim, threats, target_labels, clean_logits):
        if self.explicit_targets() or clean_logits is None:
            return super().perturb(victim, threats, target_labels, clean_logits)
        classes = self.target_classes(victim, clean_logits)
        best = self.start_best(victim, threats, classes[0], clean_logits)
        for targets in classes:
            for _ in range(self.restarts):
                if not self.run_on_remaining(victim, threats, targets, best):
                    break
        return best.adversarial(victim), best.logits
