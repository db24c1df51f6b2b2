"""Distillation from a frozen teacher as a Lightning callback (KD, ARD, RSLAD)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

from torch import nn

from ..adapters.base import BatchAdapter
from ..attacks.base import Attack
from ..compression.distillation import DistillationObjective
from ..utils import SavedModes
from .extra_loss import ExtraLossCallback


class Distillation(ExtraLossCallback):
    """Train the LightningModule (the student) with a distillation objective from a frozen teacher.

    The objective is :class:`~mmrobust.compression.DistillationObjective` (KD of Hinton et al. 2015, ARD of
    Goldblum et al. 2020, RSLAD of Zi et al. 2021; see there for the equations). After Lightning's
    backward of the module's own loss, the callback

    * ``replace=True`` (default): discards that loss's gradient and puts ``weight * objective`` in its place
      (gradients accumulated over earlier micro-batches are kept), so the student minimises exactly the
      paper's objective;
    * ``replace=False``: adds ``weight * objective``'s gradient to it (e.g. a task loss plus distillation).

    The objective's gradient is added through :class:`~mmrobust.callbacks.ExtraLossCallback` (batch copy,
    gradient accumulation, AMP scaler, the student's BatchNorm statistics untouched by the extra pass). The
    teacher is moved to the student's device and floating-point dtype (``64-true``), put in eval mode with frozen parameters for the fit, and
    its device, modes and flags are restored at the end of the fit, also after an exception. Needs
    automatic optimisation. Logs ``distillation/loss``.

    Args:
        teacher: an ``nn.Module`` or a checkpoint path (with ``teacher_model``), loaded with ``weights_only=True``.
        method, temperature, alpha, attack, adapter: see :class:`~mmrobust.compression.DistillationObjective`.
        weight: scale of the objective.
    """

    def __init__(self, teacher: Union[nn.Module, str, Path], *, method: str = "kd", temperature: float = 4.0,
                 alpha: Optional[float] = None, attack: Optional[Attack] = None, weight: float = 1.0,
                 replace: bool = True, teacher_model: Optional[nn.Module] = None,
                 adapter: Optional[BatchAdapter] = None):
        self.objective = DistillationObjective(teacher, method=method, temperature=temperature, alpha=alpha,
                                               attack=attack, teacher_model=teacher_model, adapter=adapter)
        super().__init__(weight)
        self.replace = bool(replace)
        self._saved_grads = None
        self._teacher_state = None

    @property
    def teacher(self) -> nn.Module:
        return self.objective.teacher

    log_name = "distillation/loss"
    manual_hint = "call DistillationObjective in your training_step instead"

    def on_fit_start(self, trainer, pl_module) -> None:
        super().on_fit_start(trainer, pl_module)
        params = list(self.teacher.parameters())
        device = params[0].device if params else None
        dtype = next((p.dtype for p in params if p.is_floating_point()), None)
        self._teacher_state = (device, dtype, SavedModes(self.teacher, flags=True))
        student_dtype = next((p.dtype for p in pl_module.parameters() if p.is_floating_point()), dtype)
        self.teacher.to(device=pl_module.device, dtype=student_dtype).eval()
        for p in params:
            p.requires_grad_(False)

    def _restore_teacher(self) -> None:
        if self._teacher_state is None:
            return
        device, dtype, modes = self._teacher_state
        if device is not None:
            self.teacher.to(device=device, dtype=dtype)
        modes.restore()
        self._teacher_state = None

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore_teacher()

    def on_exception(self, trainer, pl_module, exception) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._restore_teacher()

    def reset(self) -> None:
        self._saved_grads = None

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self.replace and self._batch is not None:
            self._saved_grads = [(p, None if p.grad is None else p.grad.clone()) for p in pl_module.parameters()]

    def on_after_backward(self, trainer, pl_module) -> None:
        if self._saved_grads is not None:  # replace: drop the module loss's gradient, keep earlier micro-batches'
            saved, self._saved_grads = self._saved_grads, None
            for p, g in saved:
                p.grad = g
        super().on_after_backward(trainer, pl_module)

    def extra_loss(self, trainer, pl_module, batch):
        return self.objective(pl_module, batch)

    def state_dict(self) -> Dict[str, Any]:
        attack = self.objective.attack
        return {"method": self.objective.method, "weight": self.weight,
                "attack": attack.state_dict() if attack is not None else None}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if state_dict.get("attack") is not None and self.objective.attack is not None:
            self.objective.attack.load_state_dict(state_dict["attack"])
