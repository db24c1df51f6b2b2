"""Fourier-domain kernel sparsity as a Lightning callback."""

from __future__ import annotations

from typing import Optional, Sequence, Type

from torch import nn

from ..compression.fourier import fourier_parametrize, fourier_prune, fourier_stats
from .pruning import GradualSparsityCallback


class FourierSparsity(GradualSparsityCallback):
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
        super().__init__(sparsity, initial_sparsity=initial_sparsity, begin_step=begin_step, end_step=end_step,
                         frequency=frequency, scope=scope, exclude=exclude)
        self.types = tuple(types)

    chain_rank = 0

    def register(self, pl_module) -> None:
        fourier_parametrize(pl_module, types=self.types, exclude=self.exclude)

    def sparsify(self, pl_module, target: float) -> None:
        fourier_prune(pl_module, target, scope=self.scope)
        stats = fourier_stats(pl_module)
        pl_module.log("fourier/sparsity", stats["sparsity"], on_step=True, on_epoch=False)
        pl_module.log("fourier/compression_ratio", stats["compression_ratio"], on_step=True, on_epoch=False)
