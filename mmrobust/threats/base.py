"""The threat-model interface every attack is written against.

A threat model is the set an adversary may choose a perturbation ``delta`` from, relative to a clean
tensor ``x`` whose leading dimension indexes *units* (examples for images and audio, graphs for
graph batches).  Everything is per unit: budgets, projections and measured sizes.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from typing import Optional

import torch
from torch import Tensor

from ..errors import check_finite_nonneg


_BOX_ADVICE = (
    "If the data is normalised in the dataloader ((x - mean) / std), either normalise inside the model "
    "(nn.Sequential(mmrobust.image.InputNormalization(mean, std, channels), net), data and eps in pixel units) "
    "or convert eps and box with mmrobust.image.normalized_threat(threat, mean, std). Changing only the box "
    "leaves eps in normalised units: a weaker attack than it says. Otherwise rescale the input into the box")


def per_unit(t: Tensor, like: Tensor) -> Tensor:
    """Reshape a ``(units,)`` tensor so it broadcasts against ``like`` of shape ``(units, ...)``."""
    return t.reshape(-1, *([1] * (like.dim() - 1)))


class ThreatModel(ABC):
    """A set of admissible perturbations around an input.

    Subclasses implement the four operations first-order attacks need:

    * :meth:`random_init` -- a random point inside the set,
    * :meth:`step` -- a steepest-ascent step for the set's norm,
    * :meth:`project` -- the Euclidean projection back onto the set (intersected with the value box),
    * :meth:`size` -- the per-unit size of a perturbation in the set's own measure.

    ``radius(x)`` gives the per-unit budget in the set's norm; for the plain balls it is the constant
    ``eps``, for audio budgets in dB it depends on the signal.

    **The budget contract.** A budget is scaled only by its threat model: :meth:`scaled` returns the set
    whose radius (or flip count) is ``f`` times this one's, ``scaled(f).radius(x) == f * radius(x)``, for
    every threat model -- a level in dB, a count and a fraction of edges each scale their own way. Code
    outside :mod:`mmrobust.threats` never does arithmetic on ``eps`` (which only norm balls have).

    Example:
        >>> import torch
        >>> from mmrobust.threats import LinfBall
        >>> threat = LinfBall(0.1, lower=0, upper=1)              # every threat model answers the same questions
        >>> x = torch.rand(3, 1, 2, 2)
        >>> delta = threat.random_init(x, torch.Generator().manual_seed(0))
        >>> bool((threat.size(delta, x) <= threat.radius(x)).all()), threat.scaled(0.5).radius(x)[0]
        (True, tensor(0.0500))
    """

    #: Name of the norm the set is a ball of (``"linf"``, ``"l2"``, ``"l1"``, or something custom).
    norm: str = "custom"

    def __init__(self, eps: Optional[float], *, lower: Optional[float] = None, upper: Optional[float] = None):
        if lower is not None and upper is not None and not lower < upper:
            raise ValueError(f"value box needs lower < upper, got lower={lower}, upper={upper}")
        if eps is not None:  # threat models whose budget is not a radius (dB levels, edge counts) pass None
            self.eps = check_finite_nonneg("eps", eps)
        self.lower = lower
        self.upper = upper

    # -- budget -----------------------------------------------------------------------------------
    def radius(self, x: Tensor) -> Tensor:
        """Per-unit radius of the ball around ``x`` (shape ``(units,)``)."""
        return torch.full((x.shape[0],), self.eps, dtype=x.dtype, device=x.device)

    def subset(self, units: Tensor) -> "ThreatModel":
        """The threat model for a subset of the units (attacks shrink batches to units still robust).

        Stateless threat models return themselves; those holding per-unit state (e.g. one radius per
        unit) return a copy restricted to ``units``.
        """
        return self

    def with_eps(self, eps: float) -> "ThreatModel":
        """A copy of this norm ball with another radius ``eps`` (budget curves over absolute radii).

        Threat models whose budget is not a radius (dB levels, edge counts) refuse it; use :meth:`scaled`,
        which every threat model supports.
        """
        return self._copy(eps=check_finite_nonneg("eps", eps))

    def with_budget(self, budget: float) -> "ThreatModel":
        """A copy at an absolute budget in this threat model's own unit (budget sweeps,
        :func:`mmrobust.sweep`): the radius ``eps`` of a norm ball, the level in dB of
        :class:`~mmrobust.threats.SNRBall`/:class:`~mmrobust.threats.PeakDBBall`, a count (``int``) or a
        fraction (``float``) of edges for :class:`~mmrobust.threats.EdgeFlips`. :attr:`budget_name` says which."""
        return self.with_eps(budget)

    #: whether a larger :meth:`with_budget` value allows larger perturbations (``False`` for an SNR in dB)
    larger_budget_is_stronger: bool = True

    @property
    def budget_name(self) -> str:
        """What :meth:`with_budget` takes, for tables and axis labels (e.g. ``"eps (linf)"``)."""
        return f"eps ({self.norm})"

    def scaled(self, factor: float) -> "ThreatModel":
        """The same threat model with ``factor`` times the radius: ``scaled(f).radius(x) == f * radius(x)``.

        ``f = 1`` is the same set, ``f = 0`` allows only ``delta = 0``, and counts (edge flips, bit flips)
        become ``floor(f * count)``. Warm-ups, per-unit radii and sweeps use this instead of multiplying
        a budget that may be a dB level, a count or a fraction. Subclasses whose budget is not the radius
        ``eps`` override it.
        """
        return self._copy(eps=self.eps * check_scale(factor))

    def _copy(self, **changes) -> "ThreatModel":
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.__dict__.update(changes)
        return clone

    # -- value box --------------------------------------------------------------------------------
    def box(self, x: Tensor) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """Bounds on ``delta`` implied by the value box: ``lower - x <= delta <= upper - x``."""
        lo = None if self.lower is None else (self.lower - x)
        hi = None if self.upper is None else (self.upper - x)
        return lo, hi

    def clamp_box(self, delta: Tensor, x: Tensor) -> Tensor:
        """``delta`` with ``x + delta`` clamped into the value box; entries the box does not move keep their
        exact value (``(x + delta) - x`` would round small perturbations, up to 1e-2 relative in float32)."""
        if self.lower is None and self.upper is None:
            return delta
        moved = x + delta
        clamped = moved.clamp(self.lower, self.upper)
        return torch.where(clamped == moved, delta, clamped - x)

    def check_input(self, x: Tensor, name: str = "x") -> None:
        """Refuse inputs that cannot be attacked under this threat model."""
        if not torch.is_floating_point(x):
            raise TypeError(f"{name} must be a floating-point tensor to be perturbed, got dtype {x.dtype}")
        if x.dtype in (torch.float16, torch.bfloat16):
            # rounding x + delta to 8-11 mantissa bits leaves the budget (eps=0.1 becomes 0.1016 in bf16) and
            # coarse gradients weaken the attack, so robust accuracy would be overstated
            raise TypeError(f"{name} has dtype {x.dtype}; attacks need float32 or float64 inputs to stay inside "
                            "the budget. Use mixed precision (torch.autocast, Trainer(precision='bf16-mixed' or "
                            "'16-mixed')) instead of half-precision inputs and weights ('bf16-true'/'16-true'), or "
                            "evaluate a float32 copy: model.float(), x.float()")
        eps = self.__dict__.get("eps")
        if eps is not None and eps > torch.finfo(x.dtype).max:
            raise ValueError(f"eps={eps:g} of {type(self).__name__} is larger than the largest {x.dtype} value "
                             f"({torch.finfo(x.dtype).max:.3g}); give the threat model a value box (lower/upper) and an "
                             "eps within it, or attack float64 inputs")
        if x.dim() < 1 or x.shape[0] == 0:
            raise ValueError(f"{name} must have a non-empty leading (batch) dimension, got shape {tuple(x.shape)}")
        tol = 1e-6
        if x.dim() == 4 and self.lower is None and self.upper is None and self.norm in ("linf", "l2", "l1"):
            warnings.warn(f"{type(self).__name__} has no value box, but {name} looks like a batch of images (4-d): "
                          "adversarial images may leave the valid pixel range, which overstates the attack. Pass "
                          "lower=0, upper=1 for images in [0, 1] (or the normalised range)", UserWarning, stacklevel=4)
        if self.lower is not None and bool((x < self.lower - tol).any()):
            raise ValueError(f"{name} has values below the threat model's lower bound {self.lower} "
                             f"(min {x.min().item():.4g}). {_BOX_ADVICE}")
        if self.upper is not None and bool((x > self.upper + tol).any()):
            raise ValueError(f"{name} has values above the threat model's upper bound {self.upper} "
                             f"(max {x.max().item():.4g}). {_BOX_ADVICE}")

    def check_padding(self, x: Tensor, mask: Tensor, name: str = "x") -> None:
        """Refuse non-zero padding where it would change the budget.

        ``mask`` is the adapter's padding mask (0 = padding, e.g. beyond an audio batch's ``lengths``); the
        padding is never perturbed, but a budget measured relative to the signal (``SNRBall``,
        ``PeakDBBall``, ``PsychoacousticBall``) reads the whole tensor, so non-zero padding (a DC offset, a
        noise floor, repeated audio) would count as signal and allow a louder perturbation than the
        budget says. Zero padding, and budgets that do not read the signal, pass.
        """
        pad = mask == 0
        if not bool((x.detach() * pad).ne(0).any()):
            return
        with torch.no_grad():
            full, valid = self.radius(x.detach()), self.radius(x.detach() * mask)
        if torch.equal(full, valid):
            return
        u = int((full != valid).nonzero()[0])
        peak = float((x.detach() * pad).abs().max())
        raise ValueError(f"{name} holds non-zero samples in its padding (where the batch's lengths or padding "
                         f"mask say 0; max |{name}| there {peak:.3g}), and {self.describe()} measures its budget "
                         f"on the whole tensor: unit {u} would get the radius {float(full[u]):.4g} instead of "
                         f"{float(valid[u]):.4g} from its valid samples alone. Zero the padding ({name} * mask, as "
                         "mmrobust's datamodules do) or attack the clips unpadded")

    # -- the four operations ----------------------------------------------------------------------
    @abstractmethod
    def random_init(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """A random perturbation inside the set (and inside the value box)."""

    @abstractmethod
    def step(self, delta: Tensor, grad: Tensor, step_size: Tensor) -> Tensor:
        """Steepest-ascent step of length ``step_size`` (per unit, in the set's norm)."""

    @abstractmethod
    def project(self, delta: Tensor, x: Tensor, radius: Optional[Tensor] = None) -> Tensor:
        """Closest point of the set (radius ``radius`` or :meth:`radius`) intersected with the box."""

    @abstractmethod
    def size(self, delta: Tensor, x: Tensor) -> Tensor:
        """Per-unit size of ``delta`` in the set's measure (shape ``(units,)``)."""

    def extra_sizes(self, delta: Tensor, x: Tensor) -> dict[str, Tensor]:
        """Further per-unit size measures for reports (e.g. ``{"snr_db": ...}`` for audio); none by default."""
        return {}

    # -- conveniences -----------------------------------------------------------------------------
    def contains(self, delta: Tensor, x: Tensor, atol: float = 1e-5) -> Tensor:
        """Per-unit boolean: ``delta`` lies in the set and ``x + delta`` in the value box."""
        inside = self.size(delta, x) <= self.radius(x) * (1 + atol) + atol
        adv = (x + delta).flatten(1)
        if self.lower is not None:
            inside &= (adv >= self.lower - atol).all(1)
        if self.upper is not None:
            inside &= (adv <= self.upper + atol).all(1)
        return inside

    def describe(self) -> str:
        """A short human-readable description for reports."""
        return f"{type(self).__name__}(eps={self.eps:g})"

    def __repr__(self) -> str:
        box = "" if self.lower is None and self.upper is None else f", box=[{self.lower}, {self.upper}]"
        return f"{type(self).__name__}(eps={self.eps:g}{box})"


def check_scale(factor) -> float:
    """A budget scale factor: a finite number ``>= 0``."""
    return check_finite_nonneg("factor", factor)


def db_to_ratio(db: float) -> float:
    """Amplitude ratio ``10^(db / 20)``."""
    return math.pow(10.0, db / 20.0)
