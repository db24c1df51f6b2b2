"""Adversarial weight perturbation (AWP) as a Lightning callback."""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Dict, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor

from ..adapters.base import BatchAdapter
from ..errors import NonFiniteError, check_finite_nonneg, check_int, check_positive
from ..objectives import batch_cross_entropy
from ..utils import kept_buffers
from ..threats.weights import WeightBall, apply_deltas, perturbed_weights, restore_weights

LossFn = Callable[[pl.LightningModule, Any], Tensor]


class AdversarialWeightPerturbation(pl.Callback):
    """Adversarial weight perturbation (Wu et al. 2020, https://arxiv.org/abs/2004.05884, Eq. 8-9, Alg. 1).

    Training minimises the loss at the worst weights in a layer-wise relative ball (a
    :class:`~mmrobust.threats.WeightBall`):

    .. math:: \\min_w \\max_{\\|v_l\\| \\le \\gamma \\|w_l\\|} \\mathcal{L}(w + v),\\qquad
              v_l \\leftarrow \\Pi\\big(v_l + \\eta\\,\\|w_l\\|\\,\\nabla_{v_l}\\mathcal{L} / \\|\\nabla_{v_l}\\mathcal{L}\\|\\big)

    For every training batch (after ``warmup_epochs``):

    1. ``on_train_batch_start``: ``steps`` projected ascent steps on ``v`` maximise ``loss_fn`` on the
       batch (the adversarial batch when :class:`AdversarialTraining` ran before -- list this callback
       *after* it in ``Trainer(callbacks=[...])``), then ``w + v`` is written into the module;
    2. the module's own ``training_step`` and backward run at ``w + v``, so the gradient is
       :math:`\\nabla_w \\mathcal{L}(w + v)`;
    3. ``on_after_backward`` copies the saved clean weights back bit-exactly, before gradient clipping
       and ``optimizer.step`` -- the optimizer only ever sees clean weights and its usual state.

    The search uses ``torch.autograd.grad`` (``.grad`` is untouched) and restores every buffer (e.g.
    BatchNorm running statistics) afterwards, so apart from the gradient the step equals a plain one
    (dropout draws extra random numbers during the search).

    Args:
        gamma: relative per-layer budget (AWP's default 5e-3); ``0`` disables the perturbation.
        steps: ascent steps (AWP uses 1).
        step_size: step length as a fraction of each layer's radius; default ``2.5 / steps`` (one step
            lands on the sphere, as in the reference implementation).
        warmup_epochs: epochs trained without perturbation first.
        loss_fn: ``loss_fn(pl_module, batch) -> scalar`` maximised over ``v``; default: mean
            cross-entropy of the module's logits through the batch adapter. Pass your objective (e.g. a
            TRADES loss) to search against it. ``training_step`` itself is deliberately not called: it
            logs, may step manual optimizers and may keep state, none of which an extra call should do.
        ball: a custom :class:`WeightBall` (overrides ``gamma``), e.g. to include biases.
        adapter: batch adapter for the default loss; inferred from the batch when ``None``.

    Notes:
        With gradient accumulation every micro-batch is perturbed and restored on its own. With manual
        optimisation the weights are perturbed from batch start until the first ``manual_backward``,
        i.e. the first forward/backward of ``training_step`` sees ``w + v``. Closure-evaluating
        optimizers (LBFGS) see the perturbation only in the first closure call. Under DDP each process
        searches ``v`` on its own shard (no extra communication), and gradients are all-reduced as usual.
    """

    #: marks callbacks that replace the training batch; they must come before this one
    modifies_training_batch = False

    def __init__(self, gamma: float = 5e-3, *, steps: int = 1, step_size: Optional[float] = None,
                 warmup_epochs: int = 0, loss_fn: Optional[LossFn] = None, ball: Optional[WeightBall] = None,
                 adapter: Optional[BatchAdapter] = None):
        super().__init__()
        check_finite_nonneg("gamma", gamma)
        self.ball = ball if ball is not None else WeightBall(gamma)
        if not isinstance(self.ball, WeightBall):
            raise TypeError(f"ball must be a WeightBall, got {type(ball).__name__}")
        self.steps = check_int("steps", steps, 1)
        self.step_size = 2.5 / self.steps if step_size is None else check_positive("step_size", step_size)
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, 0)
        self.loss_fn = loss_fn if loss_fn is not None else functools.partial(batch_cross_entropy, adapter=adapter)
        self.perturbed_batches = 0
        self.last_relative_size = 0.0
        self._originals: Optional[Dict[str, Tensor]] = None

    @property
    def gamma(self) -> float:
        return self.ball.gamma

    # -- ordering check ---------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        callbacks = list(trainer.callbacks)
        if self in callbacks:
            later = callbacks[callbacks.index(self) + 1:]
            offenders = [type(c).__name__ for c in later
                         if getattr(c, "modifies_training_batch", False)
                         or type(c).__name__ in ("AdversarialTraining", "FastAdversarialTraining")]
            if offenders:
                warnings.warn(f"AdversarialWeightPerturbation runs before {offenders}, so it searches the weight "
                              "perturbation on the clean batch; list it after them in Trainer(callbacks=[...])",
                              stacklevel=2)

    # -- the perturbation -------------------------------------------------------------------------
    def find_perturbation(self, pl_module: pl.LightningModule, batch: Any) -> Dict[str, Tensor]:
        """Projected gradient ascent on ``loss_fn`` over the weight ball (no side effects on the module)."""
        params = self.ball.parameters(pl_module)
        radius = self.ball.radius(pl_module)
        deltas = self.ball.zeros(pl_module)
        with kept_buffers(pl_module), torch.inference_mode(False), torch.enable_grad():
            for _ in range(self.steps):
                with perturbed_weights(pl_module, deltas):
                    loss = self.loss_fn(pl_module, batch)
                    if not isinstance(loss, Tensor) or loss.dim() != 0:
                        raise ValueError("loss_fn must return a scalar tensor, got "
                                         f"{getattr(loss, 'shape', type(loss).__name__)}")
                    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
                grads = {k: g for k, g in zip(params, grads) if g is not None}
                if not all(bool(torch.isfinite(g).all()) for g in grads.values()):
                    raise NonFiniteError("NaN/Inf in the weight gradient during the AWP search")
                deltas = self.ball.project(self.ball.step(deltas, grads, self.step_size, radius), radius)
        return {k: d.detach() for k, d in deltas.items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._restore(pl_module)
        if self.gamma == 0 or trainer.current_epoch < self.warmup_epochs:
            return
        deltas = self.find_perturbation(pl_module, batch)
        sizes = self.ball.size(deltas, pl_module)
        self.last_relative_size = float(max((float(s) for s in sizes.values()), default=0.0))
        self._originals = apply_deltas(pl_module, deltas)
        self.perturbed_batches += 1

    def on_after_backward(self, trainer, pl_module) -> None:
        self._restore(pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._restore(pl_module)  # a backward that bypassed on_after_backward must not step at w + v

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._restore(pl_module)  # training_step returned None: no backward ran

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore(pl_module)

    def _restore(self, pl_module) -> None:
        if self._originals is not None:
            originals, self._originals = self._originals, None
            restore_weights(pl_module, originals)

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"gamma": self.ball.gamma, "steps": self.steps, "step_size": self.step_size,
                "warmup_epochs": self.warmup_epochs, "perturbed_batches": self.perturbed_batches,
                "last_relative_size": self.last_relative_size}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.ball = self.ball.with_gamma(state_dict.get("gamma", self.ball.gamma))
        self.steps = state_dict.get("steps", self.steps)
        self.step_size = state_dict.get("step_size", self.step_size)
        self.warmup_epochs = state_dict.get("warmup_epochs", self.warmup_epochs)
        self.perturbed_batches = state_dict.get("perturbed_batches", self.perturbed_batches)
        self.last_relative_size = state_dict.get("last_relative_size", self.last_relative_size)


__all__ = ["AdversarialWeightPerturbation"]
