"""Geometric regularisation as a Lightning callback, for any LightningModule (CLIP, CURE, gradient norm)."""

from __future__ import annotations

from typing import Any, Dict, Optional

from torch import Tensor

from ..errors import check_int
from .extra_loss import ExtraLossCallback


class GeometricRegularization(ExtraLossCallback):
    """Adds ``weight * regularizer(model, batch)`` to the training objective of any LightningModule.

    After Lightning's backward pass of the module's own loss (before the optimiser step) the callback adds
    the gradient of the penalty on the same batch, so the parameter gradients are those of
    ``loss + weight * R``, through :class:`~mmrobust.callbacks.ExtraLossCallback` (gradient accumulation,
    AMP scaler, BatchNorm statistics untouched by the penalty's passes). The batch is the one
    ``on_train_batch_start`` sees: list the callback *before* :class:`~mmrobust.callbacks.AdversarialTraining`
    to regularise the clean inputs (as CURE and CLIP do), after it to regularise the adversarial ones.
    Needs automatic optimisation.

    Args:
        regularizer: a :class:`~mmrobust.geometry.InputGradientNorm`, :class:`~mmrobust.geometry.CurvatureRegularizer`,
            :class:`~mmrobust.geometry.LipschitzRegularizer` or any ``(model, batch) -> scalar``.
        weight: the penalty weight :math:`\\lambda`.
        every_n_steps: regularise only every n-th training step (the penalties cost 2-3 extra passes).
        module_attr: attribute of the LightningModule holding the network to regularise (e.g. ``"model"`` for
            :class:`~mmrobust.training.RobustClassifier`); ``None`` uses the LightningModule itself.
    Logs ``train/<regularizer name>``.
    """

    manual_hint = "add the regulariser to your loss yourself: loss + weight * regularizer(model, batch)"

    def __init__(self, regularizer, *, weight: float = 1.0, every_n_steps: int = 1,
                 module_attr: Optional[str] = None):
        if not callable(regularizer):
            raise TypeError(f"regularizer must be callable (model, batch) -> scalar, got {type(regularizer).__name__}")
        super().__init__(weight)
        self.regularizer = regularizer
        self.every_n_steps = check_int("every_n_steps", every_n_steps, 1)
        self.module_attr = module_attr
        self.steps_seen = 0
        self.log_name = f"train/{getattr(regularizer, 'describe', lambda: 'regularizer')()}"

    @property
    def last_penalty(self) -> float:
        """The last unweighted penalty (``last_loss``)."""
        return self.last_loss

    @property
    def state_key(self) -> str:
        return f"GeometricRegularization[{getattr(self.regularizer, 'describe', lambda: 'custom')()}]"

    def state_dict(self) -> Dict[str, Any]:
        return {"weight": self.weight, "every_n_steps": self.every_n_steps, "steps_seen": self.steps_seen,
                "last_penalty": self.last_loss}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.weight = state_dict.get("weight", self.weight)
        self.every_n_steps = state_dict.get("every_n_steps", self.every_n_steps)
        self.steps_seen = state_dict.get("steps_seen", self.steps_seen)
        self.last_loss = state_dict.get("last_penalty", self.last_loss)

    def wants_batch(self, trainer, pl_module, batch_idx) -> bool:
        active = self.weight > 0 and self.steps_seen % self.every_n_steps == 0
        self.steps_seen += 1
        return active

    def extra_loss(self, trainer, pl_module, batch) -> Tensor:
        model = pl_module if self.module_attr is None else getattr(pl_module, self.module_attr)
        return self.regularizer(model, batch)
