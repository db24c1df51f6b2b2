"""Compression callbacks that parametrise weights compose in one order, whatever the callback list's order."""

from __future__ import annotations

import pytorch_lightning as pl


class WeightParametrizationCallback(pl.Callback):
    """Base of the callbacks that put a :mod:`torch.nn.utils.parametrize` parametrisation on weights
    (:class:`~mmrobust.callbacks.FourierSparsity`, :class:`~mmrobust.callbacks.Pruning`,
    :class:`~mmrobust.callbacks.Quantization`).

    A weight's parametrisations form a chain, and only one order is meaningful: Fourier coefficients
    first (they replace the trainable parameter), then the pruning mask, then the quantiser (which must
    see the pruned weight). So in ``setup`` each of these callbacks registers *all* of the trainer's
    parametrisation callbacks in that order (:attr:`chain_rank`), each :meth:`register` being idempotent:
    ``Trainer(callbacks=[Quantization(), Pruning(0.9)])`` and ``[Pruning(0.9), Quantization()]`` build
    the same chain, the same checkpoint keys and the same training run.
    """

    #: position in the chain (lower: closer to the trainable parameter)
    chain_rank: int = 0

    def register(self, pl_module: "pl.LightningModule") -> None:
        """Register this callback's parametrisation on ``pl_module`` (idempotent)."""
        raise NotImplementedError

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        members = [c for c in trainer.callbacks if isinstance(c, WeightParametrizationCallback)]
        if self not in members:
            members.append(self)
        for callback in sorted(members, key=lambda c: c.chain_rank):
            callback.register(pl_module)


__all__ = ["WeightParametrizationCallback"]
