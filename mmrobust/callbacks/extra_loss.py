"""One path for callbacks that add a loss to a training step (RandBET, geometric regularisation, distillation)."""

from __future__ import annotations

import contextlib
import copy
from typing import Any, ContextManager, List, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor

from ..errors import check_finite_nonneg
from ..utils import kept_buffers


class ExtraLossCallback(pl.Callback):
    """Base of the callbacks that add ``weight * extra_loss`` to the gradient of every training step.

    The parameter gradients of a step become those of ``module_loss + weight * extra_loss``, with the
    module's state otherwise untouched. A subclass implements :meth:`extra_loss` (and, optionally,
    :meth:`wants_batch`, :meth:`extra_context`, :meth:`reset`); the base does the rest, the same way for all of them:

    1. ``on_train_batch_start``: when :meth:`wants_batch` says so, keeps a shallow copy of the batch
       (``copy.copy``), so a callback listed later that replaces the batch's entries in place (e.g.
       :class:`~mmrobust.callbacks.AdversarialTraining`) does not change what this callback sees: list it
       *before* such a callback for the clean batch, *after* it for the adversarial one.
    2. ``on_after_backward`` (after Lightning's backward of the module's loss, before gradient clipping and
       the optimiser step): computes :meth:`extra_loss` on the kept batch

       * under the precision plugin's forward context (autocast for ``16-mixed``/``bf16-mixed``, float64
         for ``64-true``), as Lightning runs ``training_step``;
       * inside :meth:`extra_context` (forward and backward);
       * inside :meth:`buffer_context`, by default :func:`~mmrobust.utils.kept_buffers`, so the extra forward
         passes leave BatchNorm running statistics and ``num_batches_tracked`` as the module's own pass left
         them (:class:`~mmrobust.callbacks.Distillation` with ``replace=True`` lets its passes update them
         instead, as they are then the student's training passes);

       and adds the gradient of ``weight * loss / accumulate_grad_batches`` (the division Lightning applies
       to the module's loss), multiplied by the AMP gradient scaler's scale when there is one (Lightning
       unscales all gradients before clipping and stepping), averaged over processes under DDP (as DDP
       averages the module's gradient). The gradient is taken with ``torch.autograd.grad``, so DDP's
       reduction hooks do not fire a second time.
    3. ``on_train_batch_end`` and ``on_exception``: drop the kept batch (and call :meth:`reset`).

    Needs automatic optimisation (refused in ``on_fit_start``). A subclass overriding one of these hooks
    calls ``super()``. The last unweighted loss is :attr:`last_loss` and is logged as :attr:`log_name`.

    Example (the gradient of a penalty on the clean batch; then
    ``Trainer(callbacks=[L2Logits(weight=1e-3), AdversarialTraining(PGD(LinfBall(8 / 255)))])``):
        >>> from mmrobust.training import RobustClassifier
        >>> from mmrobust.utils import toy_problem
        >>> class L2Logits(ExtraLossCallback):
        ...     log_name = "train/l2_logits"
        ...
        ...     def extra_loss(self, trainer, pl_module, batch):
        ...         return pl_module(batch[0]).pow(2).mean()
        >>> model, x, y = toy_problem()
        >>> penalty = L2Logits(weight=1e-3)
        >>> loss = penalty.extra_loss(None, RobustClassifier(model), (x, y))
        >>> penalty.weight, loss.shape, loss.requires_grad
        (0.001, torch.Size([]), True)
    """

    #: name under which the unweighted loss is logged (``None``: not logged)
    log_name: Optional[str] = None
    #: what to do instead under manual optimisation (appended to the error message)
    manual_hint: str = "add the loss to your training_step yourself"

    def __init__(self, weight: float = 1.0):
        self.weight = check_finite_nonneg("weight", weight)
        self.last_loss = float("nan")
        self._batch: Any = None

    # -- what a subclass provides -------------------------------------------------------------------
    def wants_batch(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch_idx: int) -> bool:
        """Whether this step gets the extra loss (called once per training batch). Default: ``weight > 0``."""
        return self.weight > 0

    def extra_loss(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any) -> Optional[Tensor]:
        """The unweighted scalar loss on ``batch`` (the kept copy); ``None`` skips this step."""
        raise NotImplementedError

    def extra_context(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> ContextManager:
        """A context around the extra forward *and* backward pass (e.g. injected bit errors). Default: none."""
        return contextlib.nullcontext()

    def reset(self) -> None:
        """Drop per-step state (called at the end of every batch and on exceptions)."""

    def buffer_context(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> ContextManager:
        """A context around the extra passes that decides what they do to the module's buffers (BatchNorm
        running statistics). Default: :func:`~mmrobust.utils.kept_buffers` (put back as the module's own pass
        left them)."""
        return kept_buffers(pl_module)

    # -- the shared path ----------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        if not pl_module.automatic_optimization:
            raise RuntimeError(f"{type(self).__name__} needs automatic optimisation (it adds a backward pass "
                               f"after Lightning's); with manual optimisation {self.manual_hint}")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch = copy.copy(batch) if self.wants_batch(trainer, pl_module, batch_idx) else None

    def on_after_backward(self, trainer, pl_module) -> None:
        batch, self._batch = self._batch, None
        if batch is None:
            return
        with self.buffer_context(trainer, pl_module), self.extra_context(trainer, pl_module), \
                trainer.precision_plugin.forward_context():
            loss = self.extra_loss(trainer, pl_module, batch)
            if loss is None:
                return
            if not isinstance(loss, Tensor) or loss.dim() != 0:
                raise ValueError(f"{type(self).__name__}: the extra loss must be a scalar tensor, got "
                                 f"{getattr(loss, 'shape', type(loss).__name__)}")
            scaled = loss * (self.weight / max(1, trainer.accumulate_grad_batches))
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            if scaler is not None:
                scaled = scaler.scale(scaled)
            params = [p for p in pl_module.parameters() if p.requires_grad]
            grads = torch.autograd.grad(scaled, params, allow_unused=True)
        add_gradients(trainer, params, grads)
        self.last_loss = float(loss.detach())
        if self.log_name is not None:
            pl_module.log(self.log_name, loss.detach().float(), on_step=True, on_epoch=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batch = None
        self.reset()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._batch = None
        self.reset()


def add_gradients(trainer: "pl.Trainer", params: List[Tensor], grads) -> None:
    """``p.grad += g`` for every parameter, with ``g`` averaged over the processes under DDP."""
    pairs = [(p, g) for p, g in zip(params, grads) if g is not None]
    if not pairs:
        return
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        flat = torch.cat([g.reshape(-1) for _, g in pairs])
        torch.distributed.all_reduce(flat)
        flat /= trainer.world_size
        pairs = [(p, chunk.view_as(g)) for (p, g), chunk in zip(pairs, flat.split([g.numel() for _, g in pairs]))]
    with torch.no_grad():
        for p, g in pairs:
            if p.grad is None:
                p.grad = g.detach().clone()
            else:
                p.grad.add_(g)


__all__ = ["ExtraLossCallback", "add_gradients"]
