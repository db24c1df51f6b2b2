"""Local Lipschitz constant of the logits, from adversarially chosen pairs of inputs.

Following CLIP (Bungert et al. 2021, "CLIP: Cheap Lipschitz training of neural networks",
https://arxiv.org/abs/2103.12531, Eq. 2.3 and Algorithm 1), the Lipschitz constant is estimated by the
largest difference quotient over pairs found by gradient ascent:

.. math:: \\mathrm{Lip}(f; x) \\approx \\max_{x_1, x_2 \\in B_r(x)} \\frac{\\|f(x_1) - f(x_2)\\|_q}{\\|x_1 - x_2\\|}

where :math:`B_r(x)` is a threat model's ball around :math:`x` (its norm measures :math:`\\|x_1-x_2\\|`). Every
quotient is a lower bound on the true local constant; gradient ascent makes it tight for models whose
quotient is a Rayleigh-like function of the direction (exact for linear models: the operator norm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..adapters.base import BatchAdapter, BatchView
from ..attacks.base import attack_mode, check_logits
from ..errors import NonFiniteError, check_choice, check_int, check_positive
from ..threats.base import ThreatModel
from ..utils import make_generator
from ._victim import check_threat, forward_at, single_input, victim_for


def output_distance(victim: BatchView, a: Tensor, b: Tensor, p: float = 2) -> Tensor:
    """Per-unit :math:`\\|f(x_1) - f(x_2)\\|_p` of two logit tensors ``(outputs, C)`` (p in {1, 2, inf})."""
    diff = (a - b).abs()
    if p == 2:
        return victim.per_unit(diff.pow(2).sum(1), "sum").clamp_min(0).sqrt()
    if p == 1:
        return victim.per_unit(diff.sum(1), "sum")
    return victim.per_unit(diff.amax(1), "amax")


def difference_quotient(victim: BatchView, name: str, threat: ThreatModel, x1: Tensor, x2: Tensor,
                        p: float = 2, logits: Optional[tuple] = None) -> Tensor:
    """Per-unit :math:`\\|f(x_1) - f(x_2)\\|_p / \\|x_1 - x_2\\|` (differentiable)."""
    f1, f2 = logits if logits is not None else (forward_at(victim, name, x1), forward_at(victim, name, x2))
    dist = threat.size(x1 - x2, victim.inputs[name]).clamp_min(1e-12)
    return output_distance(victim, f1, f2, p) / dist


@dataclass
class LipschitzPairs:
    """The pairs found by :func:`adversarial_pairs` and their difference quotients (per unit)."""

    victim: BatchView
    name: str
    x1: Tensor
    x2: Tensor
    quotient: Tensor


def _check_norm(output_norm) -> float:
    check_choice("output_norm", output_norm, (1, 2, float("inf")))
    return float(output_norm)


def adversarial_pairs(model: nn.Module, batch: Any, threat: ThreatModel, *, steps: int = 20,
                      step_size: float = 0.25, output_norm: float = 2, restarts: int = 1,
                      seed: Optional[int] = None, adapter: Optional[BatchAdapter] = None,
                      input_name: Optional[str] = None) -> LipschitzPairs:
    """Pairs :math:`(x_1, x_2)` in ``threat``'s ball around each input maximising the difference quotient.

    Both points start at random in the ball (CLIP, Bungert et al. 2021, Algorithm 1 initialises the pair
    with noise) and take ``steps`` steepest-ascent steps of the quotient in the threat's norm, with a
    cosine-decaying step (``step_size`` is a fraction of the radius). The best pair per unit is kept.
    The model runs as attacks do (:func:`~mmrobust.attacks.base.attack_mode`): eval mode, parameters frozen.
    """
    check_threat("threat", threat)
    check_int("steps", steps, 0)
    check_positive("step_size", step_size)
    check_int("restarts", restarts, 1)
    p = _check_norm(output_norm)
    with attack_mode(model):
        victim = victim_for(model, batch, adapter)
        name, x = single_input(victim, input_name)
        threat.check_input(x, name)
        gen = make_generator(seed, "cpu")   # drawn on the CPU and moved: the same pairs on CPU and CUDA
        radius = threat.radius(x)
        best_q = torch.full((x.shape[0],), -1.0, dtype=x.dtype, device=x.device)
        best1, best2 = x.clone(), x.clone()
        for _ in range(restarts):
            d1, d2 = threat.random_init(x, gen), threat.random_init(x, gen)
            for t in range(steps + 1):
                l1, l2 = d1.detach().requires_grad_(True), d2.detach().requires_grad_(True)
                f1, f2 = forward_at(victim, name, x + l1), forward_at(victim, name, x + l2)
                check_logits(f1, victim, "while searching Lipschitz pairs")
                q = difference_quotient(victim, name, threat, x + l1, x + l2, p, (f1, f2))
                with torch.no_grad():
                    better = q > best_q
                    m = better.reshape(-1, *([1] * (x.dim() - 1)))
                    best1 = torch.where(m, x + l1, best1)
                    best2 = torch.where(m, x + l2, best2)
                    best_q = torch.where(better, q, best_q)
                if t == steps:
                    break
                g1, g2 = torch.autograd.grad(q.sum(), (l1, l2))
                if not (bool(torch.isfinite(g1).all()) and bool(torch.isfinite(g2).all())):
                    raise NonFiniteError("NaN/Inf in the gradient of the Lipschitz difference quotient")
                alpha = radius * step_size * 0.5 * (1 + math.cos(math.pi * t / max(steps, 1)))
                with torch.no_grad():
                    d1 = threat.project(threat.step(d1, g1, alpha), x)
                    d2 = threat.project(threat.step(d2, g2, alpha), x)
        return LipschitzPairs(victim, name, best1.detach(), best2.detach(), best_q.detach())


def local_lipschitz(model: nn.Module, batch: Any, threat: ThreatModel, *, steps: int = 20,
                    step_size: float = 0.25, output_norm: float = 2, restarts: int = 1,
                    seed: Optional[int] = None, adapter: Optional[BatchAdapter] = None,
                    input_name: Optional[str] = None) -> Tensor:
    """Per-unit local Lipschitz estimate of the logits in ``threat``'s ball (CLIP, Bungert et al. 2021, Eq. 2.3).

    .. math:: \\widehat{\\mathrm{Lip}}(f; x) = \\max_{(x_1, x_2)\\ \\text{found by ascent}}
       \\frac{\\|f(x_1) - f(x_2)\\|_q}{\\|x_1 - x_2\\|}

    A lower bound on the true local constant; see :func:`adversarial_pairs` for the arguments.
    """
    return adversarial_pairs(model, batch, threat, steps=steps, step_size=step_size, output_norm=output_norm,
                             restarts=restarts, seed=seed, adapter=adapter, input_name=input_name).quotient
