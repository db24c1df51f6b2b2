"""Geometric regularisation as a Lightning callback, for any LightningModule (CLIP, CURE, gradient norm)."""

from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import pytorch_lightning as pl
from torch import Tensor

from ..errors import check_finite_nonneg, check_int


class GeometricRegularization(pl.Callback):
    """Adds ``weight * regularizer(model, batch)`` to the training objective of any LightningModule.

    After Lightning's backward pass of the module's own loss (``on_after_backward``, before the optimiser
    step) the callback back-propagates the penalty on the same batch, so the parameter gradients are those
    of ``loss + weight * R``. The batch is the one ``on_train_batch_start`` sees: list the callback *before*
    :class:`~mmrobust.callbacks.AdversarialTraining` to regularise the clean inputs (as CURE and CLIP do),
    after it to regularise the adversarial ones. Needs automatic optimisation; divides by
    ``accumulate_grad_batches`` and applies the AMP gradient scaler when there is one.

    Args:
        regularizer: a :class:`~mmrobust.geometry.InputGradientNorm`, :class:`~mmrobust.geometry.CurvatureRegularizer`,
            :class:`~mmrobust.geometry.LipschitzRegularizer` or any ``(model, batch) -> scalar``.
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
