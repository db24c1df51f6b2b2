"""Safe checkpoint loading: tensors and plain containers only, never pickled code.

Every checkpoint mmrobust reads (teachers for distillation, ``mmrobust evaluate``, resumed runs through
Lightning) goes through :func:`load_checkpoint`, which uses ``torch.load(..., weights_only=True)``. A
file that needs arbitrary unpickling (a tampered checkpoint, or one that pickled whole objects) is
refused with :class:`UnsafeCheckpointError` and nothing in it is executed.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict, Mapping, Union

import torch
from torch import nn


class UnsafeCheckpointError(RuntimeError):
    """The checkpoint contains objects that only unrestricted unpickling could load."""


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> Any:
    """``torch.load`` restricted to tensors and primitive containers (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"refusing to load {str(path)!r}: it contains objects that are not plain tensors/containers "
            f"(weights_only=True rejected it: {str(e).splitlines()[0]}). Re-save the state_dict only, "
            "e.g. torch.save(model.state_dict(), path). Nothing from the file was executed.") from None


def extract_state_dict(checkpoint: Any, model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's weights from a Lightning checkpoint (``state_dict`` with a module prefix) or a state_dict."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("checkpoint must be a state_dict or a Lightning checkpoint with a 'state_dict' entry")
    wanted = set(model.state_dict())
    if wanted <= set(state):
        return {k: state[k] for k in wanted}
    # a LightningModule that wraps the network as an attribute (e.g. RobustClassifier.model)
    for prefix in sorted({k.split(".", 1)[0] + "." for k in state if "." in k}):
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if wanted <= set(stripped):
            return {k: stripped[k] for k in wanted}
    missing = sorted(wanted - set(state))[:5]
    raise KeyError(f"checkpoint does not contain the model's weights (missing e.g. {missing})")


def load_weights(model: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Load weights from ``path`` into ``model`` safely (see :func:`load_checkpoint`)."""
    model.load_state_dict(extract_state_dict(load_checkpoint(path), model))
    return model
