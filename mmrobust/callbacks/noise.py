"""Gaussian data augmentation, the training that makes randomized smoothing work."""

from __future__ import annotations

from typing import Any, Dict, Optional

import pytorch_lightning as pl
import torch

from ..adapters.base import BatchAdapter
from ..attacks.base import victim_for
from ..errors import check_finite_nonneg, check_int
from ..utils import make_generator, randn
from .adversarial import assign_batch


class GaussianNoiseTraining(pl.Callback):
    """Train on Gaussian-noised inputs (Cohen et al. 2019, https://arxiv.org/abs/1902.02918, Sec. 3.3 and 4).

    .. math:: \\tilde x = x + \\varepsilon,\\quad \\varepsilon \\sim \\mathcal N(0, \\sigma^2 I)

    A base classifier trained this way keeps its accuracy under the noise a
    :class:`~mmrobust.certify.SmoothedClassifier` with the same ``sigma`` adds; as in the paper the noisy
    input is not clipped to the data range. Noise is drawn on every attackable input of the batch's
    adapter (images, waveforms, node features), zeroed where the adapter's mask forbids changes
    (e.g. audio padding), and the batch's entries are replaced -- the user's tensors are never modified.

    Args:
        sigma: noise standard deviation in input units, ``>= 0`` (``0`` leaves batches unchanged).
        seed: seed of the callback's own generator (its state is checkpointed); ``None`` uses the global RNG
            (seed it with ``pl.seed_everything``).
        warmup_epochs: epochs trained on clean inputs first.
        adapter: how to read the batch; inferred when ``None``.
    """

    modifies_training_batch = True

    def __init__(self, sigma: float, *, seed: Optional[int] = None, warmup_epochs: int = 0,
                 adapter: Optional[BatchAdapter] = None):
        super().__init__()
        self.sigma = check_finite_nonneg("sigma", sigma)
        self.seed = seed
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, 0)
        self.adapter = adapter
        self._generator: Optional[torch.Generator] = make_generator(seed)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.sigma == 0 or trainer.current_epoch < self.warmup_epochs:
            return
        assign_batch(batch, self.noisy(pl_module, batch))

    def noisy(self, model: torch.nn.Module, batch: Any) -> Any:
        """A copy of ``batch`` with Gaussian noise on its attackable inputs."""
        victim = victim_for(model, batch, self.adapter)
        noisy = {}
        for name, x in victim.inputs.items():
            noise = self.sigma * randn(x.shape, self._generator, x)
            if name in victim.masks:
                noise = noise * victim.masks[name]
            noisy[name] = x + noise
        return victim.rebuild(noisy)

    def state_dict(self) -> Dict[str, Any]:
        return {"sigma": self.sigma, "seed": self.seed, "warmup_epochs": self.warmup_epochs,
                "rng": None if self._generator is None else self._generator.get_state()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.sigma = state_dict.get("sigma", self.sigma)
        self.seed = state_dict.get("seed", self.seed)
        self.warmup_epochs = state_dict.get("warmup_epochs", self.warmup_epochs)
        if state_dict.get("rng") is not None:
            self._generator = torch.Generator()
            self._generator.set_state(state_dict["rng"])


__all__ = ["GaussianNoiseTraining"]
