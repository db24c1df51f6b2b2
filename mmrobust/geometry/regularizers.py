"""Geometric regularisers: input-gradient norm, curvature (CURE) and Lipschitz (CLIP) penalties.

Each regulariser is a callable ``regularizer(model, batch) -> scalar`` that is differentiable with respect
to the model's parameters (double back-propagation), so it can be added to any training loss:

.. code-block:: python

    loss = F.cross_entropy(model(x), y) + 0.1 * CurvatureRegularizer(h=0.5)(model, (x, y))

or, without touching the LightningModule, through the :class:`~mmrobust.callbacks.GeometricRegularization` callback, which
back-propagates ``weight * regularizer`` after Lightning's own backward pass (the gradients add up before the
optimiser step), so it composes with :class:`~mmrobust.training.RobustClassifier` objectives and the
:class:`~mmrobust.callbacks.AdversarialTraining` callback.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn

from ..adapters.base import BatchAdapter
from ..attacks.losses import get_loss
from ..errors import check_choice, check_int, check_positive
from ..threats.base import ThreatModel
from ._victim import check_threat, flat, single_input, victim_for
from .curvature import DIRECTIONS, hessian_vector_norm, loss_input_gradient
from .lipschitz import _check_norm, adversarial_pairs, difference_quotient


class Regularizer:
    """Base class: ``__call__(model, batch) -> scalar`` penalty, differentiable in the parameters."""

    def __init__(self, *, adapter: Optional[BatchAdapter] = None, input_name: Optional[str] = None):
        self.adapter = adapter
        self.input_name = input_name

    def _victim(self, model: nn.Module, batch: Any):
        victim = victim_for(model, batch, self.adapter)
        name, x = single_input(victim, self.input_name)
        return victim, name, x

    def __call__(self, model: nn.Module, batch: Any) -> Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


class InputGradientNorm(Regularizer):
    """Input-gradient regularisation (Ross & Doshi-Velez 2018, https://arxiv.org/abs/1711.09404, Eq. 4):

    .. math:: R(\\theta) = \\frac1N \\sum_n \\big\\|\\nabla_x \\ell(f_\\theta(x_n), y_n)\\big\\|_2^2

    with :math:`\\ell` the cross-entropy (or another loss from :mod:`mmrobust.attacks.losses`).
    """

    def __init__(self, *, loss="ce", **kwargs):
        super().__init__(**kwargs)
        self.loss_fn = get_loss(loss)

    def __call__(self, model, batch):
        victim, name, x = self._victim(model, batch)
        _, grad = loss_input_gradient(victim, name, x, self.loss_fn, create_graph=True)
        return flat(grad).pow(2).sum(1).mean()


class CurvatureRegularizer(Regularizer):
    """CURE (Moosavi-Dezfooli et al. 2019, https://arxiv.org/abs/1811.09716, Eq. 6):

    .. math:: R(\\theta) = \\frac1N \\sum_n \\big\\|\\nabla_x \\ell(x_n + h z_n) - \\nabla_x \\ell(x_n)\\big\\|_2^2,
       \\qquad z_n = \\frac{\\mathrm{sign}\\,\\nabla_x\\ell(x_n)}{\\|\\mathrm{sign}\\,\\nabla_x\\ell(x_n)\\|_2}

    :math:`z` is held fixed (no gradient through the direction), as in the paper. ``h`` is in input units
    (the paper uses :math:`h=1.5` on [0, 255] CIFAR pixels, i.e. about 0.006 on [0, 1]; larger ``h`` regularises
    a wider neighbourhood).
    """

    def __init__(self, *, h: float = 0.1, direction: str = "sign", loss="ce", **kwargs):
        super().__init__(**kwargs)
        self.h = check_positive("h", h)
        self.direction = check_choice("direction", direction, DIRECTIONS)
        self.loss_fn = get_loss(loss)

    def __call__(self, model, batch):
        victim, name, x = self._victim(model, batch)
        hz = hessian_vector_norm(victim, name, x, self.loss_fn, self.h, self.direction, create_graph=True)
        return (hz * self.h).pow(2).mean()


class LipschitzRegularizer(Regularizer):
    """CLIP (Bungert et al. 2021, https://arxiv.org/abs/2103.12531, Eq. 3.1 and Algorithm 1):

    .. math:: R(\\theta) = \\max_{(x_1, x_2) \\in \\mathcal X_{\\mathrm{Lip}}}
       \\frac{\\|f_\\theta(x_1) - f_\\theta(x_2)\\|_q}{\\|x_1 - x_2\\|}

    The pairs :math:`\\mathcal X_{\\mathrm{Lip}}` are found by ``steps`` gradient-ascent steps in ``threat``'s
    ball around each input (:func:`~mmrobust.geometry.adversarial_pairs`, model frozen in eval mode), then
    the quotient is re-evaluated with gradients for the parameters. ``reduction="mean"`` averages over the
    batch instead of taking the maximum (smoother, what we recommend for small batches).
    """

    def __init__(self, threat: ThreatModel, *, steps: int = 5, step_size: float = 0.5, output_norm: float = 2,
                 reduction: str = "max", seed: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.threat = check_threat("threat", threat)
        self.steps = check_int("steps", steps, 0)
        self.step_size = check_positive("step_size", step_size)
        self.output_norm = _check_norm(output_norm)
        self.reduction = check_choice("reduction", reduction, ("max", "mean"))
        self.seed = seed

    def __call__(self, model, batch):
        pairs = adversarial_pairs(model, batch, self.threat, steps=self.steps, step_size=self.step_size,
                                  output_norm=self.output_norm, seed=self.seed, adapter=self.adapter,
                                  input_name=self.input_name)
        victim, name, _ = self._victim(model, batch)
        q = difference_quotient(victim, name, self.threat, pairs.x1, pairs.x2, self.output_norm)
        return q.amax() if self.reduction == "max" else q.mean()
