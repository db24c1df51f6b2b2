"""Projected gradient descent (Madry et al. 2018) and FGSM (Goodfellow et al. 2015)."""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from ..adapters.base import Victim
from ..errors import NonFiniteError, check_int, check_positive
from ..threats.base import ThreatModel
from .base import Attack, Threat, apply_masks, prepare_victim


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


def may_drop_units(victim: Victim) -> bool:
    """Whether an evaluating attack may take units out of its working batch once they are adversarial:
    the forward is deterministic (one success is final), outputs are units, and the adapter can select."""
    return victim.deterministic and victim.unit is None and victim.select is not None


def initial_delta(victim: Victim, threats: Dict[str, ThreatModel], generator: Optional[torch.Generator],
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


def restrict(victim: Victim, units: Optional[Tensor], target_labels: Optional[Tensor],
             threats: Dict[str, ThreatModel]):
    """The victim, target labels and threat models restricted to ``units`` (``None``: all)."""
    if units is None or units.numel() == victim.num_units:
        return victim, target_labels, threats
    return (prepare_victim(victim.select(units)), None if target_labels is None else target_labels[units],
            {k: t.subset(units) for k, t in threats.items()})


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
            do victims with a sampling forward (``Victim.deterministic=False``, e.g. :class:`EOT`).
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

    def describe(self) -> str:
        return (super().describe()[:-1] + f", steps={self.steps}, step_size={self.step_size:g}, "
                f"restarts={self.restarts})")

    def perturb(self, victim, threats: Dict[str, ThreatModel], target_labels, clean_logits):
        x = victim.inputs
        device = next(iter(x.values())).device
        gen = self.generator()
        keep_best = self.keep_best and clean_logits is not None
        # Evaluation only: once a unit is adversarial its best point cannot lose that status, so it
        # leaves the working batch (and later restarts). Robust accuracy is unchanged, work shrinks.
        early = keep_best and self.early_stop and may_drop_units(victim)
        best = {k: torch.zeros_like(x[k]) for k in threats}
        best_logits = None if clean_logits is None else clean_logits.clone()
        # the loss's dtype follows the model's (float64 models): index_put below needs matching dtypes
        dtype = torch.get_default_dtype() if clean_logits is None else torch.promote_types(clean_logits.dtype,
                                                                                           torch.float32)
        best_succ = torch.full((victim.num_units,), -1.0, device=device)
        best_loss = torch.full((victim.num_units,), float("-inf"), device=device, dtype=dtype)
        for restart in range(self.restarts):
            active = (best_succ < 1).nonzero().squeeze(1) if early else None
            if active is not None and active.numel() == 0:
                break
            work, labels, wthreats = restrict(victim, active, target_labels, threats)
            xw = work.inputs
            radius = {k: t.radius(xw[k]) for k, t in wthreats.items()}
            delta = initial_delta(victim, threats, gen, self.random_start, None if work is victim else active)
            delta = self._project(apply_masks(delta, work), wthreats, xw)
            last = self.steps if keep_best else self.steps - 1
            for t in range(last + 1):
                need_grad = t < self.steps
                logits, loss, grads = input_gradients(self, work, xw, delta, labels, need_grad)
                if keep_best:
                    succ = work.per_unit(self.is_success(logits, work, labels).float())
                    uloss = work.per_unit(loss)
                    if active is None:
                        better = (succ > best_succ) | ((succ == best_succ) & (uloss > best_loss))
                        best_succ = torch.where(better, succ, best_succ)
                        best_loss = torch.where(better, uloss, best_loss)
                        for k in threats:
                            best[k] = torch.where(better.reshape(-1, *([1] * (x[k].dim() - 1))), delta[k], best[k])
                        best_logits = torch.where(victim.per_output(better)[:, None], logits, best_logits)
                    else:
                        better = (succ > best_succ[active]) | ((succ == best_succ[active]) & (uloss > best_loss[active]))
                        sel = active[better]
                        best_succ[sel] = succ[better]
                        best_loss[sel] = uloss[better].to(best_loss.dtype)
                        best_logits[sel] = logits[better].to(best_logits.dtype)
                        for k in threats:
                            best[k][sel] = delta[k][better]
                        done = succ >= 1
                        if need_grad and bool(done.any()):
                            keep = ~done
                            if not bool(keep.any()):
                                break
                            active = active[keep]
                            work, labels, wthreats = restrict(victim, active, target_labels, threats)
                            xw = work.inputs
                            radius = {k: r[keep] for k, r in radius.items()}
                            delta = {k: d[keep] for k, d in delta.items()}
                            grads = {k: g[keep] for k, g in grads.items()}
                if not need_grad:
                    break
                with torch.no_grad():
                    delta = {k: wthreats[k].step(delta[k], grads[k], radius[k] * self.step_size) for k in wthreats}
                    delta = self._project(apply_masks(delta, work), wthreats, xw)
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
