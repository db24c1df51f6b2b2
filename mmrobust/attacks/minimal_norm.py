"""A minimal-norm attack from any fixed-budget attack, by bisection over the budget."""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from ..errors import check_int, check_positive
from ..threats.base import ThreatModel
from ..threats.per_unit import PerUnitRadius
from .base import Attack
from .result import AttackResult


class MinimalNormSearch(Attack):
    """A minimal-norm attack from any fixed-budget attack by a per-unit bisection over the budget.

    For each unit, the budget :math:`\\epsilon` is bisected on :math:`[0, \\epsilon_{max}]`: a success at
    :math:`\\epsilon` (an adversarial example of size :math:`s \\le \\epsilon`) sets the upper end to
    :math:`s`, a failure sets the lower end to :math:`\\epsilon`. The returned size is the smallest
    successful norm found, an upper bound on the boundary distance :math:`d(x)` (Fawzi et al. 2018, Eq. 1);
    ``+inf`` when the attack fails at :math:`\\epsilon_{max}`. This is the fallback for threat models
    without a dedicated minimal-norm attack such as FMN (Pintor et al. 2021, https://arxiv.org/abs/2102.12827).

    Args:
        attack: the fixed-budget attack (e.g. ``PGD(L2Ball(3.0), steps=20)``); its threat's radius (per unit,
            e.g. of an ``SNRBall``) is :math:`\\epsilon_{max}` unless ``eps_max`` is given.
        search_steps: bisection steps; the bracket shrinks by :math:`2^{-\\text{steps}}`.

    Example:
        >>> from mmrobust.attacks import PGD, MinimalNormSearch
        >>> from mmrobust.threats import L2Ball
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> attack = MinimalNormSearch(PGD(L2Ball(2.0, lower=0, upper=1), steps=5, seed=0), search_steps=4)
        >>> result = attack(model, [x, y])
        >>> size = result.size["image"]  # per example: the smallest successful L2 norm found, inf where none
        >>> size.shape, bool((size[result.success] <= 2.0 + 1e-6).all()), bool(size[~result.success].isinf().all())
        (torch.Size([8]), True, True)
    """

    name = "minimal_norm_search"

    def __init__(self, attack: Attack, *, search_steps: int = 8, eps_max: Optional[float] = None):
        if not isinstance(attack, Attack):
            raise TypeError(f"attack must be a mmrobust Attack (e.g. PGD), got {type(attack).__name__}")
        if not isinstance(attack.threat, ThreatModel):
            raise TypeError("MinimalNormSearch needs an attack with a single ThreatModel, not a mapping")
        super().__init__(attack.threat, loss=attack.loss_fn, targeted=attack.targeted, adapter=attack.adapter,
                         seed=attack.seed)
        self.loss_name = attack.loss_name
        self.inner = attack
        self.search_steps = check_int("search_steps", search_steps, 1)
        self.eps_max = None if eps_max is None else check_positive("eps_max", eps_max)

    @property
    def bounded(self) -> bool:
        """Whether every returned point lies in the inner attack's threat model (no larger ``eps_max``)."""
        return self.eps_max is None

    def describe(self) -> str:
        top = "threat radius" if self.eps_max is None else f"{self.eps_max:g}"
        return f"MinimalNormSearch({self.inner.describe()}, eps_max={top}, steps={self.search_steps})"

    def _success(self, victim, adv, target_labels) -> Tensor:
        with torch.no_grad():
            logits = victim.forward(adv)
        return victim.per_unit(self.inner.is_success(logits, victim, target_labels).float(), "amax") > 0

    def perturb(self, victim, threats: Dict[str, ThreatModel], target_labels, clean_logits):
        (name, base), = threats.items()
        x = victim.inputs[name]
        n = victim.num_units
        device = x.device
        with torch.no_grad():
            logits0 = victim.forward(victim.inputs) if clean_logits is None else clean_logits
        found = victim.per_unit(self.inner.is_success(logits0, victim, target_labels).float(), "amax") > 0
        best = x.clone()
        best_size = torch.where(found, torch.zeros(n, device=device), torch.full((n,), float("inf"), device=device))
        lo = torch.zeros(n, dtype=x.dtype, device=device)
        top = (base.radius(x).to(x.dtype) if self.eps_max is None
               else torch.full((n,), self.eps_max, dtype=x.dtype, device=device))
        hi = top.clone()
        # first probe at eps_max, then bisect; units already adversarial need no search
        radii = hi.clone()
        for _ in range(self.search_steps + 1):
            active = (~found & (lo < top)) | (found & (best_size > lo + 1e-6 * top))
            if not bool(active.any()):
                break
            threat = PerUnitRadius(base, torch.where(active, radii, torch.zeros_like(radii)))
            out = self.inner.perturb(victim, {name: threat}, target_labels, logits0)
            adv = out[0] if isinstance(out, tuple) else out
            success = self._success(victim, adv, target_labels) & active
            size = base.size(adv[name] - x, x)
            improve = success & (size < best_size)
            m = improve.reshape(-1, *([1] * (x.dim() - 1)))
            best = torch.where(m, adv[name].detach(), best)
            best_size = torch.where(improve, size, best_size)
            found = found | success
            hi = torch.where(success, torch.minimum(hi, size.to(hi.dtype)), hi)
            lo = torch.where(active & ~success, radii, lo)
            radii = (lo + hi) / 2
        adv = dict(victim.inputs)
        adv[name] = best
        return adv

    def finish(self, victim, threats, adv, clean_logits, target_labels, logits=None) -> AttackResult:
        result = super().finish(victim, threats, adv, clean_logits, target_labels, logits)
        found = victim.per_unit(result.success.float(), "amax") > 0
        for k, s in result.size.items():
            result.size[k] = torch.where(found, s, torch.full_like(s, float("inf")))
        return result
