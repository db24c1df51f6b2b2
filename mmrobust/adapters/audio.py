"""Adapter for speech/audio batches: float waveforms in ``[-1, 1]`` with optional lengths or padding masks.

Batches look like ``(wave, y)``, ``(wave, y, lengths)`` or dicts such as
``{"audio": wave, "label": y, "lengths": lengths}``. ``wave`` has shape ``(B, T)`` or ``(B, C, T)``.
Padding beyond each example's length (or where the padding mask is 0) is never perturbed: the adapter
puts a mask into :attr:`BatchView.masks`, which every attack applies.

Dict batches with an ``"audio"``, ``"wave"`` or ``"waveform"`` key are recognised automatically. Tuple
batches are not: a ``(B, T)`` float tensor could just as well be a batch of feature vectors, so pass
``adapter=WaveformAdapter()`` to the attack explicitly.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Union

import torch
from torch import Tensor

from .base import BatchAdapter, BatchView, register_adapter
from .tensor import _get, replace_entries, select_examples

Key = Union[int, str]

AUDIO_KEYS = ("audio", "wave", "waveform", "waveforms")
TARGET_KEYS = ("y", "label", "labels", "target")
LENGTH_KEYS = ("lengths", "length", "lens")
MASK_KEYS = ("mask", "padding_mask", "attention_mask")
_INT_SCALE = {torch.int16: "32768", torch.int32: "2147483648", torch.uint8: "128 after subtracting 128",
              torch.int8: "128", torch.int64: "the sample format's full scale"}


def check_waveform(wave: Any, name: str = "wave") -> None:
    """Refuse anything that is not a float waveform of shape (B, T) or (B, C, T) with values in [-1, 1]."""
    if not isinstance(wave, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor waveform, got {type(wave).__name__}")
    if not torch.is_floating_point(wave):
        scale = _INT_SCALE.get(wave.dtype, "the sample format's full scale")
        raise TypeError(f"{name} has integer dtype {wave.dtype}; audio attacks work on float waveforms in [-1, 1]: "
                        f"convert with wave.float() / {scale} (or load with torchaudio.load / soundfile, "
                        "which return normalised floats)")
    if wave.dim() not in (2, 3) or wave.shape[0] == 0 or wave.shape[-1] == 0:
        raise ValueError(f"{name} must have shape (batch, time) or (batch, channels, time) with batch, time >= 1, "
                         f"got {tuple(wave.shape)}")
    if not bool(torch.isfinite(wave).all()):
        raise ValueError(f"{name} contains NaN or Inf samples")
    peak = wave.abs().max().item()
    if peak > 1.0 + 1e-6:
        raise ValueError(f"{name} must have samples in [-1, 1] (normalised float audio), got peak |x| = {peak:.4g}; "
                         "rescale (e.g. divide by 32768 for int16 PCM) or normalise the waveform")


def length_mask(lengths: Tensor, wave: Tensor) -> Tensor:
    """``(B, 1.., T)`` mask that is 1 on the first ``lengths[b]`` samples of each waveform."""
    t = torch.arange(wave.shape[-1], device=wave.device)
    mask = (t[None, :] < lengths.to(wave.device)[:, None]).to(wave.dtype)
    return mask.reshape(wave.shape[0], *([1] * (wave.dim() - 2)), wave.shape[-1])


class WaveformAdapter(BatchAdapter):
    """Reads waveform batches for attacks.

    Args:
        wave_key: index or key of the waveform (default ``0`` / the first of ``audio, wave, waveform``).
        target_key: index or key of the labels (default ``1`` / ``y, label, labels, target``).
        lengths_key: index or key of per-example valid lengths in samples (default ``2`` when a tuple
            has a third integer ``(B,)`` entry / ``lengths, length``); ``False`` disables lengths.
        mask_key: index or key of a padding mask shaped like the waveform (or ``(B, T)``), 1 = real audio
            (default: a third tuple entry of that shape / ``mask, padding_mask, attention_mask``).
        sample_rate: recorded in ``BatchView.meta`` for reports.
        forward: optional ``forward(model, wave, batch) -> logits`` (e.g. to pass lengths to the model).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from mmrobust.adapters import WaveformAdapter
        >>> wave, y, lengths = torch.zeros(2, 6), torch.tensor([0, 2]), torch.tensor([6, 4])
        >>> view = WaveformAdapter().victim(nn.Linear(6, 3), (wave, y, lengths))
        >>> view.masks["audio"]                            # the padding after each length is never perturbed
        tensor([[1., 1., 1., 1., 1., 1.],
                [1., 1., 1., 1., 0., 0.]])
    """

    modality = "audio"

    def __init__(self, wave_key: Optional[Key] = None, target_key: Optional[Key] = None,
                 lengths_key: Optional[Key] = None, mask_key: Optional[Key] = None,
                 sample_rate: Optional[int] = None,
                 forward: Optional[Callable[[torch.nn.Module, Tensor, Any], Tensor]] = None):
        self.wave_key = wave_key
        self.target_key = target_key
        self.lengths_key = lengths_key
        self.mask_key = mask_key
        self.sample_rate = sample_rate
        self.forward_fn = forward

    def _keys(self, batch: Any):
        if isinstance(batch, Mapping):
            wk = self.wave_key if self.wave_key is not None else next((k for k in AUDIO_KEYS if k in batch), None)
            tk = self.target_key if self.target_key is not None else next((k for k in TARGET_KEYS if k in batch), None)
            if wk is None or tk is None:
                raise KeyError(f"dict batch with keys {sorted(batch)} needs wave_key and target_key on WaveformAdapter "
                               f"(defaults look for {AUDIO_KEYS} and {TARGET_KEYS})")
            lk = self.lengths_key if self.lengths_key is not None else next((k for k in LENGTH_KEYS if k in batch), None)
            mk = self.mask_key if self.mask_key is not None else next((k for k in MASK_KEYS if k in batch), None)
            return wk, tk, (lk or None) if lk is not False else None, mk
        if isinstance(batch, (list, tuple)):
            if len(batch) < 2:
                raise ValueError(f"a sequence batch needs at least (wave, y), got {len(batch)} entries")
            wk = 0 if self.wave_key is None else self.wave_key
            tk = 1 if self.target_key is None else self.target_key
            lk, mk = self.lengths_key, self.mask_key
            if lk is None and mk is None and len(batch) >= 3 and isinstance(batch[2], Tensor):
                third, wave = batch[2], batch[wk]
                if third.dim() == 1 and not torch.is_floating_point(third):
                    lk = 2
                elif isinstance(wave, Tensor) and third.shape[-1] == wave.shape[-1] and third.dim() >= 2:
                    mk = 2
            return wk, tk, (lk if lk is not False else None), mk
        raise TypeError(f"WaveformAdapter reads tuples, lists and dicts, got {type(batch).__name__}")

    def mask(self, batch: Any, wave: Tensor) -> Optional[Tensor]:
        """The padding mask (1 = may be perturbed) implied by the batch's lengths or mask, or ``None``."""
        _, _, lk, mk = self._keys(batch)
        if lk is not None:
            lengths = _get(batch, lk)
            if not isinstance(lengths, Tensor) or lengths.shape != (wave.shape[0],) or torch.is_floating_point(lengths):
                raise ValueError(f"lengths must be an integer tensor of shape ({wave.shape[0]},), got "
                                 f"{getattr(lengths, 'dtype', type(lengths).__name__)} "
                                 f"{tuple(getattr(lengths, 'shape', ()))}")
            if bool(((lengths < 0) | (lengths > wave.shape[-1])).any()):
                raise ValueError(f"lengths must lie in [0, {wave.shape[-1]}] (the padded length), got values in "
                                 f"[{int(lengths.min())}, {int(lengths.max())}]")
            return length_mask(lengths, wave)
        if mk is not None:
            m = _get(batch, mk)
            if not isinstance(m, Tensor) or m.shape[0] != wave.shape[0] or m.shape[-1] != wave.shape[-1]:
                raise ValueError(f"the padding mask must have shape (B, T) or {tuple(wave.shape)}, got "
                                 f"{tuple(getattr(m, 'shape', ()))}")
            m = m.to(device=wave.device, dtype=wave.dtype)
            if m.dim() < wave.dim():
                m = m.reshape(m.shape[0], *([1] * (wave.dim() - m.dim())), m.shape[-1])
            return m
        return None

    def victim(self, model, batch) -> BatchView:
        wk, tk, _, _ = self._keys(batch)
        wave, y = _get(batch, wk), _get(batch, tk)
        check_waveform(wave)
        if not isinstance(y, Tensor) or torch.is_floating_point(y) or y.shape != (wave.shape[0],):
            raise TypeError(f"labels must be an integer tensor of shape ({wave.shape[0]},), got "
                            f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
        mask = self.mask(batch, wave)
        name = self.modality

        def forward(inputs: Dict[str, Tensor]) -> Tensor:
            w = inputs[name]
            return model(w) if self.forward_fn is None else self.forward_fn(model, w, batch)

        def rebuild(inputs: Dict[str, Tensor]) -> Any:
            return replace_entries(batch, {wk: inputs[name]})

        def select(index: Tensor) -> BatchView:
            return self.victim(model, select_examples(batch, index, wave.shape[0]))

        meta = {"sample_rate": self.sample_rate} if self.sample_rate is not None else {}
        return BatchView(inputs={name: wave}, target=y.long(), forward=forward, rebuild=rebuild,
                      masks={} if mask is None else {name: mask}, select=select, meta=meta)

    def batch_size(self, batch) -> int:
        wk = self._keys(batch)[0]
        return _get(batch, wk).shape[0]


def _is_audio_dict(batch: Any) -> bool:
    return isinstance(batch, Mapping) and any(k in batch and isinstance(batch[k], Tensor) for k in AUDIO_KEYS)


register_adapter(_is_audio_dict, lambda batch: WaveformAdapter(), priority=10)
