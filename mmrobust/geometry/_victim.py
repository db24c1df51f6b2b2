"""Reading a batch for the geometry estimators: the same adapters and ``BatchView`` the attacks use."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from ..adapters.base import BatchView
from ..attacks.base import victim_for
from ..threats.base import ThreatModel

__all__ = ["victim_for", "single_input", "forward_at", "flat", "unit_norm", "check_threat"]


def single_input(victim: BatchView, input_name: Optional[str]) -> Tuple[str, Tensor]:
    """The one input a geometric quantity is measured on (``input_name`` picks it when there are several)."""
    input_name = victim.input_name(input_name)
    x = victim.inputs[input_name]
    if not torch.is_floating_point(x):
        raise TypeError(f"input {input_name!r} must be floating point to measure geometry, got {x.dtype}")
    return input_name, x


def forward_at(victim: BatchView, name: str, value: Tensor) -> Tensor:
    """Logits with input ``name`` replaced by ``value`` (other inputs clean)."""
    inputs: Dict[str, Tensor] = dict(victim.inputs)
    inputs[name] = value
    return victim.forward(inputs)


def flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def unit_norm(victim: BatchView, per_output_sq: Tensor) -> Tensor:
    """Euclidean norm per unit from per-output squared norms."""
    return victim.per_unit(per_output_sq, "sum").clamp_min(0).sqrt()


def check_threat(name: str, threat: Any) -> ThreatModel:
    if not isinstance(threat, ThreatModel):
        raise TypeError(f"{name} must be a mmrobust ThreatModel (e.g. L2Ball(0.5)), got {type(threat).__name__}")
    return threat
