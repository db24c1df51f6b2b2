"""Fast Minimum-Norm attack (Pintor et al. 2021): the smallest adversarial perturbation per example."""

from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import Tensor

from ..errors import check_fraction, check_int, check_positive
from ..threats.base import ThreatModel, per_unit
from .base import Attack, Threat, apply_masks
from .kernel import input_gradients
from .losses import fixed_loss

#: the dual norm measures the distance to the linearised boundary, |loss| / ||grad||_dual
_DUAL = {"linf": 1.0, "l2": 2.0, "l1": float("inf")}


class FMN(Attack):
    """Fast Minimum-Norm attack (Pintor et al. 2021, "Fast minimum-norm adversarial attacks through
    adaptive norm constraints", https://arxiv.org/abs/2102.12827, Algorithm 1) for L-inf, L2 and L1.

    It alternates a gradient step on the logit margin with a projection onto a ball whose radius
    :math:`\\epsilon_k` adapts per unit: it shrinks while the point is adversarial and grows otherwise,

    .. math::
        \\epsilon_{k+1} = \\begin{cases} \\min(\\epsilon_k (1 - \\gamma_k),\\ \\|\\delta^*\\|) & \\text{adversarial} \\\\
        \\epsilon_k (1 + \\gamma_k) & \\text{not adversarial, one found before} \\\\
        \\|\\delta_k\\| + |L| / \\|\\nabla L\\|_{*} & \\text{none found yet} \\end{cases},\\quad
        \\delta_{k+1} = \\Pi_{\\epsilon_{k+1}}\\Big(\\delta_k + \\alpha_k \\frac{\\nabla L}{\\|\\nabla L\\|_2}\\Big)

    with :math:`L = \\max_{j\\ne y} z_j - z_y` (targeted: :math:`z_t - \\max_{j \\ne t} z_j`) and
    :math:`\\gamma_k, \\alpha_k` cosine-annealed from ``gamma``/``alpha`` to ``gamma_final``/``alpha_final``.
    The projection is the threat model's own ``project(delta, x, radius=eps_k)`` (ball and value box).

    **Output semantics** (a minimal-norm attack): the threat model only gives the norm and the value box;
    its ``eps`` is ignored unless ``cap=True``. Per unit the result holds the smallest adversarial
    perturbation found; ``size`` is its norm in the threat model's measure, ``+inf`` where no adversarial
    point was found (the clean input is returned there and ``success`` is false). With ``cap=True``,
    points larger than the threat model's radius count as not found, so the result is an ordinary
    bounded attack. Already misclassified inputs have size 0. Inside a budgeted evaluation
    (:func:`~mmrobust.evaluate`, :class:`~mmrobust.attacks.Ensemble`, ``RobustnessEvaluation``) an
    uncapped FMN's points beyond the radius count as not broken (dropped), never as successes. Works on one attackable input (a single ThreatModel).

    Args:
        steps: iterations (paper: 1000 for the curves, 100 is usually close).
        gamma, gamma_final: initial and final relative change of the radius.
        alpha, alpha_final: initial and final step length (L2 length of the step, in input units);
            ``alpha_final`` defaults to ``alpha / 100``.
        cap: treat the threat model's ``eps`` as an upper bound on the returned size.

    Example:
        >>> from mmrobust.threats import L2Ball
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> from mmrobust.attacks import FMN
        >>> result = FMN(L2Ball(1.0, lower=0, upper=1), steps=20)(model, [x, y])
        >>> sizes = result.size["image"]      # smallest L2 norm found per example, inf where none
        >>> bool((sizes[result.success] < float("inf")).all())
        True
    """

    name = "fmn"

    def __init__(self, threat: Threat, *, steps: int = 100, gamma: float = 0.05, gamma_final: float = 0.001,
                 alpha: float = 1.0, alpha_final: Optional[float] = None, cap: bool = False, **kwargs):
        super().__init__(threat, loss=fixed_loss(type(self).__name__, kwargs), **kwargs)
        for t in ([threat] if isinstance(threat, ThreatModel) else threat.values()):
            if t.norm not in _DUAL:
                raise ValueError(f"FMN supports threat models with norm 'linf', 'l2' or 'l1', got "
                                 f"{type(t).__name__} with norm {t.norm!r}")
        self.steps = check_int("steps", steps, 1)
        self.gamma = check_fraction("gamma", gamma, open_low=True, open_high=True)
        self.gamma_final = check_fraction("gamma_final", gamma_final, open_high=True)
        self.alpha = check_positive("alpha", alpha)
        self.alpha_final = self.alpha / 100 if alpha_final is None else check_positive("alpha_final", alpha_final)
        self.cap = bool(cap)

    @property
    def bounded(self) -> bool:
        """Whether every returned point lies inside the threat model's radius (only with ``cap``). Budgeted
        evaluations (``evaluate``, ``Ensemble``, ``RobustnessEvaluation``) count the points of an uncapped
        FMN outside the radius as not broken."""
        return self.cap

    def settings(self) -> List[str]:
        return super().settings() + [f"steps={self.steps}"] + (["cap"] if self.cap else [])

    def perturb(self, victim, threats, target_labels, clean_logits):
        if len(threats) != 1:
            raise ValueError("FMN minimises the norm of one perturbation; give it a single ThreatModel")
        name, threat = next(iter(threats.items()))
        x = victim.inputs[name]
        dual = _DUAL[threat.norm]
        units = victim.num_units
        cap = threat.radius(x) if self.cap else torch.full((units,), float("inf"), dtype=x.dtype, device=x.device)
        worst = _farthest_size(threat, x)
        delta = torch.zeros_like(x)
        best_delta = torch.zeros_like(x)
        best_size = torch.full((units,), float("inf"), dtype=x.dtype, device=x.device)
        found = torch.zeros(units, dtype=torch.bool, device=x.device)
        eps = torch.zeros(units, dtype=x.dtype, device=x.device)
        best_logits = None
        for k in range(self.steps + 1):
            need_grad = k < self.steps
            logits, loss, grads = input_gradients(self, victim, victim.inputs, {name: delta}, target_labels,
                                                  need_grad)
            is_adv = victim.per_unit((~self.is_success(logits, victim, target_labels)).float()) == 0
            size = threat.size(delta, x)
            smaller = is_adv & (size < best_size) & (size <= cap * (1 + 1e-6))
            found |= smaller
            best_size = torch.where(smaller, size, best_size)
            best_delta = torch.where(per_unit(smaller, x), delta, best_delta)
            if clean_logits is not None:
                out = victim.per_output(smaller)[:, None]
                best_logits = torch.where(out, logits, best_logits if best_logits is not None else logits)
            if not need_grad:
                break
            cosine = (1 + math.cos(math.pi * k / self.steps)) / 2
            gamma = self.gamma_final + (self.gamma - self.gamma_final) * cosine
            alpha = self.alpha_final + (self.alpha - self.alpha_final) * cosine
            g = grads[name]
            with torch.no_grad():
                uloss = victim.per_unit(loss)
                to_boundary = uloss.abs() / g.flatten(1).norm(p=dual, dim=1).clamp_min(1e-12)
                eps = torch.where(is_adv, torch.minimum(eps * (1 - gamma), best_size),
                                  torch.where(found, eps * (1 + gamma), size + to_boundary))
                eps = torch.minimum(eps, worst)
                g = g / per_unit(g.flatten(1).norm(dim=1).clamp_min(1e-12), g)
                moved = apply_masks({name: delta + alpha * g}, victim)[name]
                delta = threat.project(moved, x, radius=eps)
        adv = {**victim.inputs, name: x + best_delta}
        if clean_logits is None:
            return adv
        # where nothing was found best_delta is 0, so best_logits must be the clean logits there
        best_logits = torch.where(victim.per_output(found)[:, None], best_logits, clean_logits)
        return adv, best_logits, found


def _farthest_size(threat: ThreatModel, x: Tensor) -> Tensor:
    """Size of the largest perturbation the value box allows (``+inf`` without a box)."""
    if threat.lower is None or threat.upper is None:
        return torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
    far = torch.where(x - threat.lower > threat.upper - x, threat.lower - x, threat.upper - x)
    return threat.size(far, x)
