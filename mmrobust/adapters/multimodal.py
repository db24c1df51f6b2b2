"""Adapter for dict batches that carry several modalities, e.g. ``{"image": x, "audio": w, "y": y}``.

Each named input becomes one attackable tensor of the :class:`BatchView`, checked with its own modality's
rules (images: float, batch first; audio: float waveform in [-1, 1], padding from lengths never
perturbed). With a :class:`~mmrobust.threats.Joint` threat an attack perturbs several modalities at
once, each within its own budget; naming only one modality in the threat attacks that one alone (the
others stay clean), which attributes robustness to modalities.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import torch
from torch import Tensor

from .audio import AUDIO_KEYS, check_waveform, length_mask
from .base import BatchAdapter, BatchView, register_adapter
from .calls import multimodal_call
from .tensor import TARGET_KEYS, replace_entries, select_examples


def _float_inputs(batch: Mapping) -> list:
    return [k for k, v in batch.items()
            if isinstance(v, Tensor) and torch.is_floating_point(v) and v.dim() >= 2]


class MultimodalAdapter(BatchAdapter):
    """Reads dict batches with several attackable inputs.

    Args:
        inputs: names of the attackable inputs (default: every float tensor entry with a batch dimension).
        target_key: key of the labels (default the first of ``y, label, labels, target``).
        lengths: ``{input name: key of its lengths}`` for padded audio (default: ``"<name>_lengths"`` or
            ``"lengths"`` when present, for inputs named like audio).
        call: ``"auto"`` (default) reads the model's ``forward`` signature: keywords named like the
            inputs -> ``"kwargs"``, one argument -> ``"dict"``, otherwise an error saying what to pass.
            ``"kwargs"`` calls ``model(**inputs)`` (``forward(image=..., audio=...)``); ``"dict"`` calls
            ``model(batch)`` with the perturbed entries replaced (``forward(batch)``).
        forward: optional ``forward(model, inputs, batch) -> logits`` overriding ``call``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from mmrobust.adapters import MultimodalAdapter
        >>> class Fusion(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.image_head, self.audio_head = nn.Linear(4, 3), nn.Linear(8, 3)
        ...     def forward(self, image, audio):                # keywords named like the inputs: call="kwargs"
        ...         return self.image_head(image.flatten(1)) + self.audio_head(audio)
        >>> batch = {"image": torch.rand(2, 1, 2, 2), "audio": torch.rand(2, 8) - 0.5, "y": torch.tensor([0, 1])}
        >>> view = MultimodalAdapter().victim(Fusion(), batch)
        >>> sorted(view.inputs), view.forward(view.inputs).shape
        (['audio', 'image'], torch.Size([2, 3]))
    """

    modality = "multimodal"

    def __init__(self, inputs: Optional[Sequence[str]] = None, target_key: Optional[str] = None,
                 lengths: Optional[Mapping[str, str]] = None, call: str = "auto",
                 forward: Optional[Callable[[torch.nn.Module, Dict[str, Tensor], Any], Tensor]] = None):
        if call not in ("auto", "kwargs", "dict"):
            raise ValueError(f"call must be 'auto', 'kwargs' (model(**inputs)) or 'dict' (model(batch)), got {call!r}")
        self.input_names = list(inputs) if inputs is not None else None
        self.target_key = target_key
        self.lengths = dict(lengths or {})
        self.call = call
        self.forward_fn = forward

    def _names(self, batch: Mapping) -> tuple:
        if not isinstance(batch, Mapping):
            raise TypeError(f"MultimodalAdapter reads dict batches, got {type(batch).__name__}")
        tk = self.target_key or next((k for k in TARGET_KEYS if k in batch), None)
        if tk is None or tk not in batch:
            raise KeyError(f"dict batch with keys {sorted(batch)} needs target_key on MultimodalAdapter")
        names = self.input_names or [k for k in _float_inputs(batch) if k != tk]
        missing = [k for k in names if k not in batch]
        if missing or not names:
            raise KeyError(f"inputs {missing or names} not found among the batch keys {sorted(batch)}")
        return names, tk

    def _lengths_key(self, batch: Mapping, name: str) -> Optional[str]:
        if name in self.lengths:
            return self.lengths[name]
        if name in AUDIO_KEYS or "audio" in name or "wave" in name:
            for key in (f"{name}_lengths", "lengths"):
                if key in batch:
                    return key
        return None

    def victim(self, model, batch) -> BatchView:
        names, tk = self._names(batch)
        y = batch[tk]
        size = batch[names[0]].shape[0]
        if not isinstance(y, Tensor) or torch.is_floating_point(y) or y.shape != (size,):
            raise TypeError(f"labels {tk!r} must be an integer tensor of shape ({size},), got "
                            f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
        masks = {}
        for name in names:
            x = batch[name]
            if not isinstance(x, Tensor) or not torch.is_floating_point(x):
                raise TypeError(f"input {name!r} must be a floating-point tensor, got "
                                f"{getattr(x, 'dtype', type(x).__name__)}")
            if x.shape[0] != size:
                raise ValueError(f"input {name!r} has batch size {x.shape[0]}, but {names[0]!r} has {size}")
            lk = self._lengths_key(batch, name)
            if lk is not None or name in AUDIO_KEYS:
                check_waveform(x, name=name)
            if lk is not None:
                masks[name] = length_mask(batch[lk], x)

        run = multimodal_call(model, names, self.call) if self.forward_fn is None else None

        def forward(inputs: Dict[str, Tensor]) -> Tensor:
            if run is None:
                return self.forward_fn(model, inputs, batch)
            return run(inputs, batch)

        def rebuild(inputs: Dict[str, Tensor]) -> Any:
            return replace_entries(batch, dict(inputs))

        def select(index: Tensor) -> BatchView:
            return self.victim(model, select_examples(batch, index, size))

        return BatchView(inputs={k: batch[k] for k in names}, target=y.long(), forward=forward, rebuild=rebuild,
                      masks=masks, select=select, meta={"modalities": list(names)})

    def batch_size(self, batch) -> int:
        names, _ = self._names(batch)
        return batch[names[0]].shape[0]


def _is_multimodal_dict(batch: Any) -> bool:
    return isinstance(batch, Mapping) and len(_float_inputs(batch)) >= 2


register_adapter(_is_multimodal_dict, lambda batch: MultimodalAdapter(), priority=20)
