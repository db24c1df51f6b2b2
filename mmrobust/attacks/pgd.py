"""Projected gradient descent (Madry et al. 2018) and FGSM (Goodfellow et al. 2015)."""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from ..adapters.base import Victim
from ..errors import NonFiniteError, check_int, check_positive
from ..threats.base import ThreatModel
from .base import Attack, Threat, apply_masks


def input_gradients(attack: Attack, victim: Victim, x: Dict[str, Tensor], delta: Dict[str, Tensor],
                    target_labels: Optional[Tensor], need_grad: bool = True):
    """One forward (and backward) pass at ``x + delta``.

    Returns per-output logits, per-output loss, and the gradients of the summed loss with respect to
    each perturbation (``None`` when ``need_grad`` is false).
    """
    if need_grad:
        leaves = {k: d.detach().requires_grad_(True) for k, d in delta.items()}
        logits = victim.forward({k: x[k] + leaves[k] if k in leaves else x[k] for k in x})
        loss = attack.output_loss(logits, victim, target_labels)
        grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
        grads = dict(zip(leaves.keys(), grads))
        for k, g in grads.items():
            if not bool(torch.isfinite(g).all()):
                raise NonFiniteError(f"NaN/Inf in the input gradient of {k!r}; the model or loss overflows")
        return logits.detach(), loss.detach(), grads
    with torch.no_grad():
        logits = victim.forward({k: x[k] + delta[k] if k in delta else x[k] for k in x})
        loss = attack.output_loss(logits, victim, target_labels)
    return logits, loss, None


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
    """

    name = "pgd"

    def __init__(self, threat: Threat, *, steps: int = 10, step_size: Optional[float] = None, restarts: int = 1,
                 random_start: bool = True, keep_best: bool = True, **kwargs):
        super().__init__(threat, **kwargs)
        self.steps = check_int("steps", steps, 1)
        self.step_size = 2.5 / self.steps if step_size is None else check_positive("step_size", step_size)
        self.restarts = check_int("restarts", restarts, 1)
        self.random_start = bool(random_start)
        self.keep_best = bool(keep_best)

    def describe(self) -> str:
        return (super().describe()[:-1] + f", steps={self.steps}, step_size={self.step_size:g}, "
                f"restarts={self.restarts})")

    def perturb(self, victim, threats: Dict[str, ThreatModel], target_labels, clean_logits):
        x = victim.inputs
        device = next(iter(x.values())).device
        gen = self.generator(device)
        keep_best = self.keep_best and clean_logits is not None
        radius = {k: t.radius(x[k]) for k, t in threats.items()}
        best = {k: torch.zeros_like(x[k]) for k in threats}
        best_logits = None
        best_succ = torch.full((victim.num_units,), -1.0, device=device)
        best_loss = torch.full((victim.num_units,), float("-inf"), device=device)
        for restart in range(self.restarts):
            if self.random_start:
                delta = {k: t.random_init(x[k], gen) for k, t in threats.items()}
            else:
                delta = {k: torch.zeros_like(x[k]) for k in threats}
            delta = self._project(apply_masks(delta, victim), threats, x)
            last = self.steps if keep_best else self.steps - 1
            for t in range(last + 1):
                need_grad = t < self.steps
                logits, loss, grads = input_gradients(self, victim, x, delta, target_labels, need_grad)
                if keep_best:
                    succ = victim.per_unit(self.is_success(logits, victim, target_labels).float())
                    uloss = victim.per_unit(loss)
                    better = (succ > best_succ) | ((succ == best_succ) & (uloss > best_loss))
                    if bool(better.any()):
                        best_succ = torch.where(better, succ, best_succ)
                        best_loss = torch.where(better, uloss, best_loss)
                        for k in threats:
                            m = better.reshape(-1, *([1] * (x[k].dim() - 1)))
                            best[k] = torch.where(m, delta[k], best[k])
                        out_better = victim.per_output(better)[:, None]
                        best_logits = logits if best_logits is None else torch.where(out_better, logits, best_logits)
                if not need_grad:
                    break
                with torch.no_grad():
                    delta = {k: threats[k].step(delta[k], grads[k], radius[k] * self.step_size) for k in threats}
                    delta = self._project(apply_masks(delta, victim), threats, x)
            if not keep_best:
                best = delta
        adv = {k: x[k] + best[k] if k in best else x[k] for k in x}
        return (adv, best_logits) if keep_best else adv

    @staticmethod
    def _project(delta, threats, x):
        return {k: threats[k].project(delta[k], x[k]) for k in threats}


class FGSM(PGD):
    """Fast gradient sign method (Goodfellow et al. 2015, https://arxiv.org/abs/1412.6572).

    One step of length ``step_size`` (fraction of the radius, default 1) from the clean input, or from a
    random start as in fast adversarial training (Wong et al. 2020, https://arxiv.org/abs/2001.03994,
    who use ``random_start=True, step_size=1.25``). Works with any threat model's steepest-ascent step.
    """

    name = "fgsm"

    def __init__(self, threat: Threat, *, step_size: float = 1.0, random_start: bool = False, **kwargs):
        kwargs.pop("steps", None)
        super().__init__(threat, steps=1, step_size=step_size, random_start=random_start, **kwargs)
