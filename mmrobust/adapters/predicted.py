"""An adapter whose scored labels are the model's own clean predictions (distances to where the prediction
changes, e.g. for :func:`~mmrobust.geometry.boundary_distance`)."""

from __future__ import annotations

from typing import Optional

import torch

from ..utils import normal_tensor
from .base import BatchAdapter, BatchView, infer_adapter


class PredictedLabelAdapter(BatchAdapter):
    """Wraps an adapter so that the scored labels are the model's own clean predictions.

    A minimal-norm attack then measures the distance to the nearest point where the *prediction changes*,
    which is defined for misclassified inputs too (their distance to the region of the predicted class);
    the true labels travel in ``BatchView.meta["true_target"]`` (and ``AttackResult.extras``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from mmrobust.adapters import PredictedLabelAdapter
        >>> _ = torch.manual_seed(0)
        >>> model, x, y = nn.Linear(4, 3), torch.rand(5, 4), torch.zeros(5, dtype=torch.long)
        >>> view = PredictedLabelAdapter().victim(model, (x, y))
        >>> torch.equal(view.target, model(x).argmax(1)), view.meta["true_target"]
        (True, tensor([0, 0, 0, 0, 0]))
    """

    def __init__(self, adapter: Optional[BatchAdapter] = None):
        self.adapter = adapter
        self.modality = getattr(adapter, "modality", "generic")

    def victim(self, model, batch):
        inner = (self.adapter or infer_adapter(batch)).victim(model, batch)
        with torch.no_grad():
            prediction = inner.forward({k: normal_tensor(v) for k, v in inner.inputs.items()}).argmax(1)
        select = None
        if inner.select is not None:
            def select(index):
                return _relabel(inner.select(index))
        meta = dict(inner.meta)
        meta["true_target"] = inner.target
        return BatchView(inputs=inner.inputs, target=prediction.to(inner.target.device), forward=inner.forward,
                      rebuild=inner.rebuild, unit=inner.unit, masks=inner.masks, select=select, meta=meta)

    def batch_size(self, batch):
        return (self.adapter or infer_adapter(batch)).batch_size(batch)


def _relabel(victim: BatchView) -> BatchView:
    with torch.no_grad():
        prediction = victim.forward({k: normal_tensor(v) for k, v in victim.inputs.items()}).argmax(1)
    victim.meta = dict(victim.meta, true_target=victim.target)
    victim.target = prediction.to(victim.target.device)
    return victim
