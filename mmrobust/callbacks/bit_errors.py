"""Random bit error training, RandBET (Stutz et al. 2021, https://arxiv.org/abs/2006.13977, Alg. 1)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from ..compression.bit_errors import bit_errors, has_quantized_weights
from ..errors import check_finite_nonneg, check_fraction, check_int
from ..objectives import batch_cross_entropy
from ..utils import make_generator


class RandomBitErrorTraining(pl.Callback):
    """RandBET: add the gradient of the loss under random bit errors to the clean gradient.

    .. math:: \\nabla_w \\big[\\mathcal{L}(f(x; Q(w)), y) + \\lambda\\, \\mathcal{L}(f(x; \\widetilde{Q(w)}), y)\\big],
        \\quad \\widetilde{Q(w)} = Q(w) \\text{ with bits flipped at rate } p

    (Stutz et al. 2021, Sec. 5, Alg. 1; the gradient through the bit errors is the straight-through
    estimator and is applied to the clean float weights). A fresh error pattern is drawn every step.
    Use it together with :class:`~mmrobust.callbacks.Quantization` (with ``clip``, as in the paper).

    After Lightning's backward of the user's loss, the callback runs one more forward/backward of
    ``loss_fn(model, batch)`` with bit errors injected, so it needs automatic optimisation.

    Args:
        rate: bit error rate ``p`` in [0, 1] (the paper trains with ``p`` around 1%).
        weight: ``lambda``, the weight of the bit-error loss.
        loss_fn: ``(model, batch) -> scalar loss``; default cross-entropy through the batch adapter.
        start_step: global step from which bit errors are added (the paper starts at once).
        seed: seed of the error patterns (``None``: global RNG).
    """

    def __init__(self, rate: float = 0.01, *, weight: float = 1.0,
                 loss_fn: Optional[Callable[[nn.Module, Any], Tensor]] = None, start_step: int = 0,
                 seed: Optional[int] = None):
        self.rate = check_fraction("rate", rate)
        self.weight = check_finite_nonneg("weight", weight)
        self.loss_fn = loss_fn or batch_cross_entropy
        self.start_step = check_int("start_step", start_step, 0)
        self.seed = seed
        self._generator: Optional[torch.Generator] = None
        self._rng_state: Optional[Tensor] = None
        self._batch: Any = None
        self.last_loss: Optional[float] = None

    def _gen(self, device) -> Optional[torch.Generator]:
        if self.seed is None:
            return None
        if self._generator is None or self._generator.device != torch.device(device):
            self._generator = make_generator(self.seed, device)
            if self._rng_state is not None and self._generator.device.type == "cpu":
                self._generator.set_state(self._rng_state)
        return self._generator

    def on_train_start(self, trainer, pl_module) -> None:
        if not pl_module.automatic_optimization:
            raise RuntimeError("RandomBitErrorTraining needs automatic optimisation (it adds a backward pass "
                               "after Lightning's); call mmrobust.compression.bit_errors yourself otherwise")
        if not has_quantized_weights(pl_module):
            raise RuntimeError("RandomBitErrorTraining needs quantised weights; put the Quantization callback "
                               "before it in Trainer(callbacks=[...])")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch = batch

    def on_after_backward(self, trainer, pl_module) -> None:
        if self._batch is None or trainer.global_step < self.start_step or self.rate == 0 or self.weight == 0:
            return
        device = next(pl_module.parameters()).device
        with bit_errors(pl_module, self.rate, generator=self._gen(device)):
            loss = self.loss_fn(pl_module, self._batch)
            # Lightning divides the user's loss by the accumulation steps; do the same here
            (loss * (self.weight / trainer.accumulate_grad_batches)).backward()
        self.last_loss = float(loss.detach())
        pl_module.log("randbet/bit_error_loss", loss.detach(), on_step=True, on_epoch=True)
        self._batch = None

    def state_dict(self) -> Dict[str, Any]:
        state = self._generator.get_state() if self._generator is not None else self._rng_state
        return {"rate": self.rate, "weight": self.weight, "start_step": self.start_step, "seed": self.seed,
                "rng": state}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.rate = state_dict["rate"]
        self.weight = state_dict["weight"]
        self.start_step = state_dict["start_step"]
        self.seed = state_dict["seed"]
        self._rng_state = state_dict.get("rng")
        self._generator = None
