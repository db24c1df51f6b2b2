"""Projected gradient descent (Madry et al. 2018) and FGSM (Goodfellow et al. 2015)."""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor

from ..errors import check_int, check_positive
from ..threats.base import ThreatModel
from .base import Attack, Threat, apply_masks
from .kernel import BestPoint, initial_delta, input_gradients, kept, may_drop_units, perturbed, project, \
    restrict, unit_scores


class PGD(Attack):
    """Projected gradient ascent with random restarts (Madry et al. 2018, https://arxiv.org/abs/1706.06083).

    .. math:: \\delta^{t+1} = \\Pi_{\\Delta(x)}\\big(\\delta^t + \\alpha\\, s(\\nabla_\\delta \\mathcal{L}(f(x+\\delta^t), y))\\big)

    where :math:`s` is the threat model's steepest-ascent direction (sign for L-inf, normalised gradient
    for L2, sparse top-k for L1) and :math:`\\Pi` its exact projection.

    Per unit, the best point seen over all steps and restarts is returned: first by number of
    successful outputs, then by loss (as AutoAttack's PGD does), so more steps or restarts never make the
    attack weaker.

    Args:
        steps: gradient steps per restart.
        step_size: step length as a fraction of the budget radius; default ``2.5 / steps`` (Madry et al.).
        restarts: number of random restarts (the first starts at a random point if ``random_start``).
        random_start: start inside the ball at random instead of at the clean input.
        keep_best: return the best iterate (default) instead of the last.
        early_stop: when evaluating (``attack(model, batch)``), stop working on units as soon as they are
            adversarial, and skip them in later restarts. Every remaining example takes the same steps from
            the same random starts as without it (results differ only by floating-point effects of the
            smaller batches), at a
            fraction of the cost on weak models; but the loss and the confidence of the
            returned points are those at the first success, so leave it off when a metric reads them
            (e.g. :class:`~mmrobust.metrics.ConfidenceThresholdedError`, which needs high-confidence
            adversarial examples). :func:`mmrobust.evaluate`, which reads only robust accuracy, turns it
            on for its private copies of the attacks, as does :class:`~mmrobust.callbacks.RobustnessEvaluation`
            for attacks that feed no ``result_metrics``. ``generate`` (training)
            never stops early, so adversarial training maximises the loss on every example, and neither
            do victims with a sampling forward (``BatchView.deterministic=False``, e.g. :class:`EOT`).

    Example:
        >>> from mmrobust.threats import LinfBall
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> from mmrobust.attacks import PGD
        >>> result = PGD(LinfBall(0.1, lower=0, upper=1), steps=5, seed=0)(model, [x, y])
        >>> bool(((result.inputs["image"] - x).abs() <= 0.1 + 1e-6).all()), result.robust.shape
        (True, torch.Size([8]))
        >>> adversarial_batch = PGD(LinfBall(0.1, lower=0, upper=1), steps=5, seed=0).generate(model, [x, y])
    """

    name = "pgd"
    #: whether ``early_stop`` may be switched on (objectives not about misclassification say no)
    can_stop_early = True

    def __init__(self, threat: Threat, *, steps: int = 10, step_size: Optional[float] = None, restarts: int = 1,
                 random_start: bool = True, keep_best: bool = True, early_stop: bool = False, **kwargs):
        super().__init__(threat, **kwargs)
        self.steps = check_int("steps", steps, 1)
        self.step_size = 2.5 / self.steps if step_size is None else check_positive("step_size", step_size)
        self.restarts = check_int("restarts", restarts, 1)
        self.random_start = bool(random_start)
        self.keep_best = bool(keep_best)
        self.early_stop = bool(early_stop)

    def settings(self) -> List[str]:
        return super().settings() + [f"steps={self.steps}", f"step_size={self.step_size:g}", f"restarts={self.restarts}"]

    def perturb(self, victim, threats: Dict[str, ThreatModel], target_labels, clean_logits):
        if not (self.keep_best and clean_logits is not None):  # training, or the last iterate wanted
            for _ in range(self.restarts):
                delta = self.run_once(victim, threats, target_labels)
            return perturbed(victim, delta)
        x = victim.inputs
        dtype = torch.promote_types(clean_logits.dtype, torch.float32)  # float64 models keep float64 losses
        best = BestPoint(x, threats, victim.num_units, clean_logits.device, logits=clean_logits.clone(), dtype=dtype)
        # Evaluation only: once a unit is adversarial its best point cannot lose that status, so it
        # leaves the working batch (and later restarts). Robust accuracy is unchanged, work shrinks.
        early = self.early_stop and may_drop_units(victim)
        for _ in range(self.restarts):
            units = best.remaining() if early else None
            if units is not None and units.numel() == 0:
                break
            self.run_once(victim, threats, target_labels, best, units)
        return best.adversarial(victim), best.logits

    def run_once(self, victim, threats, target_labels, best: Optional[BestPoint] = None,
                 units: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """One run from a start of :func:`initial_delta` on ``units`` (``None``: all); updates ``best``
        after every step (and evaluates the last iterate) when given, and returns the last iterate.
        With ``units``, a unit leaves the run at its first adversarial iterate."""
        work, labels, wthreats = restrict(victim, units, target_labels, threats)
        xw = work.inputs
        radius = {k: t.radius(xw[k]) for k, t in wthreats.items()}
        delta = initial_delta(victim, threats, self.generator(), self.random_start, None if work is victim else units)
        delta = project(apply_masks(delta, work), wthreats, xw)
        for t in range(self.steps + 1 if best is not None else self.steps):
            need_grad = t < self.steps
            logits, loss, grads = input_gradients(self, work, xw, delta, labels, need_grad)
            if best is not None:
                succ, uloss = unit_scores(self, work, logits, loss, labels)
                best.update(work, delta, logits, succ, uloss, at=units)
                if units is not None and need_grad and bool((succ >= 1).any()):  # adversarial units leave
                    keep = succ < 1
                    if not bool(keep.any()):
                        break
                    units = units[keep]
                    work, labels, wthreats = restrict(victim, units, target_labels, threats)
                    xw = work.inputs
                    radius, delta, grads = kept(keep, radius, delta, grads)
            if not need_grad:
                break
            with torch.no_grad():
                delta = {k: wthreats[k].step(delta[k], grads[k], radius[k] * self.step_size) for k in wthreats}
                delta = project(apply_masks(delta, work), wthreats, xw)
        return delta


class FGSM(PGD):
    """Fast gradient sign method (Goodfellow et al. 2015, https://arxiv.org/abs/1412.6572).

    One step of length ``step_size`` (fraction of the radius, default 1) from the clean input, or from a
    random start as in fast adversarial training (Wong et al. 2020, https://arxiv.org/abs/2001.03994,
    who use ``random_start=True, step_size=1.25``). Works with any threat model's steepest-ascent step.

    Example:
        >>> from mmrobust.attacks import FGSM
        >>> from mmrobust.threats import LinfBall
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> result = FGSM(LinfBall(0.1, lower=0, upper=1))(model, [x, y])
        >>> bool(((result.inputs["image"] - x).abs() <= 0.1 + 1e-6).all())
        True
    """

    name = "fgsm"

    def __init__(self, threat: Threat, *, step_size: float = 1.0, random_start: bool = False, **kwargs):
        kwargs.pop("steps", None)
        super().__init__(threat, steps=1, step_size=step_size, random_start=random_start, **kwargs)
