"""Adapter for batches whose input is one dense tensor with the example dimension first (images)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Union

import torch
from torch import Tensor

from .base import BatchAdapter, BatchView, register_adapter

Key = Union[int, str]

INPUT_KEYS = ("x", "image", "input", "inputs")
TARGET_KEYS = ("y", "label", "labels", "target")


def _get(batch: Any, key: Key):
    try:
        return batch[key]
    except (KeyError, IndexError, TypeError) as e:
        raise KeyError(f"batch has no entry {key!r} (batch type {type(batch).__name__}); "
                       "set input_key/target_key on the adapter") from e


def replace_entries(batch: Any, values: Mapping[Key, Any]) -> Any:
    """A shallow copy of ``batch`` (tuple, list or dict) with some entries replaced."""
    if isinstance(batch, Mapping):
        out = dict(batch)
        out.update(values)
        return type(batch)(out) if type(batch) is not dict else out
    if isinstance(batch, (list, tuple)):
        items = list(batch)
        for k, v in values.items():
            items[k] = v
        if hasattr(batch, "_fields"):  # namedtuple
            return type(batch)(*items)
        return type(batch)(items)
    raise TypeError(f"cannot rebuild a batch of type {type(batch).__name__}")


def select_examples(batch: Any, index: Tensor, size: int) -> Any:
    """Index every tensor of ``batch`` whose leading dimension is ``size`` by ``index``."""
    def pick(v):
        if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == size:
            return v[index]
        return v
    if isinstance(batch, Mapping):
        return replace_entries(batch, {k: pick(v) for k, v in batch.items()})
    if isinstance(batch, (list, tuple)):
        return replace_entries(batch, {i: pick(v) for i, v in enumerate(batch)})
    raise TypeError(f"cannot select from a batch of type {type(batch).__name__}")


class TensorAdapter(BatchAdapter):
    """``(x, y, ...)`` tuples/lists or dicts with an input and a target entry.

    Args:
        input_key: index or key of the input tensor (default ``0`` for sequences, ``"x"``/``"image"``/
            ``"input"`` for dicts, whichever exists).
        target_key: index or key of the integer labels (default ``1`` / ``"y"``/``"label"``/``"target"``).
        forward: optional ``forward(model, x, batch) -> logits`` for models that need more than ``x``.

    Example:
        >>> import torch
        >>> from mmrobust.adapters import TensorAdapter
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> view = TensorAdapter(input_key="pixels", target_key="label").victim(model, {"pixels": x, "label": y})
        >>> sorted(view.inputs), view.forward(view.inputs).shape
        (['image'], torch.Size([8, 3]))
        >>> sorted(view.rebuild({"image": x + 0.1}))            # the user's dict, perturbed
        ['label', 'pixels']
    """

    modality = "image"

    def __init__(self, input_key: Optional[Key] = None, target_key: Optional[Key] = None,
                 forward: Optional[Callable[[torch.nn.Module, Tensor, Any], Tensor]] = None):
        self.input_key = input_key
        self.target_key = target_key
        self.forward_fn = forward

    def _keys(self, batch: Any) -> tuple[Key, Key]:
        if isinstance(batch, Mapping):
            ik = self.input_key or next((k for k in INPUT_KEYS if k in batch), None)
            tk = self.target_key or next((k for k in TARGET_KEYS if k in batch), None)
            if ik is None or tk is None:
                raise KeyError(f"dict batch with keys {sorted(batch)} needs input_key and target_key on the adapter")
            return ik, tk
        if isinstance(batch, (list, tuple)):
            if len(batch) < 2:
                raise ValueError(f"a sequence batch needs at least (x, y), got {len(batch)} entries")
            return (0 if self.input_key is None else self.input_key,
                    1 if self.target_key is None else self.target_key)
        raise TypeError(f"TensorAdapter reads tuples, lists and dicts, got {type(batch).__name__}")

    def check(self, x: Tensor, y: Tensor) -> None:
        if not isinstance(x, Tensor) or not torch.is_floating_point(x):
            raise TypeError(f"the input must be a floating-point tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(f"the input must have shape (batch, ...) with batch >= 1, got {tuple(x.shape)}")
        if not isinstance(y, Tensor) or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"targets must be an integer tensor of class indices, got "
                            f"{getattr(y, 'dtype', type(y).__name__)}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"targets must have shape ({x.shape[0]},) to match the input batch, got {tuple(y.shape)}")

    def run(self, model: torch.nn.Module, x: Tensor, batch: Any) -> Tensor:
        return model(x) if self.forward_fn is None else self.forward_fn(model, x, batch)

    def victim(self, model, batch) -> BatchView:
        ik, tk = self._keys(batch)
        x, y = _get(batch, ik), _get(batch, tk)
        self.check(x, y)
        name = self.modality

        def forward(inputs: Dict[str, Tensor]) -> Tensor:
            return self.run(model, inputs[name], batch)

        def rebuild(inputs: Dict[str, Tensor]) -> Any:
            return replace_entries(batch, {ik: inputs[name]})

        def select(index: Tensor) -> BatchView:
            return self.victim(model, select_examples(batch, index, x.shape[0]))

        return BatchView(inputs={name: x}, target=y.long(), forward=forward, rebuild=rebuild, select=select,
                      labels={name: f"the input batch[{ik!r}]"})

    def batch_size(self, batch) -> int:
        ik, _ = self._keys(batch)
        return _get(batch, ik).shape[0]


#: Images are plain dense tensors; the alias makes user code read naturally.
ImageAdapter = TensorAdapter


def _is_tensor_pair(batch: Any) -> bool:
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        # dtype is checked by the adapter, which explains what is wrong
        return isinstance(batch[0], Tensor) and isinstance(batch[1], Tensor)
    if isinstance(batch, Mapping):
        tensors = [k for k, v in batch.items() if isinstance(v, Tensor) and torch.is_floating_point(v)
                   and v.dim() >= 2]
        return any(k in batch for k in INPUT_KEYS) and len(tensors) == 1
    return False


register_adapter(_is_tensor_pair, lambda batch: TensorAdapter(), priority=0)
