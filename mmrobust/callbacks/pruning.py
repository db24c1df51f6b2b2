"""Gradual magnitude pruning as a Lightning callback (Zhu & Gupta 2017, https://arxiv.org/abs/1710.01878)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Type

import pytorch_lightning as pl
from torch import nn

from ..compression.pruning import add_masks, magnitude_masks, prunable_modules, set_masks, sparsity_at
from ..errors import check_choice, check_fraction, check_int
from .weight_parametrizations import WeightParametrizationCallback


class GradualSparsityCallback(WeightParametrizationCallback):
    """The gradual sparsity schedule of Zhu & Gupta 2017 (https://arxiv.org/abs/1710.01878, Eq. 1),
    shared by :class:`Pruning` and :class:`~mmrobust.callbacks.FourierSparsity`:

    .. math:: s_t = s_f + (s_i - s_f)\\Big(1 - \\frac{t - t_0}{n \\Delta t}\\Big)^3

    Before each training batch, when :math:`s_t` exceeds the sparsity reached so far, the subclass's
    :meth:`sparsify` raises the model to :math:`s_t`. The schedule and the reached sparsity are the
    callback's state, so a resumed run prunes exactly like the uninterrupted one.
    """

    def __init__(self, sparsity: float, *, initial_sparsity: float = 0.0, begin_step: int = 0,
                 end_step: Optional[int] = None, frequency: int = 100, scope: str = "global",
                 exclude: Sequence[str] = ()):
        self.sparsity = check_fraction("sparsity", sparsity)
        self.initial_sparsity = check_fraction("initial_sparsity", initial_sparsity)
        if self.initial_sparsity > self.sparsity:
            raise ValueError(f"initial_sparsity must be <= sparsity ({self.sparsity}), got {initial_sparsity}")
        self.begin_step = check_int("begin_step", begin_step, 0)
        self.end_step = self.begin_step if end_step is None else check_int("end_step", end_step, self.begin_step)
        self.frequency = check_int("frequency", frequency, 1)
        self.scope = check_choice("scope", scope, {"global", "layer"})
        self.exclude = tuple(exclude)
        self.current_sparsity = 0.0

    def target(self, step: int) -> float:
        return sparsity_at(step, final=self.sparsity, initial=self.initial_sparsity, begin=self.begin_step,
                           end=self.end_step, frequency=self.frequency)

    def sparsify(self, pl_module: "pl.LightningModule", target: float) -> None:
        """Raise the model's sparsity to ``target`` (and log it)."""
        raise NotImplementedError

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        target = self.target(trainer.global_step)
        if target > self.current_sparsity:
            self.sparsify(pl_module, target)
            self.current_sparsity = target

    def state_dict(self) -> Dict[str, Any]:
        return {"current_sparsity": self.current_sparsity, "sparsity": self.sparsity,
                "initial_sparsity": self.initial_sparsity, "begin_step": self.begin_step,
                "end_step": self.end_step, "frequency": self.frequency, "scope": self.scope}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        # the checkpoint's schedule wins, so a resumed run prunes exactly like the uninterrupted one
        self.current_sparsity = float(state_dict["current_sparsity"])
        for key in ("sparsity", "initial_sparsity", "begin_step", "end_step", "frequency", "scope"):
            if key in state_dict:
                setattr(self, key, state_dict[key])


class Pruning(GradualSparsityCallback):
    """Unstructured magnitude pruning on the gradual schedule of Zhu & Gupta 2017 (Eq. 1).

    .. math:: s_t = s_f + (s_i - s_f)\\Big(1 - \\frac{t - t_0}{n \\Delta t}\\Big)^3

    Works with :class:`~mmrobust.callbacks.Quantization` in either order in ``Trainer(callbacks=[...])``:
    the mask always comes before the quantiser in the weight's parametrisation chain.

    Every ``frequency`` optimizer steps between ``begin_step`` (:math:`t_0`) and ``end_step``
    (:math:`t_0 + n\\Delta t`) the smallest-magnitude weights are masked until the sparsity reaches
    :math:`s_t` (global ranking over all layers, or per layer). Masks are
    :class:`~mmrobust.compression.pruning.PruningMask` parametrisations (``weight = original * mask``, the
    mask a buffer) registered in ``setup``: they are saved in Lightning checkpoints
    and restored on resume, and pruned weights stay exactly zero through training. Masks only grow.
    After training, :func:`mmrobust.compression.make_permanent` bakes them into plain weights.

    Combine with :class:`~mmrobust.callbacks.AdversarialTraining` for robust pruning of adversarially
    trained models (Sehwag et al. 2020 compare this baseline with HYDRA, :func:`~mmrobust.compression.hydra_prune`).

    Args:
        sparsity: final sparsity :math:`s_f` in [0, 1].
        initial_sparsity: :math:`s_i`.
        begin_step, end_step: schedule bounds in optimizer steps; ``end_step=None`` prunes once at ``begin_step``.
        frequency: :math:`\\Delta t` in steps.
        scope: ``"global"`` or ``"layer"``.
        types, exclude: layer types to prune (default Conv1d/Conv2d/Linear/PyG Linear) and names to skip.
    """

    def __init__(self, sparsity: float, *, initial_sparsity: float = 0.0, begin_step: int = 0,
                 end_step: Optional[int] = None, frequency: int = 100, scope: str = "global",
                 types: Optional[Sequence[Type[nn.Module]]] = None, exclude: Sequence[str] = ()):
        super().__init__(sparsity, initial_sparsity=initial_sparsity, begin_step=begin_step, end_step=end_step,
                         frequency=frequency, scope=scope, exclude=exclude)
        self.types = types

    chain_rank = 1

    def register(self, pl_module: "pl.LightningModule") -> None:
        add_masks(prunable_modules(pl_module, self.types, self.exclude))

    def sparsify(self, pl_module, target: float) -> None:
        modules = prunable_modules(pl_module, self.types, self.exclude)
        set_masks(modules, magnitude_masks(modules, target, self.scope))
        pl_module.log("pruning/sparsity", target, on_step=True, on_epoch=False)
