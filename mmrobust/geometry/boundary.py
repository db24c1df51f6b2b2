"""Distance to the decision boundary, measured by a minimal-norm attack.

For a correctly classified input the distance to the decision boundary in norm :math:`\\|\\cdot\\|` is

.. math:: d(x) = \\min \\{\\|\\delta\\| : \\arg\\max_k f_k(x + \\delta) \\ne y\\}

(Szegedy et al. 2014; Fawzi et al. 2018, https://arxiv.org/abs/1802.08686, Eq. 1). Any minimal-norm attack
gives an upper bound on it. The convention for :class:`~mmrobust.attacks.base.AttackResult` is the one of
the library's minimal-norm attacks (e.g. FMN): ``size`` is the smallest norm found, ``+inf`` when no
adversarial example was found, and ``0`` for inputs the model already misclassifies.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from ..adapters.base import BatchAdapter, Victim, infer_adapter
from ..attacks.base import Attack, AttackResult, normal_tensor
from ..errors import check_choice, check_finite_nonneg, check_int, check_positive
from ..threats.base import ThreatModel


class PerUnitRadius(ThreatModel):
    """``base`` with a separate radius per unit (used by budget searches); everything else is ``base``'s."""

    def __init__(self, base: ThreatModel, radii: Tensor):
        if not isinstance(base, ThreatModel):
            raise TypeError(f"base must be a ThreatModel, got {type(base).__name__}")
        super().__init__(float(radii.max()) if radii.numel() else 0.0, lower=base.lower, upper=base.upper)
        self.base = base
        self.radii = radii.detach()
        self.norm = base.norm

    def radius(self, x: Tensor) -> Tensor:
        if self.radii.shape != (x.shape[0],):
            raise ValueError(f"PerUnitRadius has {self.radii.numel()} radii for {x.shape[0]} units")
        return self.radii.to(device=x.device, dtype=x.dtype)

    def subset(self, units: Tensor) -> "PerUnitRadius":
        return PerUnitRadius(self.base, self.radii[units.to(self.radii.device)])

    def scaled(self, factor: float) -> "PerUnitRadius":
        return PerUnitRadius(self.base, self.radii * check_finite_nonneg("factor", factor))

    def random_init(self, x, generator=None):
        # a random start of the base set, stretched from the base's radius to this unit's one (units where the
        # base allows nothing start at 0)
        start = self.base.random_init(x, generator)
        base_r = self.base.radius(x)
        ratio = torch.where(base_r > 0, self.radius(x) / base_r.clamp_min(torch.finfo(x.dtype).tiny),
                            torch.zeros_like(base_r))
        return self.project(start * ratio.reshape(-1, *([1] * (x.dim() - 1))), x)

    def step(self, delta, grad, step_size):
        return self.base.step(delta, grad, step_size)

    def project(self, delta, x, radius=None):
        return self.base.project(delta, x, self.radius(x) if radius is None else radius)

    def size(self, delta, x):
        return self.base.size(delta, x)


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


class PredictedLabelAdapter(BatchAdapter):
    """Wraps an adapter so that the scored labels are the model's own clean predictions.

    A minimal-norm attack then measures the distance to the nearest point where the *prediction changes*,
    which is defined for misclassified inputs too (their distance to the region of the predicted class);
    the true labels travel in ``Victim.meta["true_target"]`` (and ``AttackResult.extras``).
    """

    def __init__(self, adapter: Optional[BatchAdapter] = None):
        self.adapter = adapter
        self.modality = getattr(adapter, "modality", "generic")

    def victim(self, model, batch):
        inner = (self.adapter or infer_adapter(batch)).victim(model, batch)
        with torch.no_grad():
            prediction = inner.forward({k: normal_tensor(v) for k, v in inner.inputs.items()}).argmax(1)
        select = None
        if inner.select is not None:
            def select(index):
                return _relabel(inner.select(index))
        meta = dict(inner.meta)
        meta["true_target"] = inner.target
        return Victim(inputs=inner.inputs, target=prediction.to(inner.target.device), forward=inner.forward,
                      rebuild=inner.rebuild, unit=inner.unit, masks=inner.masks, select=select, meta=meta)

    def batch_size(self, batch):
        return (self.adapter or infer_adapter(batch)).batch_size(batch)


def _relabel(victim: Victim) -> Victim:
    with torch.no_grad():
        prediction = victim.forward({k: normal_tensor(v) for k, v in victim.inputs.items()}).argmax(1)
    victim.meta = dict(victim.meta, true_target=victim.target)
    victim.target = prediction.to(victim.target.device)
    return victim


def boundary_distances(result: AttackResult, name: Optional[str] = None) -> Tensor:
    """Per-output boundary distance from a minimal-norm attack's result.

    ``0`` where the clean input is already misclassified, the attack's size where it succeeded and
    ``+inf`` where it did not (so the distance is only bounded below by the search range).
    """
    size = result.output_size(name).to(torch.float64 if result.logits.dtype == torch.float64 else torch.float32)
    dist = torch.where(result.success, size, torch.full_like(size, float("inf")))
    return torch.where(result.clean_correct, dist, torch.zeros_like(dist))


def boundary_distance(model: nn.Module, batch: Any, attack: Optional[Attack] = None, *,
                      threat: Optional[ThreatModel] = None, steps: int = 100, search_steps: int = 8,
                      adapter: Optional[BatchAdapter] = None, relative_to: str = "label") -> Tensor:
    """Distance to the decision boundary for every output of ``batch`` (Fawzi et al. 2018, Eq. 1).

    .. math:: d(x) = \\min \\{\\|\\delta\\| : \\arg\\max_k f_k(x + \\delta) \\ne y\\}

    Args:
        attack: a minimal-norm attack (``FMN``, :class:`MinimalNormSearch`, or any attack whose result size is
            the smallest adversarial norm, ``+inf`` when none was found).
        threat: when ``attack`` is ``None``: the norm to measure in. L-inf/L2/L1 balls use
            ``FMN(threat, steps=steps)`` (Pintor et al. 2021; ``eps`` is ignored); other threat models a
            :class:`MinimalNormSearch` over ``PGD(threat, steps=20, random_start=False)`` with the margin loss,
            bisecting ``search_steps`` times below ``threat.eps``.
        relative_to: ``"label"`` (misclassified inputs get ``0``) or ``"prediction"`` (distance to where the
            prediction changes, for every input; see :class:`PredictedLabelAdapter`).
    Returns:
        ``(outputs,)`` distances; ``0`` for misclassified inputs, ``+inf`` when none was found.
    """
    check_choice("relative_to", relative_to, ("label", "prediction"))
    if attack is None:
        if threat is None:
            raise ValueError("pass a minimal-norm attack or a threat (e.g. L2Ball(3.0)) giving the norm")
        if threat.norm in ("linf", "l2", "l1"):
            from ..attacks.fmn import FMN
            attack = FMN(threat, steps=check_int("steps", steps, 1), adapter=adapter)
        else:
            from ..attacks.pgd import PGD
            # from the clean point, the first step follows the gradient exactly (random starts cost precision)
            attack = MinimalNormSearch(PGD(threat, steps=20, loss="margin", random_start=False, adapter=adapter),
                                       search_steps=search_steps)
    if relative_to == "prediction":
        attack = with_predicted_labels(attack)
    return boundary_distances(attack(model, batch))


def with_predicted_labels(attack: Attack) -> Attack:
    """A shallow copy of ``attack`` that reads batches through :class:`PredictedLabelAdapter`."""
    clone = copy.copy(attack)
    clone.adapter = PredictedLabelAdapter(attack.adapter)
    return clone
