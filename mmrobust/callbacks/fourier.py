"""Fourier-domain kernel sparsity as a Lightning callback."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Type

import pytorch_lightning as pl
from torch import nn

from ..compression.fourier import fourier_parametrize, fourier_prune, fourier_stats
from ..compression.pruning import sparsity_at
from ..errors import check_choice, check_fraction, check_int


class FourierSparsity(pl.Callback):
    """Train conv kernels as Fourier coefficients and prune the smallest ones on a gradual schedule.

    .. math:: w = \\mathcal F^{-1}(\\hat w \\odot m),\\qquad
        s_t = s_f + (s_i - s_f)\\Big(1 - \\frac{t - t_0}{n \\Delta t}\\Big)^3

    (kernels as in :mod:`mmrobust.compression.fourier`; schedule of Zhu & Gupta 2017,
    https://arxiv.org/abs/1710.01878, Eq. 1, applied to the coefficient sparsity). The parametrisation is
    registered in ``setup`` -- before the optimizer is built and before a checkpoint is restored, so
    masks and coefficients resume -- and kept after training. ``fourier_stats(model)`` reports the
    compression; the callback logs ``fourier/sparsity`` and ``fourier/compression_ratio``.

    Args:
        sparsity: final fraction of zero coefficients; see :class:`~mmrobust.callbacks.Pruning` for the
            schedule arguments.
        types: conv types re-parametrised (Conv1d for audio, Conv2d for images).
    """

    def __init__(self, sparsity: float, *, initial_sparsity: float = 0.0, begin_step: int = 0,
                 end_step: Optional[int] = None, frequency: int = 100, scope: str = "global",
                 types: Sequence[Type[nn.Module]] = (nn.Conv1d, nn.Conv2d), exclude: Sequence[str] = ()):
        self.sparsity = check_fraction("sparsity", sparsity)
        self.initial_sparsity = check_fraction("initial_sparsity", initial_sparsity)
        if self.initial_sparsity > self.sparsity:
            raise ValueError(f"initial_sparsity must be <= sparsity ({self.sparsity}), got {initial_sparsity}")
        self.begin_step = check_int("begin_step", begin_step, 0)
        self.end_step = self.begin_step if end_step is None else check_int("end_step", end_step, self.begin_step)
        self.frequency = check_int("frequency", frequency, 1)
        self.scope = check_choice("scope", scope, {"global", "layer"})
        self.types = tuple(types)
        self.exclude = tuple(exclude)
        self.current_sparsity = 0.0

    def setup(self, trainer, pl_module, stage: str) -> None:
        fourier_parametrize(pl_module, types=self.types, exclude=self.exclude)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        target = sparsity_at(trainer.global_step, final=self.sparsity, initial=self.initial_sparsity,
                             begin=self.begin_step, end=self.end_step, frequency=self.frequency)
        if target > self.current_sparsity:
            fourier_prune(pl_module, target, scope=self.scope)
            self.current_sparsity = target
            stats = fourier_stats(pl_module)
            pl_module.log("fourier/sparsity", stats["sparsity"], on_step=True, on_epoch=False)
            pl_module.log("fourier/compression_ratio", stats["compression_ratio"], on_step=True, on_epoch=False)

    def state_dict(self) -> Dict[str, Any]:
        return {"current_sparsity": self.current_sparsity, "sparsity": self.sparsity,
                "initial_sparsity": self.initial_sparsity, "begin_step": self.begin_step, "end_step": self.end_step,
                "frequency": self.frequency, "scope": self.scope}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        # the checkpoint's schedule wins, so a resumed run prunes exactly like the uninterrupted one
        self.current_sparsity = float(state_dict["current_sparsity"])
        for key in ("sparsity", "initial_sparsity", "begin_step", "end_step", "frequency", "scope"):
            if key in state_dict:
                setattr(self, key, state_dict[key])
