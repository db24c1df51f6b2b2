"""Fast Adaptive Boundary attack (Croce & Hein 2020): minimal-norm adversarial points, and FAB-T."""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from ..errors import NonFiniteError, check_fraction, check_int, check_positive
from ..threats.base import ThreatModel, per_unit
from ..utils import rand, randn
from .base import Attack, Threat
from .hyperplane import NORMS, hyperplane_step
from .losses import fixed_loss
from .kernel import BestPoint, TargetClassRuns, kept, may_drop_units, require_input_graph, restrict

#: FAB picks the hyperplane closest in the dual norm: |f| / ||grad f||_q with 1/p + 1/q = 1
_DUAL = {"linf": 1.0, "l2": 2.0, "l1": float("inf")}
#: above this fraction of iterates crossing the boundary, a step first runs a forward pass without gradients
#: (one forward + backward at the new point and another at the pulled-back point cost more than one forward
#: pass and one forward + backward, with a backward pass about twice a forward pass)
_PROBE_FIRST = 1 / 3


class FAB(Attack):
    """Fast Adaptive Boundary attack (Croce & Hein 2020, "Minimally distorted adversarial examples with a
    fast adaptive boundary attack", https://arxiv.org/abs/1907.02044, Algorithm 1) for L-inf, L2 and L1.

    At the iterate :math:`x^{(i)}` every decision boundary :math:`f_l - f_y = 0` is linearised and the
    closest one in the dual norm is chosen (Eq. 5, :math:`s = \\arg\\min_{l \\ne y} |f_l - f_y| / \\|\\nabla
    (f_l - f_y)\\|_q`). Both the iterate and the clean input are projected onto that hyperplane inside the
    value box (:func:`~mmrobust.attacks.hyperplane.hyperplane_step`, Eq. 3), and the two steps are mixed
    with an extrapolation (Eq. 7-8):

    .. math::
        x^{(i+1)} = \\Pi_C\\big((1 - \\alpha)(x^{(i)} + \\eta \\delta^{(i)}) + \\alpha (x_{orig} + \\eta
        \\delta_{orig})\\big),\\quad \\alpha = \\min\\Big(\\frac{\\|\\delta^{(i)}\\|}{\\|\\delta^{(i)}\\| +
        \\|\\delta_{orig}\\|}, \\alpha_{max}\\Big)

    and when :math:`x^{(i+1)}` is adversarial it is recorded if smaller than the best so far and pulled back
    towards the clean input, :math:`x^{(i+1)} \\leftarrow (1 - \\beta) x_{orig} + \\beta x^{(i+1)}` (Eq. 9).
    Restarts after the first start at a random point at distance ``eps / 2`` (the authors' code).

    **Output semantics** (as :class:`~mmrobust.attacks.FMN`): per unit the smallest adversarial perturbation
    found; ``size`` is ``+inf`` and the clean input is returned where none was found. The threat model gives
    the norm, the value box and the scale of random restarts; with ``cap=True`` its radius also bounds the
    result (larger points count as not found), which makes FAB an ordinary bounded attack as AutoAttack uses
    it: later restarts (and target classes) then run only on units with no point inside the budget yet.
    Already misclassified inputs have size 0. One output per unit and one attackable input.

    Compared with the authors' code, an iterate's adversarial status is read from the forward pass that also
    gives the next gradients (one forward pass per iteration fewer); only units pulled back get a second one.
    While more than a third of the iterates cross the boundary at each step (a robust model, whose
    boundary lies beyond the budget), a step runs as the authors' does: a forward pass decides, then one
    pass with gradients at the points after the pull-back. Both orders compute the same values.

    Args:
        steps: iterations per restart (AutoAttack: 100).
        restarts: runs per target; the first from the clean input.
        alpha_max, eta, beta: the paper's :math:`\\alpha_{max}` (0.1), overshoot :math:`\\eta` (1.05) and
            backward step :math:`\\beta` (0.9).
        cap: treat the threat model's radius as an upper bound on the returned size.
        early_stop: with ``cap``, a unit leaves a run as soon as it has a point inside the budget (robust
            accuracy unchanged, the returned point may be larger than the one the full run would find).

    Example:
        >>> from mmrobust.attacks import FAB
        >>> from mmrobust.threats import L2Ball
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> result = FAB(L2Ball(1.0, lower=0, upper=1), steps=10)(model, [x, y])
        >>> sizes = result.size["image"]                        # inf where no adversarial point was found
        >>> bool((sizes[result.success & result.clean_correct] > 0).all()), sizes.shape
        (True, torch.Size([8]))
    """

    name = "fab"

    def __init__(self, threat: Threat, *, steps: int = 100, restarts: int = 1, alpha_max: float = 0.1,
                 eta: float = 1.05, beta: float = 0.9, cap: bool = False, early_stop: bool = False, **kwargs):
        super().__init__(threat, loss=fixed_loss(type(self).__name__, kwargs), **kwargs)
        for t in ([threat] if isinstance(threat, ThreatModel) else threat.values()):
            if t.norm not in NORMS:
                raise ValueError(f"{type(self).__name__} supports threat models with norm 'linf', 'l2' or 'l1', "
                                 f"got {type(t).__name__} with norm {t.norm!r}")
        self.steps = check_int("steps", steps, 1)
        self.restarts = check_int("restarts", restarts, 1)
        self.alpha_max = check_fraction("alpha_max", alpha_max)
        self.eta = check_positive("eta", eta)
        if self.eta < 1:
            raise ValueError(f"eta must be >= 1 (the overshoot past the linearised boundary, Croce & Hein 2020 Eq. 8; "
                             f"the paper uses 1.05), got {eta!r}: below 1 the step stops short of the boundary")
        self.beta = check_fraction("beta", beta)
        self.cap = bool(cap)
        self.early_stop = bool(early_stop)

    @property
    def bounded(self) -> bool:
        """Only a capped FAB keeps every returned point inside the radius; budgeted evaluations count an
        uncapped FAB's points beyond it as not broken (:mod:`mmrobust.threats.verify`)."""
        return self.cap

    @property
    def can_stop_early(self) -> bool:
        """Only a capped FAB is a bounded attack whose units may stop at their first success."""
        return self.cap

    def settings(self) -> List[str]:
        return super().settings() + [f"steps={self.steps}", f"restarts={self.restarts}"] + (["cap"] if self.cap else [])

    # -- targets ----------------------------------------------------------------------------------
    def target_runs(self, victim, target_labels, clean_logits):
        """The targets of the successive runs (``None``: untargeted)."""
        return [target_labels if self.targeted else None]

    def reached(self, logits: Tensor, labels: Tensor, targets: Optional[Tensor]) -> Tensor:
        """Per output: the goal of the call is reached (misclassified; the target for explicit targets)."""
        return logits.argmax(1) != labels

    # -- the attack -------------------------------------------------------------------------------
    def perturb(self, victim, threats, target_labels, clean_logits):
        if len(threats) != 1:
            raise ValueError(f"{type(self).__name__} minimises the norm of one perturbation; give it a single "
                             "ThreatModel")
        if victim.unit is not None:
            raise ValueError(f"{type(self).__name__} needs one scored output per unit (images, waveforms); this "
                             "batch maps several outputs to a unit")
        name, threat = next(iter(threats.items()))
        x = victim.inputs[name]
        if clean_logits is None:
            with torch.no_grad():
                clean_logits = victim.forward(victim.inputs)
        units = victim.num_units
        cap = threat.radius(x) if self.cap else torch.full((units,), float("inf"), dtype=x.dtype, device=x.device)
        # the smallest adversarial point: successful (succ 1) first, then the largest -size
        best = BestPoint(victim.inputs, threats, units, x.device, logits=clean_logits.clone(), dtype=x.dtype)
        reached = self.reached(clean_logits, victim.target, target_labels)
        best.succ, best.loss = reached.float(), torch.where(reached, 0.0, best.loss)
        shrink = may_drop_units(victim)
        for targets in self.target_runs(victim, target_labels, clean_logits):
            for restart in range(self.restarts):
                start = self._start(threat, x, restart)
                todo = ~(-best.loss <= cap) if self.cap else ~reached
                if not bool(todo.any()):
                    break
                active = todo.nonzero().squeeze(1) if shrink else None
                self._run(victim, name, threat, active, targets, start, cap, best, shrink and self.early_stop)
        size = -best.loss
        found = torch.isfinite(size) & (size <= cap)
        adv = {**victim.inputs, name: x + torch.where(per_unit(found, x), best.delta[name], torch.zeros_like(x))}
        return adv, torch.where(found[:, None], best.logits, clean_logits), found

    def _start(self, threat: ThreatModel, x: Tensor, restart: int) -> Optional[Tensor]:
        """``None`` (the clean input) for the first restart, else a random point at distance ``eps / 2``."""
        if restart == 0:
            return None
        gen = self.generator()
        if threat.norm == "linf":
            t = 2 * rand(x.shape, gen, x) - 1
        else:
            t = randn(x.shape, gen, x)
        t = t / per_unit(threat.size(t, x).clamp_min(1e-12), t)
        return threat.clamp_box(t * per_unit(threat.radius(x), t) / 2, x)

    def _run(self, victim, name, threat, active, targets, start, cap, best, early) -> None:
        """One run of Algorithm 1 on the units ``active`` (``None``: all), updating ``best`` in place."""
        at = torch.arange(victim.num_units, device=cap.device) if active is None else active
        work, wtargets, wthreats = restrict(victim, active, targets, {name: threat})
        delta = torch.zeros_like(work.inputs[name]) if start is None else start[at]
        mask = work.masks.get(name)
        if mask is not None:
            delta = delta * mask
        logits, f, g = self._linearise(work, name, delta, wtargets, need_grad=True)
        crossed = 0.0  # fraction of the iterates that crossed the boundary at the last step
        for i in range(self.steps):
            last = i + 1 == self.steps
            with torch.no_grad():
                delta = self._step(wthreats[name], work.inputs[name], delta, f, g, mask)
            # when most iterates cross, their gradients here would be thrown away after the pull-back: a
            # plain forward pass decides, then one pass with gradients at the final points (the same values)
            probe = crossed > _PROBE_FIRST
            logits, f, g = self._linearise(work, name, delta, wtargets, need_grad=not (last or probe))
            adv = self.reached(logits, work.target, wtargets)
            crossed = float(adv.float().mean())
            if crossed == 0:
                if probe and not last:
                    _, f, g = self._linearise(work, name, delta, wtargets, need_grad=True)
                continue
            size = wthreats[name].size(delta, work.inputs[name])
            best.update(work, {name: delta}, logits, adv.float(), torch.where(adv, -size, -torch.inf), at=at)
            if last:
                break
            if early:  # units with a point inside the budget leave the run
                keep = ~(-best.loss[at] <= cap[at])
                if not bool(keep.any()):
                    return
                if not bool(keep.all()):
                    at, delta, adv = kept(keep, at, delta, adv)
                    if f is not None:
                        f, g = kept(keep, f, g)
                    work, wtargets, wthreats = restrict(victim, at, targets, {name: threat})
                    mask = work.masks.get(name)
            # pulled back towards the clean input (Eq. 9), with new linearisations there
            delta = torch.where(per_unit(adv, delta), self.beta * delta, delta)
            idx = adv.nonzero().squeeze(1)
            if probe or (idx.numel() and work.select is None):
                _, f, g = self._linearise(work, name, delta, wtargets, need_grad=True)
            elif idx.numel():
                pwork, ptargets, _ = restrict(work, idx, wtargets, wthreats)
                _, pf, pg = self._linearise(pwork, name, delta[idx], ptargets, need_grad=True)
                f, g = f.index_copy(0, idx, pf), g.index_copy(0, idx, pg)

    def _linearise(self, work, name, delta, targets, need_grad: bool):
        """Logits at ``x0 + delta`` and the linearised boundaries there: ``f`` ``(units, K)`` values and
        ``g`` ``(units, K, *x.shape[1:])`` input gradients of :math:`f_l - f_y` (untargeted: every class, the
        true one masked with ``inf``; targeted: the target only)."""
        x0, y = work.inputs[name], work.target
        if not need_grad:
            with torch.no_grad():
                logits = work.forward({**work.inputs, name: x0 + delta})
            return logits, None, None
        leaf = delta.detach().requires_grad_(True)
        logits = work.forward({**work.inputs, name: x0 + leaf})
        rows = torch.arange(len(y), device=y.device)
        true = logits[rows, y]
        if targets is not None:
            diff = (logits[rows, targets] - true)[:, None]
        else:
            diff = logits - true[:, None]
        require_input_graph(diff, {name: leaf})
        g = _jacobian(diff, leaf)
        if not bool(torch.isfinite(g).all()):
            raise NonFiniteError(f"NaN/Inf in the input gradient of {name!r}; the model overflows")
        f = diff.detach()
        if targets is None:
            f = f.scatter(1, y[:, None], float("inf"))
        return logits.detach(), f, g

    def _step(self, threat, x0, delta, f, g, mask):
        """One FAB update of ``delta`` (Eq. 3-8)."""
        n = delta.shape[0]
        gf = g.flatten(2)
        if mask is not None:
            gf = gf * mask.expand_as(delta).flatten(1)[:, None]
        dist = f.abs() / gf.norm(p=_DUAL[threat.norm], dim=2).clamp_min(1e-12)
        s = dist.argmin(1)
        rows = torch.arange(n, device=delta.device)
        w, fs = gf[rows, s], f[rows, s]
        cur = delta.flatten(1)
        lower = -torch.inf if threat.lower is None else threat.lower
        upper = torch.inf if threat.upper is None else threat.upper
        x_flat = x0.flatten(1)
        pts = torch.cat([x_flat + cur, x_flat])
        # the hyperplane f + <w, z - x_i> = 0 through both points: required change c = -f - <w, z - x_i>
        c = torch.cat([-fs, -fs + (w * cur).sum(1)])
        lo = (lower - pts).clamp(max=0)
        hi = (upper - pts).clamp(min=0)
        d = hyperplane_step(threat.norm, torch.cat([w, w]), c, lo, hi)
        d_cur, d_orig = d[:n], d[n:]
        size = threat.size(d.reshape(2 * n, *delta.shape[1:]), torch.cat([x0, x0])).clamp_min(1e-8)
        a_cur, a_orig = size[:n], size[n:]
        alpha = (a_cur / (a_cur + a_orig)).clamp(0, self.alpha_max)[:, None]
        new = (1 - alpha) * (cur + self.eta * d_cur) + alpha * (self.eta * d_orig)
        new = threat.clamp_box(new.reshape(delta.shape), x0)
        return new if mask is None else new * mask


def _jacobian(out: Tensor, leaf: Tensor) -> Tensor:
    """``(units, K, *leaf.shape[1:])`` gradients of each column of ``out`` (rows depend on their own unit):
    one vectorised backward pass (``is_grads_batched``), or one pass per column where vmap is unsupported."""
    k = out.shape[1]
    if k == 1:
        return torch.autograd.grad(out.sum(), leaf)[0][:, None]
    eye = torch.eye(k, dtype=out.dtype, device=out.device)[:, None, :].expand(k, *out.shape)
    try:
        g = torch.autograd.grad(out, leaf, eye, is_grads_batched=True, retain_graph=True)[0]
    except RuntimeError:
        g = torch.stack([torch.autograd.grad(out[:, j].sum(), leaf, retain_graph=True)[0] for j in range(k)])
    return g.transpose(0, 1)


class FABT(TargetClassRuns, FAB):
    """Targeted FAB (FAB-T, Croce & Hein 2020, https://arxiv.org/abs/2003.01690, Sec. 4): one linearised
    boundary per run, :math:`f_t - f_y`, towards each of the ``n_target_classes`` most likely wrong classes
    of the clean input in turn; success means *misclassified* (the AutoAttack use). With explicit
    ``target_labels`` it runs towards those only and success means *classified as the target*. A targeted
    run needs one backward pass per iteration instead of one per class.

    Args:
        n_target_classes: how many of the most likely wrong classes to try (AutoAttack: 9).
        Other arguments as :class:`FAB`.

    Example:
        >>> from mmrobust.attacks import FABT
        >>> from mmrobust.threats import LinfBall
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> result = FABT(LinfBall(0.2, lower=0, upper=1), steps=10, n_target_classes=2, cap=True)(model, [x, y])
        >>> bool((result.size["image"][result.success] <= 0.2 + 1e-6).all())
        True
    """

    name = "fab-t"

    def __init__(self, threat: Threat, *, n_target_classes: int = 9, **kwargs):
        kwargs.pop("targeted", None)
        super().__init__(threat, targeted=True, **kwargs)
        self.n_target_classes = check_int("n_target_classes", n_target_classes, 1)

    def settings(self) -> List[str]:
        return super().settings() + [f"n_target_classes={self.n_target_classes}"]

    def target_runs(self, victim, target_labels, clean_logits):
        return [target_labels] if self.explicit_targets() else self.target_classes(victim, clean_logits)
