"""Checkpoint the global random state, so a resumed run draws the same dropout masks as the uninterrupted one."""

from __future__ import annotations

import random
from typing import Any, Dict, Optional

import numpy as np
import pytorch_lightning as pl
import torch


def collect_rng_states() -> Dict[str, Any]:
    """The global random states of torch (CPU and every CUDA device), Python and NumPy, as tensors and
    plain containers (loadable with ``torch.load(..., weights_only=True)``)."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": [version, torch.tensor(state, dtype=torch.int64), gauss],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}


def set_rng_states(states: Dict[str, Any]) -> None:
    """Restore what :func:`collect_rng_states` returned."""
    torch.set_rng_state(states["torch"])
    if states.get("torch.cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])
    version, state, gauss = states["python"]
    random.setstate((version, tuple(int(v) for v in state.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


class GlobalRNGState(pl.Callback):
    """Save the global random state in every checkpoint and restore it when training resumes.

    Lightning checkpoints the weights, optimisers, loops and callbacks' own ``state_dict``, but not the
    global random generators, so after a resume Dropout (and anything else drawing from ``torch``'s,
    Python's or NumPy's global generator: random crops, ``seed=None`` attacks) draws other numbers and
    the run is not bit-identical to the uninterrupted one. With this callback it is: ``state_dict`` (called
    when a checkpoint is written, after the step) records the states of torch (CPU and CUDA), Python and
    NumPy; after ``load_state_dict`` they are restored when the first training batch of the resumed run
    starts, i.e. after Lightning has rebuilt its dataloader iterators (which draw a seed from the global
    generator). List it *first* in ``Trainer(callbacks=[...])`` so no other callback draws before the
    restore. Under DDP only rank 0's checkpoint is written, so every process restores rank 0's states: the
    other ranks' dropout masks after a resume differ from those of the uninterrupted run.

    Exact resume also needs a resumable data order (see the README's section on distributed training and
    resuming) and a data pipeline whose random transforms run in the main process or in seeded workers.
    """

    def __init__(self):
        self._pending: Optional[Dict[str, Any]] = None

    def state_dict(self) -> Dict[str, Any]:
        return {"rng": collect_rng_states()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending is not None:
            states, self._pending = self._pending, None
            set_rng_states(states)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._pending = None


__all__ = ["GlobalRNGState", "collect_rng_states", "set_rng_states"]
