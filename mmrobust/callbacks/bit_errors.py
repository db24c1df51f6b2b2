"""Random bit error training, RandBET (Stutz et al. 2021, https://arxiv.org/abs/2006.13977, Alg. 1)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
from torch import Tensor, nn

from ..compression.bit_errors import bit_errors, has_quantized_weights
from ..errors import check_fraction, check_int
from ..objectives import batch_cross_entropy
from ..utils import make_generator
from .extra_loss import ExtraLossCallback


class RandomBitErrorTraining(ExtraLossCallback):
    """RandBET: add the gradient of the loss under random bit errors to the clean gradient.

    .. math:: \\nabla_w \\big[\\mathcal{L}(f(x; Q(w)), y) + \\lambda\\, \\mathcal{L}(f(x; \\widetilde{Q(w)}), y)\\big],
        \\quad \\widetilde{Q(w)} = Q(w) \\text{ with bits flipped at rate } p

    (Stutz et al. 2021, Sec. 5, Alg. 1; the gradient through the bit errors is the straight-through
    estimator and is applied to the clean float weights). A fresh error pattern is drawn every step.
    Use it together with :class:`~mmrobust.callbacks.Quantization` (with ``clip``, as in the paper), in any
    order in ``Trainer(callbacks=[...])``.

    After Lightning's backward of the user's loss, the callback adds the gradient of
    ``weight * loss_fn(model, batch)`` with bit errors injected, through
    :class:`~mmrobust.callbacks.ExtraLossCallback` (batch copy, gradient accumulation, AMP scaler, BatchNorm
    statistics untouched by the bit-error pass), so it needs automatic optimisation. Logs
    ``randbet/bit_error_loss``.

    Args:
        rate: bit error rate ``p`` in [0, 1] (the paper trains with ``p`` around 1%).
        weight: ``lambda``, the weight of the bit-error loss.
        loss_fn: ``(model, batch) -> scalar loss``; default cross-entropy through the batch adapter.
        start_step: global step from which bit errors are added (the paper starts at once).
        seed: seed of the error patterns (``None``: global RNG), drawn on the CPU: the same patterns on any
            device.
    """

    log_name = "randbet/bit_error_loss"
    manual_hint = "call mmrobust.compression.bit_errors yourself"

    def __init__(self, rate: float = 0.01, *, weight: float = 1.0,
                 loss_fn: Optional[Callable[[nn.Module, Any], Tensor]] = None, start_step: int = 0,
                 seed: Optional[int] = None):
        super().__init__(weight)
        self.rate = check_fraction("rate", rate)
        self.loss_fn = loss_fn or batch_cross_entropy
        self.start_step = check_int("start_step", start_step, 0)
        self.seed = seed
        self._generator: Optional[torch.Generator] = None
        self._rng_state: Optional[Tensor] = None

    def _gen(self) -> Optional[torch.Generator]:
        """The pattern stream: a CPU generator (the flips are moved to the weights), so a seed gives the same
        patterns on CPU and CUDA and a checkpoint's stream resumes exactly on either."""
        if self.seed is None:
            return None
        if self._generator is None:
            self._generator = make_generator(self.seed, "cpu")
            # a CPU stream's state; a checkpoint from before the stream lived on the CPU may hold a CUDA one
            # (another size), which restarts at the seed as it did then
            if self._rng_state is not None and self._rng_state.numel() == self._generator.get_state().numel():
                self._generator.set_state(self._rng_state.cpu())
        return self._generator

    def on_train_start(self, trainer, pl_module) -> None:
        if not has_quantized_weights(pl_module):
            raise RuntimeError("RandomBitErrorTraining needs quantised weights; add the Quantization callback to "
                               "Trainer(callbacks=[...]) (in any order) or quantise the model first")

    def wants_batch(self, trainer, pl_module, batch_idx) -> bool:
        return trainer.global_step >= self.start_step and self.rate > 0 and self.weight > 0

    def extra_context(self, trainer, pl_module):
        return bit_errors(pl_module, self.rate, generator=self._gen())

    def extra_loss(self, trainer, pl_module, batch) -> Tensor:
        return self.loss_fn(pl_module, batch)

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
