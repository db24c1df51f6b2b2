"""Fake-quantised weights for quantisation-aware training, integer export and true model size.

Weights of ``Conv1d``/``Conv2d``/``Linear`` layers (and PyG's ``torch_geometric.nn.dense.linear.Linear``,
which GCN/GAT/SAGE layers use for their weights) are parametrised with :class:`FakeQuantize` through
:mod:`torch.nn.utils.parametrize`, so the float weights stay the trainable parameters, the quantiser's
ranges are buffers in the model's ``state_dict`` and ``deepcopy``/DDP keep working.

Quantisation follows Stutz et al. 2021, "Bit error robustness for energy-efficient DNN accelerators"
(https://arxiv.org/abs/2006.13977, Sec. 4.1), with the usual zero-point convention for the
asymmetric case (Jacob et al. 2018, https://arxiv.org/abs/1712.05877, Eq. 1):

.. math::
    \\text{symmetric: } q = \\operatorname{clip}(\\lfloor w/\\Delta \\rceil, -(2^{m-1}-1), 2^{m-1}-1),\\;
    \\Delta = q_{max}/(2^{m-1}-1),\\; \\hat w = \\Delta q

    \\text{asymmetric: } q = \\operatorname{clip}(\\lfloor w/\\Delta \\rceil + z, 0, 2^m-1),\\;
    \\Delta = (w_{max}-w_{min})/(2^m-1),\\; z = \\lfloor -w_{min}/\\Delta \\rceil,\\; \\hat w = \\Delta (q - z)

Symmetric codes are stored as ``m``-bit two's complement, asymmetric codes as ``m``-bit unsigned
integers (the representations whose bits :mod:`mmrobust.compression.bit_errors` flips). Training uses
the straight-through estimator (Bengio et al. 2013, https://arxiv.org/abs/1308.3432):
:math:`\\partial \\hat w / \\partial w := 1`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Type

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import check_int, check_positive

__all__ = ["QuantizerConfig", "FakeQuantize", "quantize_tensor", "dequantize_tensor", "fake_quantize",
           "quantize_model", "dequantize_model", "remove_quantizers", "quantized_modules", "clip_weights",
           "export_quantized", "model_size_bytes", "default_weight_types"]


def default_weight_types() -> Tuple[Type[nn.Module], ...]:
    """Layer types whose ``weight`` is quantised / pruned by default (PyG's Linear when installed)."""
    types: Tuple[Type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)
    try:
        from torch_geometric.nn.dense.linear import Linear as PygLinear
        types = types + (PygLinear,)
    except ImportError:  # PyG is optional
        pass
    return types


@dataclass(frozen=True)
class QuantizerConfig:
    """How weights are quantised.

    Args:
        bits: bits per weight, 2 to 8.
        symmetric: symmetric range ``[-q_max, q_max]`` with two's complement codes (else asymmetric
            ``[w_min, w_max]`` with unsigned codes and a zero point).
        per_channel: one range per output channel (dim 0) instead of one per tensor.
        clip: weight clipping bound ``w_max`` (Stutz et al. 2021, Sec. 4.2): training clamps weights to
            ``[-w_max, w_max]`` and the quantisation range is fixed to it; ``None`` = no clipping.
    """

    bits: int = 8
    symmetric: bool = True
    per_channel: bool = False
    clip: Optional[float] = None

    def __post_init__(self):
        check_int("bits", self.bits, 2)
        if self.bits > 8:
            raise ValueError(f"bits must be an integer in [2, 8], got {self.bits}")
        if self.clip is not None:
            check_positive("clip", self.clip)


def _ranges(w: Tensor, cfg: QuantizerConfig) -> Tuple[Tensor, Tensor]:
    """Per-tensor or per-channel (low, high), shaped to broadcast against ``w``."""
    flat = w.detach().reshape(w.shape[0], -1) if cfg.per_channel else w.detach().reshape(1, -1)
    if cfg.clip is not None:
        high = torch.full((flat.shape[0],), cfg.clip, dtype=w.dtype, device=w.device)
        low = -high
        if not cfg.symmetric:
            # asymmetric with clipping: the tighter of the clip box and the weights' own range (containing 0)
            low = flat.amin(1).clamp(-cfg.clip, 0.0)
            high = flat.amax(1).clamp(0.0, cfg.clip)
    elif cfg.symmetric:
        high = flat.abs().amax(1)
        low = -high
    else:
        low, high = flat.amin(1).clamp_max(0.0), flat.amax(1).clamp_min(0.0)
    return low, high


def _scale_zero(low: Tensor, high: Tensor, cfg: QuantizerConfig) -> Tuple[Tensor, Tensor]:
    tiny = torch.finfo(low.dtype).tiny
    if cfg.symmetric:
        scale = (high / (2 ** (cfg.bits - 1) - 1)).clamp_min(tiny)
        zero = torch.zeros_like(scale)
    else:
        scale = ((high - low) / (2 ** cfg.bits - 1)).clamp_min(tiny)
        zero = torch.round(-low / scale).clamp(0, 2 ** cfg.bits - 1)
    return scale, zero


def _view(v: Tensor, w: Tensor, per_channel: bool) -> Tensor:
    return v.reshape(-1, *([1] * (w.dim() - 1))) if per_channel else v.reshape(())


def code_limits(cfg: QuantizerConfig) -> Tuple[int, int]:
    """Smallest and largest integer code the quantiser produces."""
    if cfg.symmetric:
        n = 2 ** (cfg.bits - 1) - 1
        return -n, n
    return 0, 2 ** cfg.bits - 1


def quantize_tensor(w: Tensor, cfg: QuantizerConfig) -> Tuple[Tensor, Tensor, Tensor]:
    """Integer codes (``int32``), scale and zero point of ``w`` (scale/zero per channel if configured)."""
    low, high = _ranges(w, cfg)
    scale, zero = _scale_zero(low, high, cfg)
    s, z = _view(scale, w, cfg.per_channel), _view(zero, w, cfg.per_channel)
    lo, hi = code_limits(cfg)
    q = torch.round(w.detach() / s + z).clamp(lo, hi).to(torch.int32)
    return q, scale, zero


def dequantize_tensor(q: Tensor, scale: Tensor, zero: Tensor, per_channel: bool) -> Tensor:
    """Float weights from codes: :math:`\\Delta (q - z)`."""
    s, z = _view(scale, q, per_channel), _view(zero, q, per_channel)
    return (q.to(s.dtype) - z) * s


def to_unsigned(q: Tensor, bits: int, symmetric: bool) -> Tensor:
    """The ``bits``-bit memory word of each code (two's complement for signed codes)."""
    return q & (2 ** bits - 1) if symmetric else q


def from_unsigned(u: Tensor, bits: int, symmetric: bool) -> Tensor:
    """Inverse of :func:`to_unsigned` (sign-extends two's complement words)."""
    if not symmetric:
        return u
    return torch.where(u >= 2 ** (bits - 1), u - 2 ** bits, u)


def fake_quantize(w: Tensor, cfg: QuantizerConfig, flips=None) -> Tensor:
    """Quantise-dequantise ``w`` with a straight-through gradient.

    ``flips`` (a :class:`~mmrobust.compression.bit_errors.BitFlips` or a dense ``int32`` XOR mask)
    flips bits of the codes' memory words.
    """
    q, scale, zero = quantize_tensor(w, cfg)
    if isinstance(flips, Tensor):
        q = from_unsigned(to_unsigned(q, cfg.bits, cfg.symmetric) ^ flips, cfg.bits, cfg.symmetric)
    elif flips is not None and flips.index.numel():
        flat = q.reshape(-1)  # q is our own fresh tensor: writing into it is safe
        words = to_unsigned(flat[flips.index], cfg.bits, cfg.symmetric) ^ flips.words
        flat[flips.index] = from_unsigned(words, cfg.bits, cfg.symmetric)
    w_hat = dequantize_tensor(q, scale, zero, cfg.per_channel).to(w.dtype)
    return w + (w_hat - w).detach()


class FakeQuantize(nn.Module):
    """Parametrisation ``weight = fake_quantize(original)``; see the module docstring for the maths.

    Buffers ``low``/``high`` hold the quantiser's range from the last forward pass (saved in checkpoints).
    ``flips`` (not saved) holds the bit-error pattern that
    :func:`mmrobust.compression.bit_errors.bit_errors` injects temporarily.
    """

    def __init__(self, cfg: QuantizerConfig, channels: int):
        super().__init__()
        self.cfg = cfg
        n = channels if cfg.per_channel else 1
        self.register_buffer("low", torch.zeros(n))
        self.register_buffer("high", torch.zeros(n))
        self.flips = None

    def forward(self, w: Tensor) -> Tensor:
        with torch.no_grad():
            low, high = _ranges(w, self.cfg)
            self.low.copy_(low)
            self.high.copy_(high)
        return fake_quantize(w, self.cfg, self.flips)

    def codes(self, w: Tensor) -> Tensor:
        """Integer codes of the (clean) float weight ``w``."""
        return quantize_tensor(w, self.cfg)[0]

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.cfg).items())


def quantized_modules(model: nn.Module) -> Iterator[Tuple[str, nn.Module, FakeQuantize]]:
    """``(name, module, quantiser)`` for every weight parametrised with :class:`FakeQuantize`."""
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, FakeQuantize):
                    yield name, module, p


def _is_materialised(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return isinstance(w, Tensor) and not isinstance(w, nn.parameter.UninitializedParameter)


def quantize_model(model: nn.Module, cfg: Optional[QuantizerConfig] = None, *,
                   types: Optional[Sequence[Type[nn.Module]]] = None, exclude: Sequence[str] = (),
                   **kwargs) -> nn.Module:
    """Parametrise every weight of the given layer ``types`` with :class:`FakeQuantize` (in place).

    ``kwargs`` build a :class:`QuantizerConfig` when ``cfg`` is not given. Layers already quantised and
    names in ``exclude`` are skipped. Lazy PyG layers must be materialised first (run one forward pass).
    """
    cfg = cfg if cfg is not None else QuantizerConfig(**kwargs)
    types = tuple(types) if types is not None else default_weight_types()
    done = {id(m) for _, m, _ in quantized_modules(model)}
    found = 0
    for name, module in model.named_modules():
        if not isinstance(module, types) or name in exclude or id(module) in done:
            continue
        if not _is_materialised(module):
            raise ValueError(f"layer {name!r} has an uninitialised (lazy) weight; run one forward pass before "
                             "quantising")
        parametrize.register_parametrization(module, "weight", FakeQuantize(cfg, module.weight.shape[0]))
        found += 1
    if found == 0 and not done:
        raise ValueError(f"model has no layer of types {[t.__name__ for t in types]} to quantise")
    return model


def own_parametrized_class(module: nn.Module) -> None:
    """Give a parametrised module a class of its own before removing parametrisations.

    ``copy.deepcopy`` of a parametrised module shares torch's generated ``Parametrized*`` class with the
    original, and ``remove_parametrizations`` deletes the property from that class, which would break
    the other copy.
    """
    cls = module.__class__
    namespace = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, namespace)


def dequantize_model(model: nn.Module, *, keep_quantized_values: bool = False) -> nn.Module:
    """Remove the quantisation parametrisations (float weights back, or the quantised values baked in).

    Other parametrisations of the same weight (a pruning mask before the quantiser) are removed too,
    keeping their effect when ``keep_quantized_values``.
    """
    for _, module, _ in list(quantized_modules(model)):
        own_parametrized_class(module)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=keep_quantized_values)
    return model


def remove_quantizers(model: nn.Module) -> nn.Module:
    """Remove only the :class:`FakeQuantize` parametrisations (float weights back), keeping every other
    parametrisation of the same weight (a pruning mask, Fourier coefficients): undoes a temporary
    :func:`quantize_model` exactly, where :func:`dequantize_model` would also drop the masks."""
    for _, module, fq in list(quantized_modules(model)):
        chain = module.parametrizations.weight
        if len(chain) == 1:
            own_parametrized_class(module)
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        else:
            del chain[len(parametrizations_before(module, fq))]
    return model


def original_weight(module: nn.Module) -> Tensor:
    """The trainable float weight behind any parametrisation."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def parametrizations_before(module: nn.Module, quantizer: FakeQuantize) -> List[nn.Module]:
    """The parametrisations of ``module``'s weight that come before ``quantizer`` in its chain (a pruning
    mask, a Fourier kernel), in order."""
    chain = list(module.parametrizations.weight)
    for i, p in enumerate(chain):
        if p is quantizer:
            return chain[:i]
    raise ValueError("quantizer is not a parametrisation of this module's weight")


def quantizer_input(module: nn.Module, quantizer: FakeQuantize) -> Tensor:
    """The float weight ``quantizer`` sees: the original weight through the parametrisations before it
    (e.g. a pruning mask)."""
    w = module.parametrizations.weight.original
    for p in parametrizations_before(module, quantizer):
        w = p(w)
    return w


@torch.no_grad()
def clip_weights(model: nn.Module) -> None:
    """Clamp every quantised weight to ``[-clip, clip]`` of its quantiser (Stutz et al. 2021, Sec. 4.2).

    The clamp applies to the weight the quantiser sees. Behind elementwise parametrisations (a pruning mask)
    that is the stored float weight; behind a Fourier kernel it is the spatial kernel: where it leaves the
    box, the clamped kernel's coefficients are written back (the coefficient mask then applies again, so the
    result is near the box, and the quantiser saturates the rest); a kernel inside the box is left unchanged.
    """
    for _, module, fq in quantized_modules(model):
        if fq.cfg.clip is None:
            continue
        clip = fq.cfg.clip
        before = parametrizations_before(module, fq)
        inverses = [p for p in before if hasattr(p, "right_inverse")]
        if not inverses:  # masks commute with the clamp: clamp the stored weight (the previous behaviour)
            original_weight(module).clamp_(-clip, clip)
            continue
        # clamping Fourier coefficients instead changed kernels that were inside the box
        w = quantizer_input(module, fq)
        if bool((w.abs() <= clip).all()):
            continue
        value = w.clamp(-clip, clip)
        for p in reversed(before):
            if hasattr(p, "right_inverse"):
                value = p.right_inverse(value)
        original_weight(module).copy_(value)


@torch.no_grad()
def export_quantized(model: nn.Module) -> Dict[str, Dict[str, object]]:
    """Integer weights per quantised layer: ``{name: {"codes", "scale", "zero_point", "bits", ...}}``.

    ``codes`` is ``int8`` for symmetric and ``uint8`` for asymmetric quantisation (``bits`` <= 8 always fit).
    """
    out = {}
    for name, module, fq in quantized_modules(model):
        q, scale, zero = quantize_tensor(quantizer_input(module, fq), fq.cfg)
        out[name] = {"codes": q.to(torch.int8 if fq.cfg.symmetric else torch.uint8), "scale": scale,
                     "zero_point": zero, "bits": fq.cfg.bits, "symmetric": fq.cfg.symmetric,
                     "per_channel": fq.cfg.per_channel}
    return out


def model_size_bytes(model: nn.Module, *, float_bits: int = 32) -> int:
    """True dense storage size in bytes: ``bits`` per quantised weight plus one float scale per range
    (and a zero point when asymmetric), and ``float_bits`` per remaining parameter (biases, norms,
    unquantised layers). Pruned zeros are stored densely (no sparse format is assumed)."""
    quantized = {}
    for _, module, fq in quantized_modules(model):
        quantized[id(original_weight(module))] = fq
    total_bits = 0
    for p in model.parameters():
        fq = quantized.get(id(p))
        if fq is None:
            total_bits += p.numel() * float_bits
        else:
            n_ranges = p.shape[0] if fq.cfg.per_channel else 1
            total_bits += p.numel() * fq.cfg.bits + n_ranges * float_bits * (1 if fq.cfg.symmetric else 2)
    return math.ceil(total_bits / 8)
