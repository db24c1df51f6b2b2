"""Quantisation-aware training as a Lightning callback (Stutz et al. 2021, https://arxiv.org/abs/2006.13977)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Dict, Optional, Sequence, Type

import pytorch_lightning as pl
from torch import nn

from ..compression.quantization import QuantizerConfig, clip_weights, quantize_model, quantized_modules
from .weight_parametrizations import WeightParametrizationCallback


class Quantization(WeightParametrizationCallback):
    """Fake-quantise weights during training with a straight-through estimator, optionally clipping them.

    .. math:: \\hat w = \\Delta\\,(\\operatorname{clip}(\\lfloor w/\\Delta \\rceil + z) - z),\\qquad
        \\partial \\hat w/\\partial w := 1,\\qquad w \\leftarrow \\operatorname{clip}(w, -w_{max}, w_{max})
        \\text{ after every step (Stutz et al. 2021, Sec. 4.1-4.2)}

    The parametrisations are registered in ``setup`` (before Lightning restores a checkpoint, so resumed
    runs find the quantiser buffers) and stay on the model after training: it is a quantised model.
    Remove them with :func:`mmrobust.compression.dequantize_model`. The quantiser is always last in a
    weight's parametrisation chain (after :class:`~mmrobust.callbacks.Pruning`'s mask), whatever the order
    of ``Trainer(callbacks=[...])``.

    Args:
        bits, symmetric, per_channel, clip: see :class:`~mmrobust.compression.QuantizerConfig`.
        types: layer types to quantise (default Conv1d, Conv2d, Linear and PyG's Linear).
        exclude: module names (as in ``named_modules``) left in float.
    """

    def __init__(self, bits: int = 8, *, symmetric: bool = True, per_channel: bool = False,
                 clip: Optional[float] = None, types: Optional[Sequence[Type[nn.Module]]] = None,
                 exclude: Sequence[str] = ()):
        self.config = QuantizerConfig(bits=bits, symmetric=symmetric, per_channel=per_channel, clip=clip)
        self.types = types
        self.exclude = tuple(exclude)

    chain_rank = 2

    def register(self, pl_module: "pl.LightningModule") -> None:
        if not any(True for _ in quantized_modules(pl_module)):
            quantize_model(pl_module, self.config, types=self.types, exclude=self.exclude)
            self._owns_quantizers = True

    def on_fit_start(self, trainer, pl_module) -> None:
        if getattr(self, "_owns_quantizers", False):
            # setup() ran before Lightning restored this callback's state: give the quantisers it registered
            # the checkpoint's configuration (buffer shapes already matched, or loading the weights had failed)
            for _, _, quantizer in quantized_modules(pl_module):
                quantizer.cfg = self.config
        clip_weights(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        clip_weights(pl_module)  # projection after the optimizer step

    def state_dict(self) -> Dict[str, Any]:
        return {"config": asdict(self.config), "exclude": list(self.exclude)}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.config = QuantizerConfig(**state_dict["config"])
        self.exclude = tuple(state_dict.get("exclude", self.exclude))
