"""Checks on the model itself, run on a few clean units before trusting any attack.

Each takes the :class:`~mmrobust.adapters.base.BatchView` of those units (the adapter's view of the batch, as
attacks see it) and costs at most two forward and two backward passes on them. They must run inside
:func:`~mmrobust.attacks.base.attack_mode` (eval mode, parameters frozen, everything restored afterwards),
which :class:`~mmrobust.checks.FailureChecks` does.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from ..adapters.base import BatchView
from ..attacks.losses import cross_entropy, margin
from ..threats.base import ThreatModel
from ..utils import randn
from .base import CheckResult, not_applicable, register


@register("randomised_forward", "model", "two clean forward passes give different outputs")
def randomised_forward(victim: BatchView, *, rtol: float = 1e-4) -> CheckResult:
    """Two clean forward passes in eval mode differ: the model samples (dropout left on, input noise,
    random transformations), so one attack run samples one draw of a random function, gradients are noisy
    and a "robust" unit may just have been lucky (Athalye et al. 2018, https://arxiv.org/abs/1802.00420,
    Sec. 4.3; Carlini et al. 2019, https://arxiv.org/abs/1902.06705, Sec. 5.2.2; Pintor et al. 2022,
    https://arxiv.org/abs/2106.09947, "unstable predictions").

    Fires when the largest logit difference exceeds ``rtol`` times the largest logit magnitude (so GPU
    non-determinism at float precision does not count). Cost: two forward passes.
    """
    with torch.no_grad():
        first = victim.forward(victim.inputs).float()
        second = victim.forward(victim.inputs).float()
    diff = float((first - second).abs().amax())
    scale = float(first.abs().amax().clamp_min(1.0))
    changed = int((first.argmax(1) != second.argmax(1)).sum())
    n = first.shape[0]
    fired = diff > rtol * scale
    evidence = (f"two clean passes on {n} outputs: largest logit difference {diff:.3g} (logit scale {scale:.3g}), "
                f"{changed} predictions changed")
    return CheckResult("randomised_forward", fired, evidence,
                       "the model is randomised: attack it with Expectation over Transformation "
                       "(mmrobust.attacks.Ensemble.rand, or EOT(attack, ...)) and report accuracy over several "
                       "forward samples" if fired else "",
                       values={"max_logit_difference": diff, "changed_predictions": changed, "outputs": n})


@register("probability_outputs", "model", "the model returns probabilities instead of logits")
def probability_outputs(victim: BatchView, *, atol: float = 1e-3) -> CheckResult:
    """The outputs are non-negative and every row sums to 1: the model ends in a softmax. Attacks take
    cross-entropy (and DLR, margin) of *logits*; on probabilities the loss saturates and its gradient
    vanishes for confident units (Carlini & Wagner 2017, https://arxiv.org/abs/1608.04644, Sec. 5.2;
    Carlini et al. 2019, https://arxiv.org/abs/1902.06705, Sec. 4.1). Cost: one forward pass.
    """
    with torch.no_grad():
        out = victim.forward(victim.inputs).double()
    sums = out.sum(1)
    nonneg = bool((out >= -atol).all())
    worst = float((sums - 1).abs().amax()) if out.numel() else 0.0
    fired = nonneg and worst <= atol
    evidence = (f"outputs {'are' if nonneg else 'are not all'} non-negative; rows sum to 1 within {worst:.2g} "
                f"(min {float(sums.min()):.4g}, max {float(sums.max()):.4g})")
    return CheckResult("probability_outputs", fired, evidence,
                       "the model returns probabilities: attack the logits (remove the final softmax, or wrap "
                       "the model so it returns log-probabilities) so the attack loss does not saturate" if fired
                       else "", values={"max_row_sum_error": worst, "nonnegative": float(nonneg)})


def _loss_and_grads(victim: BatchView, inputs: Dict[str, Tensor], names, loss_fn) -> tuple:
    """Per-output loss at ``inputs`` and its gradient with respect to ``inputs[name]`` for ``names``
    (zeros where the loss does not depend on an input through autograd)."""
    leaves = {k: v.detach().clone().requires_grad_(True) if k in names else v for k, v in inputs.items()}
    logits = victim.forward(leaves)
    loss = loss_fn(logits.float(), victim.target)
    wrt = [leaves[k] for k in names]
    if loss.requires_grad:
        grads = torch.autograd.grad(loss.sum(), wrt, allow_unused=True)
    else:
        grads = [None] * len(wrt)
    grads = {k: torch.zeros_like(leaves[k]) if g is None else g for k, g in zip(names, grads)}
    return loss.detach(), grads, loss.requires_grad


def _per_unit_norm(victim: BatchView, grads: Dict[str, Tensor]) -> Tensor:
    """Per unit, the L2 norm of the gradient over all inputs (NaN if any entry is not finite)."""
    total = None
    for k, g in grads.items():
        if k == "edge_weight":  # one graph (unit) for all edges of a single Data: summed into unit 0
            sq = g.double().pow(2).sum().reshape(1).expand(victim.num_units)
        else:
            if k in victim.masks:
                g = g * victim.masks[k]
            sq = g.reshape(g.shape[0], -1).double().pow(2).sum(1)
        total = sq if total is None else total + sq
    return total.sqrt()


def start_points(victim: BatchView, threats: Dict[str, ThreatModel], generator: Optional[torch.Generator]):
    """The clean inputs and one random start of the attack's threat models (where it draws random starts)."""
    points = {"the clean input": dict(victim.inputs)}
    if threats:
        starts = dict(victim.inputs)
        for k, t in threats.items():
            delta = t.random_init(victim.inputs[k], generator)
            if k in victim.masks:
                delta = delta * victim.masks[k]
            starts[k] = t.project(delta, victim.inputs[k]) + victim.inputs[k]
        points["a random start"] = starts
    return points


@register("zero_gradients", "model", "zero or non-finite input gradients at the start points")
def zero_gradients(victim: BatchView, threats: Dict[str, ThreatModel], generator: Optional[torch.Generator] = None,
                   *, edge_weights: bool = False) -> CheckResult:
    """Units whose input gradient of the cross-entropy is exactly zero or not finite at the clean input or
    at a random start of the threat model: a gradient attack cannot move from there, so they stay "robust"
    (Athalye et al. 2018, https://arxiv.org/abs/1802.00420, "shattered gradients"; Pintor et al. 2022,
    https://arxiv.org/abs/2106.09947, "unavailable gradients"). Typical causes: quantised or rounded inputs,
    ``detach``/``torch.no_grad`` inside ``forward``, step or sign functions, a saturated softmax output.
    With ``edge_weights`` (graph edge attacks) the gradient with respect to the edge weights counts too.

    Cost: one forward and backward pass per start point (two).
    """
    names = list(threats) or list(victim.inputs)
    inputs_for = {}
    if edge_weights and "graph" in victim.meta:
        graph = victim.meta["graph"]
        ew = graph.edge_weight if graph.edge_weight is not None else torch.ones(
            graph.edge_index.shape[1], device=graph.edge_index.device, dtype=victim.inputs["x"].dtype)
        inputs_for["edge_weight"] = ew
    n = victim.num_units
    zero = torch.zeros(n, dtype=torch.bool, device=victim.target.device)
    nonfinite = torch.zeros_like(zero)
    parts, detached = [], False
    for where, point in start_points(victim, threats, generator).items():
        point = {**point, **inputs_for}
        _, grads, connected = _loss_and_grads(victim, point, names + list(inputs_for), cross_entropy)
        detached = detached or not connected
        norm = _per_unit_norm(victim, grads).to(zero.device)
        z, bad = norm == 0, ~torch.isfinite(norm)
        zero |= z
        nonfinite |= bad
        parts.append(f"{int(z.sum())} zero and {int(bad.sum())} non-finite at {where}")
    n_zero, n_bad = int(zero.sum()), int(nonfinite.sum())
    fired = n_zero + n_bad > 0
    evidence = f"input gradients of {n} units: " + "; ".join(parts)
    if detached:
        evidence += " (the loss does not depend on the input through autograd: detach or no_grad in forward?)"
    return CheckResult("zero_gradients", fired, evidence,
                       "gradient attacks cannot move these units: find the component that blocks or breaks "
                       "gradients (rounding, detach, argmax, a final softmax) and attack through a differentiable "
                       "approximation of it (BPDA, Athalye et al. 2018), or add a gradient-free attack "
                       "(Square) and a larger-budget run" if fired else "",
                       values={"units": n, "zero": n_zero, "non_finite": n_bad})


@register("gradient_masking", "model", "input gradient disagrees with a finite-difference estimate")
def gradient_masking(victim: BatchView, threats: Dict[str, ThreatModel], generator: Optional[torch.Generator] = None,
                     *, scale: float = 0.1, rtol: float = 0.5, max_fraction: float = 0.25) -> CheckResult:
    """Non-differentiable or gradient-masking components: along a random direction :math:`d` the directional
    derivative autograd reports, :math:`\\nabla_x L(x)^\\top d`, disagrees with the central finite difference

    .. math:: \\frac{L(x + h d) - L(x - h d)}{2h}

    for more than ``max_fraction`` of the units. A unit disagrees when, with :math:`a` autograd's value and
    :math:`f` the finite difference,

    .. math:: |f - a| > \\mathrm{rtol}\\,\\max\\big(|f|,\\ |a|,\\ s\\big), \\qquad
       s = \\sqrt{\\textstyle\\sum_k \\|\\nabla_{x_k} L\\|^2 \\|d_k\\|^2 / n_k}

    (and :math:`\\max(|f|, |a|)` exceeds :math:`10^{-6}(1 + \\max|L|)`): :math:`s` is the typical size of a
    directional derivative along a random direction with :math:`n_k` nonzero entries (the root mean square of
    :math:`\\nabla L^\\top d` over directions with independent symmetric entries), so a unit whose random
    projection happens to land near zero is judged against the size its derivative usually has, not against
    its own near-zero value. Without :math:`s`, kinks exactly at :math:`x` (exact ties in the max pooling of
    a normal ReLU network, where autograd picks one branch and the central difference averages both) flagged
    a third of the units of an untrained M5 speech model whose median finite difference and autograd value
    agreed (issue 20).

    :math:`L` is the logit margin (it does not saturate like cross-entropy), :math:`d` a random point of the
    threat model's ball (a Gaussian direction when the input has none), and :math:`h` = ``scale``, so
    the finite difference probes 10% of the budget: a rounding or quantising input layer, a ``detach``, a
    sign function or a noisy defence shows up as a gradient that does not predict the loss change
    (Athalye et al. 2018, https://arxiv.org/abs/1802.00420, Sec. 3; Carlini et al. 2019,
    https://arxiv.org/abs/1902.06705, Sec. 5.2.3).

    Cost: one forward and backward pass and two forward passes.
    """
    names = [k for k in (list(threats) or list(victim.inputs)) if torch.is_floating_point(victim.inputs[k])]
    if not names:
        return not_applicable("gradient_masking", "no floating-point input to differentiate")
    x = victim.inputs
    direction = {}
    for k in names:
        if k in threats:
            d = threats[k].random_init(x[k], generator)
        else:
            d = randn(x[k].shape, generator, x[k]) * 1e-2 * x[k].float().std().clamp_min(1e-3)
        if k in victim.masks:
            d = d * victim.masks[k]
        direction[k] = d
    loss, grads, _ = _loss_and_grads(victim, dict(x), names, margin)
    h = scale
    with torch.no_grad():
        plus = margin(victim.forward({**x, **{k: x[k] + h * direction[k] for k in names}}).float(), victim.target)
        minus = margin(victim.forward({**x, **{k: x[k] - h * direction[k] for k in names}}).float(), victim.target)
        finite_diff = victim.per_unit(((plus - minus) / (2 * h)).double())
        auto, typical_sq = None, None
        for k in names:
            g = grads[k].double().reshape(x[k].shape[0], -1)
            d = direction[k].double().reshape(x[k].shape[0], -1)
            dot = (g * d).sum(1)
            # E[(g.d)^2] = |g|^2 |d|^2 / n over directions with n independent symmetric nonzero entries
            sq = (g * (d != 0)).pow(2).sum(1) * d.pow(2).sum(1) / (d != 0).sum(1).clamp_min(1)
            auto = dot if auto is None else auto + dot
            typical_sq = sq if typical_sq is None else typical_sq + sq
        typical = typical_sq.sqrt()
    floor = 1e-6 * (1 + victim.per_unit(loss.double().abs(), "amax"))
    bigger = torch.maximum(finite_diff.abs(), auto.abs())
    disagree = ((finite_diff - auto).abs() > rtol * torch.maximum(bigger, typical)) & (bigger > floor)
    n, k = int(disagree.numel()), int(disagree.sum())
    fired = k > max_fraction * n
    med_fd = float(finite_diff.abs().median())
    med_ad = float(auto.abs().median())
    evidence = (f"directional derivative of the logit margin along a random direction (finite difference over "
                f"{scale:g} of the budget) disagrees with autograd's on {k} of {n} units (median absolute finite "
                f"difference {med_fd:.3g}, median absolute autograd value {med_ad:.3g})")
    return CheckResult("gradient_masking", fired, evidence,
                       "the gradient does not describe the model's local behaviour (non-differentiable or "
                       "gradient-masking component): replace it by a differentiable approximation in the attack's "
                       "backward pass (BPDA, Athalye et al. 2018), or rely on gradient-free attacks (Square) and "
                       "larger budgets" if fired else "",
                       values={"units": n, "disagree": k, "median_finite_difference": med_fd,
                               "median_autograd": med_ad})
