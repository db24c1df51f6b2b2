"""Distillation from a frozen teacher as a Lightning callback (KD, ARD, RSLAD)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

from torch import nn

from ..adapters.base import BatchAdapter
from ..attacks.base import Attack
from ..compression.distillation import DistillationObjective
from ..utils import SavedModes, buffer_values, restore_buffers
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
    gradient accumulation, AMP scaler).

    BatchNorm running statistics (and the student's other buffers) follow the papers' reference code, where
    the student's train-mode forward passes of the objective update them: RSLAD's
    (https://github.com/zibojia/RSLAD) the adversarial pass, then the clean pass (its attack runs in eval
    mode); ARD's (https://github.com/goldblum/AdversariallyRobustDistillation) the adversarial pass and a
    clean pass (computed even at ``alpha = 1``), and also its attack's steps, which run in train mode there,
    whereas this library's attacks run in eval mode, as RSLAD's and ``AdversarialTraining``'s do.

    * ``replace=True``: the objective's passes are the student's training passes. When the objective has a
      clean pass (KD; ARD/RSLAD with ``alpha < 1``) the buffers are put back as they were before the module's
      own (discarded) pass, so the statistics come from the objective's passes in the reference order
      (adversarial, then clean) and the attack sees the statistics from before the step, as in the
      reference. Without one (ARD/RSLAD at ``alpha = 1``) the module's own pass, normally on the clean
      batch, stands in for the reference's clean pass and the adversarial pass updates after it (clean,
      then adversarial): no extra forward pass is run for the statistics alone.
    * ``replace=False``: the module's own pass is the training pass; the objective's passes leave the
      buffers as it left them.

    On an exception inside the objective the buffers are put back as the module's own pass left them. The
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
        self._buffers_before_step = None

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
        self._buffers_before_step = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self._buffers_before_step = None
        if self.replace and self._batch is not None and self.objective.runs_clean_pass:
            self._buffers_before_step = buffer_values(pl_module)

    def buffer_context(self, trainer, pl_module):
        """``replace=False``: buffers kept as the module's pass left them. ``replace=True``: the objective's
        passes update them, from their values before the step when the objective has a clean pass (see the
        class docstring); put back as the module's pass left them on an exception."""
        if not self.replace:
            return super().buffer_context(trainer, pl_module)
        return self._objective_updates_buffers(pl_module)

    @contextlib.contextmanager
    def _objective_updates_buffers(self, pl_module) -> Iterator[None]:
        before, self._buffers_before_step = self._buffers_before_step, None
        after_own_pass = buffer_values(pl_module)
        try:
            if before is not None:
                restore_buffers(before)
            yield
        except BaseException:
            restore_buffers(after_own_pass)
            raise

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
