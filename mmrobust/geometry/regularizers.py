"""Geometric regularisers: input-gradient norm, curvature (CURE) and Lipschitz (CLIP) penalties.

Each regulariser is a callable ``regularizer(model, batch) -> scalar`` that is differentiable with respect
to the model's parameters (double back-propagation), so it can be added to any training loss:

.. code-block:: python

    loss = F.cross_entropy(model(x), y) + 0.1 * CurvatureRegularizer(h=0.5)(model, (x, y))

or, without touching the LightningModule, through the :class:`GeometricRegularization` callback, which
back-propagates ``weight * regularizer`` after Lightning's own backward pass (the gradients add up before the
optimiser step), so it composes with :class:`~mmrobust.training.RobustClassifier` objectives and the
:class:`~mmrobust.callbacks.AdversarialTraining` callback.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import pytorch_lightning as pl
from torch import Tensor, nn

from ..adapters.base import BatchAdapter
from ..attacks.losses import get_loss
from ..errors import check_choice, check_finite_nonneg, check_int, check_positive
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


class GeometricRegularization(pl.Callback):
    """Adds ``weight * regularizer(model, batch)`` to the training objective of any LightningModule.

    After Lightning's backward pass of the module's own loss (``on_after_backward``, before the optimiser
    step) the callback back-propagates the penalty on the same batch, so the parameter gradients are those
    of ``loss + weight * R``. The batch is the one ``on_train_batch_start`` sees: list the callback *before*
    :class:`~mmrobust.callbacks.AdversarialTraining` to regularise the clean inputs (as CURE and CLIP do),
    after it to regularise the adversarial ones. Needs automatic optimisation; divides by
    ``accumulate_grad_batches`` and applies the AMP gradient scaler when there is one.

    Args:
        regularizer: an :class:`InputGradientNorm`, :class:`CurvatureRegularizer`,
            :class:`LipschitzRegularizer` or any ``(model, batch) -> scalar``.
        weight: the penalty weight :math:`\\lambda`.
        every_n_steps: regularise only every n-th training step (the penalties cost 2-3 extra passes).
        module_attr: attribute of the LightningModule holding the network to regularise (e.g. ``"model"`` for
            :class:`~mmrobust.training.RobustClassifier`); ``None`` uses the LightningModule itself.
    Logs ``train/<regularizer name>``.
    """

    def __init__(self, regularizer, *, weight: float = 1.0, every_n_steps: int = 1,
                 module_attr: Optional[str] = None):
        if not callable(regularizer):
            raise TypeError(f"regularizer must be callable (model, batch) -> scalar, got {type(regularizer).__name__}")
        self.regularizer = regularizer
        self.weight = check_finite_nonneg("weight", weight)
        self.every_n_steps = check_int("every_n_steps", every_n_steps, 1)
        self.module_attr = module_attr
        self.steps_seen = 0
        self.last_penalty = float("nan")
        self._batch: Any = None

    @property
    def state_key(self) -> str:
        return f"GeometricRegularization[{getattr(self.regularizer, 'describe', lambda: 'custom')()}]"

    def state_dict(self) -> Dict[str, Any]:
        return {"weight": self.weight, "every_n_steps": self.every_n_steps, "steps_seen": self.steps_seen,
                "last_penalty": self.last_penalty}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.weight = state_dict.get("weight", self.weight)
        self.every_n_steps = state_dict.get("every_n_steps", self.every_n_steps)
        self.steps_seen = state_dict.get("steps_seen", self.steps_seen)
        self.last_penalty = state_dict.get("last_penalty", self.last_penalty)

    def on_fit_start(self, trainer, pl_module):
        if not pl_module.automatic_optimization:
            raise RuntimeError("GeometricRegularization needs automatic optimisation; with manual optimisation "
                               "add the regulariser to your loss yourself: loss + weight * regularizer(model, batch)")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        active = self.weight > 0 and self.steps_seen % self.every_n_steps == 0
        self.steps_seen += 1
        # a shallow copy: later callbacks may replace the batch's entries in place
        self._batch = copy.copy(batch) if active else None

    def on_after_backward(self, trainer, pl_module):
        batch, self._batch = self._batch, None
        if batch is None:
            return
        model = pl_module if self.module_attr is None else getattr(pl_module, self.module_attr)
        penalty = self.regularizer(model, batch)
        if not isinstance(penalty, Tensor) or penalty.dim() != 0:
            raise ValueError("the regularizer must return a scalar tensor")
        self.last_penalty = float(penalty.detach())
        scaled = self.weight * penalty / max(1, trainer.accumulate_grad_batches)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        name = getattr(self.regularizer, "describe", lambda: "regularizer")()
        pl_module.log(f"train/{name}", penalty.detach(), on_step=True, on_epoch=True, prog_bar=False)

    def on_exception(self, trainer, pl_module, exception):
        self._batch = None
