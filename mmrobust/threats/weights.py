"""Perturbations of a model's *weights* (not its inputs), bounded layer by layer.

Weight-space robustness methods -- adversarial weight perturbation (AWP, Wu et al. 2020) and flatness
measures (Stutz et al. 2021) -- maximise the loss over a set of weight perturbations
:math:`v = (v_l)_l` with one budget per layer :math:`l`. Perturbations are dicts
``{parameter name: tensor}`` keyed like ``model.named_parameters()``; every parameter tensor is one
"layer" with its own budget.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional

import torch
from torch import Tensor, nn

from ..errors import check_choice, check_finite_nonneg
from ..utils import rand, randn

Deltas = Dict[str, Tensor]

#: torch's normalisation layers; modules whose class name ends in "Norm" (e.g. PyG's ``GraphNorm``,
#: ``PairNorm``) are treated the same way.
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def is_norm_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (its affine parameters are excluded by default)."""
    rms = getattr(nn, "RMSNorm", None)
    return (isinstance(module, NORM_LAYERS) or (rms is not None and isinstance(module, rms))
            or type(module).__name__.endswith("Norm"))


def apply_deltas(model: nn.Module, deltas: Deltas) -> Dict[str, Tensor]:
    """Add ``deltas`` to the named parameters of ``model`` in place; return copies of the originals.

    Pair with :func:`restore_weights`, which copies the originals back bit-exactly. Prefer the
    :func:`perturbed_weights` context manager when the perturbed region fits in one block.
    """
    params = dict(model.named_parameters())
    unknown = set(deltas) - set(params)
    if unknown:
        raise KeyError(f"deltas name parameters the model does not have: {sorted(unknown)[:5]}")
    originals = {name: params[name].detach().clone() for name in deltas}
    try:
        with torch.no_grad():
            for name, d in deltas.items():
                params[name].add_(d.to(device=params[name].device, dtype=params[name].dtype))
    except BaseException:
        restore_weights(model, originals)
        raise
    return originals


def restore_weights(model: nn.Module, originals: Dict[str, Tensor]) -> None:
    """Copy saved parameter values back (bit-exact; ``p - v`` after ``p + v`` would not be)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in originals.items():
            params[name].copy_(value)


@contextlib.contextmanager
def perturbed_weights(model: nn.Module, deltas: Deltas) -> Iterator[nn.Module]:
    """Run a block with ``w + v``; the exact original weights come back on exit, also on exceptions.

    Gradients taken inside the block are gradients at the perturbed point; the backward pass must run
    inside the block too (restoring is an in-place write autograd would refuse afterwards).
    """
    originals = apply_deltas(model, deltas)
    try:
        yield model
    finally:
        restore_weights(model, originals)


class WeightBall:
    """Layer-wise (relative) norm ball on weight perturbations.

    Wu et al. 2020, "Adversarial Weight Perturbation Helps Robust Generalization"
    (https://arxiv.org/abs/2004.05884), Eq. 8, and Stutz et al. 2021 (https://arxiv.org/abs/2104.04448), Sec. 4:

    .. math:: \\|v_l\\| \\le \\gamma\\,\\|w_l\\| \\quad \\text{for every layer } l \\quad (\\text{relative}),
              \\qquad \\|v_l\\| \\le \\gamma \\quad (\\text{absolute}),

    with :math:`\\|\\cdot\\|` the Frobenius (``"l2"``) or max-abs (``"linf"``) norm of the layer's tensor.

    Args:
        gamma: the budget (a fraction of each layer's norm when ``relative``), ``>= 0``.
        relative: budget relative to each layer's norm at the clean weights (default) or absolute.
        norm: ``"l2"`` or ``"linf"``.
        exclude_norm_layers: leave the parameters of normalisation layers (BatchNorm, LayerNorm,
            GroupNorm, ... and any module whose class name ends in ``"Norm"``) unperturbed, as both papers do.
        include_biases: perturb 1-d parameters (biases) too. AWP's reference code skips them (default);
            Stutz et al. perturb biases, so pass ``True`` to follow them.
        trainable_only: only parameters with ``requires_grad`` (frozen layers stay fixed).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from mmrobust.threats import WeightBall, perturbed_weights
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
        >>> ball = WeightBall(0.1)                     # ||v_l|| <= 0.1 ||w_l||, BatchNorm and biases left alone
        >>> sorted(ball.parameters(model))
        ['0.weight', '2.weight']
        >>> v = ball.random(model, torch.Generator().manual_seed(0))
        >>> w = model[0].weight.clone()
        >>> with perturbed_weights(model, v):
        ...     inside = ball.contains(v, model) and not torch.equal(model[0].weight, w)
        >>> inside, torch.equal(model[0].weight, w)    # perturbed inside the block, restored exactly after it
        (True, True)
    """

    def __init__(self, gamma: float, *, relative: bool = True, norm: str = "l2",
                 exclude_norm_layers: bool = True, include_biases: bool = False, trainable_only: bool = True):
        self.gamma = check_finite_nonneg("gamma", gamma)
        self.relative = bool(relative)
        self.norm = check_choice("norm", norm, {"l2", "linf"})
        self.exclude_norm_layers = bool(exclude_norm_layers)
        self.include_biases = bool(include_biases)
        self.trainable_only = bool(trainable_only)

    def __repr__(self) -> str:
        kind = "relative" if self.relative else "absolute"
        return f"WeightBall(gamma={self.gamma:g}, {kind}, norm={self.norm})"

    def with_gamma(self, gamma: float) -> "WeightBall":
        """A copy with another budget."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.gamma = check_finite_nonneg("gamma", gamma)
        return clone

    def scaled(self, factor: float) -> "WeightBall":
        """``factor`` times every layer's radius (``gamma * factor``; the same contract as
        :meth:`mmrobust.threats.ThreatModel.scaled`)."""
        return self.with_gamma(self.gamma * check_finite_nonneg("factor", factor))

    # -- which weights ----------------------------------------------------------------------------
    def parameters(self, model: nn.Module) -> Dict[str, nn.Parameter]:
        """The perturbed parameters of ``model`` by name (order of ``named_parameters``)."""
        excluded = set()
        if self.exclude_norm_layers:
            for module in model.modules():
                if is_norm_layer(module):
                    excluded.update(id(p) for p in module.parameters(recurse=False))
        selected = {}
        for name, p in model.named_parameters():
            if id(p) in excluded or (self.trainable_only and not p.requires_grad):
                continue
            if p.dim() <= 1 and not self.include_biases:
                continue
            if not torch.is_floating_point(p):
                continue
            selected[name] = p
        return selected

    # -- budget -----------------------------------------------------------------------------------
    def _norm(self, t: Tensor) -> Tensor:
        return t.detach().abs().amax() if self.norm == "linf" else t.detach().norm()

    def radius(self, model: nn.Module) -> Dict[str, Tensor]:
        """Per-layer radius (a 0-d tensor each) at the model's *current* weights -- call it at the clean ones."""
        out = {}
        for name, p in self.parameters(model).items():
            if self.relative:
                out[name] = self.gamma * self._norm(p)
            else:
                out[name] = torch.tensor(self.gamma, dtype=p.dtype, device=p.device)
        return out

    def size(self, deltas: Deltas, model: Optional[nn.Module] = None) -> Dict[str, Tensor]:
        """Per-layer size of ``deltas``: ``||v_l|| / ||w_l||`` when relative (needs ``model``), else ``||v_l||``."""
        if not self.relative:
            return {k: self._norm(d) for k, d in deltas.items()}
        if model is None:
            raise ValueError("model is needed to measure a relative weight perturbation")
        params = dict(model.named_parameters())
        return {k: self._norm(d) / self._norm(params[k]).clamp_min(1e-30) for k, d in deltas.items()}

    def contains(self, deltas: Deltas, model: nn.Module, atol: float = 1e-5) -> bool:
        """Whether every layer's perturbation lies in the ball (measured at the model's current weights)."""
        radius = self.radius(model)
        return all(bool(self._norm(d) <= radius[k] * (1 + atol) + 1e-12) for k, d in deltas.items())

    # -- the operations attacks need --------------------------------------------------------------
    def zeros(self, model: nn.Module) -> Deltas:
        """The zero perturbation of every selected parameter."""
        return {k: torch.zeros_like(p, memory_format=torch.preserve_format).detach()
                for k, p in self.parameters(model).items()}

    def random(self, model: nn.Module, generator: Optional[torch.Generator] = None, *,
               on_boundary: bool = False) -> Deltas:
        """A random perturbation, uniform in each layer's ball (or on its sphere with ``on_boundary``).

        L2: Gaussian direction scaled to ``r * U^(1/d)``; L-inf: uniform in the cube.
        """
        radius = self.radius(model)
        out = {}
        for name, p in self.parameters(model).items():
            r = radius[name]
            if self.norm == "l2":
                g = randn(p.shape, generator, p.detach())
                g = g / g.norm().clamp_min(1e-30)
                scale = 1.0 if on_boundary else rand((1,), generator, p.detach()) ** (1.0 / p.numel())
                out[name] = g * scale * r
            else:
                u = 2 * rand(p.shape, generator, p.detach()) - 1
                out[name] = (u.sign() if on_boundary else u) * r
        return out

    def step(self, deltas: Deltas, grads: Deltas, step_size: float, radius: Dict[str, Tensor]) -> Deltas:
        """Steepest ascent per layer, step length ``step_size * radius_l``.

        .. math:: v_l \\leftarrow v_l + \\eta\\, r_l\\, \\frac{\\nabla_{v_l}}{\\|\\nabla_{v_l}\\|_2}
                  \\ (\\text{l2}),\\qquad v_l + \\eta\\, r_l\\, \\mathrm{sign}(\\nabla_{v_l})\\ (\\text{linf})

        (Wu et al. 2020, Eq. 9, where the normalised layer gradient is scaled by :math:`\\|w_l\\|`.)
        """
        out = {}
        for k, d in deltas.items():
            g = grads.get(k)
            if g is None:
                out[k] = d
                continue
            if self.norm == "l2":
                direction = g / g.norm().clamp_min(1e-30)
            else:
                direction = g.sign()
            out[k] = d + step_size * radius[k] * direction
        return out

    def project(self, deltas: Deltas, radius: Dict[str, Tensor]) -> Deltas:
        """Closest point of each layer's ball (exact: scaling for l2, clipping for linf)."""
        out = {}
        for k, d in deltas.items():
            r = radius[k]
            if self.norm == "l2":
                n = d.norm()
                out[k] = d * torch.where(n > r, r / n.clamp_min(1e-30), torch.ones_like(n))
            else:
                out[k] = torch.maximum(torch.minimum(d, r), -r)
        return out


__all__ = ["WeightBall", "perturbed_weights", "apply_deltas", "restore_weights", "is_norm_layer", "NORM_LAYERS"]
