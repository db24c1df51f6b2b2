"""Reading a batch for an attack: the one place that prepares a :class:`BatchView` for autograd, puts the
model in attack mode and checks what it returns.

``attack_mode(model)`` switches the model to eval mode, freezes its parameters (input gradients only) and
enables gradients under ``no_grad``/``inference_mode``, restoring modes, flags and ``.grad`` on exit, also on
exceptions; :func:`victim_for` / :func:`prepare_victim` read a batch with its adapter (inputs detached,
inference-mode tensors cloned). Every attack, metric and estimator uses them (re-exported by
:mod:`mmrobust.attacks.base`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Dict, Iterator, Optional

import torch
from torch import Tensor, nn

from ..adapters.base import BatchAdapter, BatchView, infer_adapter
from ..errors import NonFiniteError
from ..utils import kept_modes, normal_tensor

@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, parameters frozen, gradients on; restores everything on exit (also on error)."""
    grads = [(p, p.grad) for p in model.parameters()]
    try:
        with kept_modes(model, train=False, freeze=True), torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for p, g in grads:
            p.grad = g


def victim_for(model: nn.Module, batch: Any, adapter: Optional[BatchAdapter] = None) -> BatchView:
    """The :class:`BatchView` of ``batch`` (adapter inferred when ``None``), ready for autograd."""
    return prepare_victim((adapter or infer_adapter(batch)).victim(model, batch))


def prepared(victim: BatchView) -> BatchView:
    """A copy of ``victim`` ready for autograd (the victim given is left as it is)."""
    return prepare_victim(dataclasses.replace(victim))


def prepare_victim(victim: BatchView) -> BatchView:
    """Detach the victim's inputs and clone those created under ``inference_mode`` (Lightning's eval loops)."""
    victim.inputs = {k: normal_tensor(v).detach() for k, v in victim.inputs.items()}
    victim.target = normal_tensor(victim.target)
    return victim


def check_logits(logits: Tensor, victim: BatchView, where: str) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != victim.num_outputs:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"the model must return logits of shape (outputs, classes) = ({victim.num_outputs}, C) "
                         f"for this batch, got {shape}")
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteError(f"the model returned NaN/Inf logits {where}; the attack result would be "
                             "meaningless (check for overflow, e.g. under reduced precision)")


def apply_masks(deltas: Dict[str, Tensor], victim: BatchView) -> Dict[str, Tensor]:
    """Zero the perturbation where the adapter forbids changes (e.g. audio padding)."""
    if not victim.masks:
        return deltas
    return {k: (d * victim.masks[k] if k in victim.masks else d) for k, d in deltas.items()}
