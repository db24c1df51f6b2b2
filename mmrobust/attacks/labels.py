"""One label check for every attack entry point (``__call__``, ``generate``, targeted attacks)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..adapters.base import BatchView
from ..errors import LabelError

__all__ = ["check_labels", "label_checked"]


def check_labels(labels: Tensor, n_classes: int, name: str = "labels") -> None:
    """Raise :class:`~mmrobust.errors.LabelError` unless ``labels`` are class indices in ``[0, n_classes - 1]``
    and the model has at least two outputs (one logit per class)."""
    if n_classes < 2:
        # a (B, 1) output is a sigmoid binary classifier: read as one softmax class, its cross-entropy is 0 with a
        # zero gradient and argmax always 0, so a batch of 0 labels would pass as perfectly robust
        raise LabelError(f"the model returns {n_classes} logit per output, but attacks need one logit per class "
                         "(C >= 2). For a binary classifier with one sigmoid logit z, return torch.cat([-z, z], 1) / 2 "
                         "(or torch.cat([torch.zeros_like(z), z], 1)): softmax of that is (1 - sigmoid(z), sigmoid(z))")
    if labels.numel() == 0 or labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        return  # not class indices; the loss reports those
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= n_classes:
        raise LabelError(f"{name} must lie in [0, {n_classes - 1}] for a model with {n_classes} outputs (class "
                         f"indices in [0, C - 1]), got values in [{low}, {high}]")


def label_checked(victim: BatchView, target_labels: Optional[Tensor] = None) -> BatchView:
    """``victim`` whose first forward pass checks the labels (and ``target_labels``) against the number of
    outputs, before any loss reads them; for entry points without a clean pass (``generate``)."""
    forward = victim.forward
    checked = []

    def first_forward(inputs):
        logits = forward(inputs)
        if not checked:
            check_labels(victim.target, logits.shape[-1])
            if target_labels is not None:
                check_labels(target_labels, logits.shape[-1], "target_labels")
            checked.append(True)
            victim.forward = forward
        return logits

    victim.forward = first_forward
    return victim
