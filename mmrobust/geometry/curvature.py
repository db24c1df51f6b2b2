"""Curvature of the loss surface in the adversarial direction (CURE).

Moosavi-Dezfooli et al. 2019, "Robustness via curvature regularization, and vice versa",
https://arxiv.org/abs/1811.09716, Eq. 5 and 6, approximate the Hessian-vector product of the loss in the
direction :math:`z` by a finite difference of input gradients:

.. math:: \\|H z\\| \\approx \\frac{\\|\\nabla \\ell(x + h z) - \\nabla \\ell(x)\\|_2}{h},
   \\qquad z = \\frac{\\mathrm{sign}(\\nabla \\ell(x))}{\\|\\mathrm{sign}(\\nabla \\ell(x))\\|_2}

(or :math:`z = \\nabla\\ell / \\|\\nabla\\ell\\|_2`). For a quadratic loss :math:`x^\\top A x` it is exactly
:math:`\\|(A + A^\\top) z\\|_2`. Small values mean a locally flat, nearly linear loss, which CURE links to
robustness.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor, nn

from ..adapters.base import BatchAdapter, BatchView
from ..attacks.base import attack_mode
from ..attacks.losses import get_loss
from ..errors import NonFiniteError, check_choice, check_positive
from ._victim import flat, forward_at, single_input, victim_for

DIRECTIONS = ("sign", "gradient")


def loss_input_gradient(victim: BatchView, name: str, x: Tensor, loss_fn, create_graph: bool = False
                        ) -> Tuple[Tensor, Tensor]:
    """Per-output loss at ``x`` and the gradient of its sum with respect to ``x``."""
    leaf = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
    logits = forward_at(victim, name, leaf)
    loss = loss_fn(logits, victim.target, None)
    (grad,) = torch.autograd.grad(loss.sum(), leaf, create_graph=create_graph)
    if not bool(torch.isfinite(grad).all()):
        raise NonFiniteError("NaN/Inf in the input gradient of the loss while measuring curvature")
    return loss, grad


def curvature_direction(grad: Tensor, direction: str = "sign") -> Tensor:
    """Unit-L2 direction per unit: normalised ``sign(grad)`` (CURE) or normalised ``grad``."""
    check_choice("direction", direction, DIRECTIONS)
    z = flat(grad.sign() if direction == "sign" else grad)
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return z.reshape(grad.shape).detach()


def hessian_vector_norm(victim: BatchView, name: str, x: Tensor, loss_fn, h: float, direction: str = "sign",
                        create_graph: bool = False, z: Optional[Tensor] = None) -> Tensor:
    """Per-unit :math:`\\|\\nabla\\ell(x + h z) - \\nabla\\ell(x)\\|_2 / h` (CURE, Eq. 6). Differentiable with
    respect to the model's parameters when ``create_graph`` is true (the regulariser)."""
    _, g0 = loss_input_gradient(victim, name, x, loss_fn, create_graph)
    if z is None:
        z = curvature_direction(g0, direction)
    _, g1 = loss_input_gradient(victim, name, x.detach() + h * z, loss_fn, create_graph)
    return flat(g1 - g0).norm(dim=1) / h


def curvature(model: nn.Module, batch: Any, *, h: float = 0.01, direction: str = "sign", loss="ce",
              adapter: Optional[BatchAdapter] = None, input_name: Optional[str] = None) -> Tensor:
    """Per-unit curvature :math:`\\|\\nabla\\ell(x + h z) - \\nabla\\ell(x)\\|_2 / h` of the loss along the
    adversarial direction :math:`z` (Moosavi-Dezfooli et al. 2019, Eq. 6).

    Args:
        h: finite-difference step in input units (the paper's :math:`h`); exact for quadratic losses.
        direction: ``"sign"`` (:math:`z \\propto \\mathrm{sign}\\nabla\\ell`, as in CURE) or ``"gradient"``.
        loss: a loss from :mod:`mmrobust.attacks.losses` or ``(logits, labels, None) -> per-output loss``.
    """
    h = check_positive("h", h)
    check_choice("direction", direction, DIRECTIONS)
    loss_fn = get_loss(loss)
    with attack_mode(model):
        victim = victim_for(model, batch, adapter)
        name, x = single_input(victim, input_name)
        return hessian_vector_norm(victim, name, x, loss_fn, h, direction).detach()
