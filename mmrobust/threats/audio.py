"""Audio budgets measured relative to the signal: signal-to-noise ratio and peak loudness in dB.

Both are norm balls whose radius depends on the clean waveform ``x`` (per unit, i.e. per example),
intersected with the waveform value box ``[-1, 1]`` by default. Attack results report both dB measures
per example (``extras["<input>/snr_db"]`` and ``extras["<input>/db_x"]``) through :meth:`extra_sizes`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .base import db_to_ratio
from .norms import L2Ball, LinfBall

_TINY = 1e-12


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def _check_db(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number of decibels, got {type(value).__name__} ({value!r})")
    v = float(value)
    if math.isnan(v) or math.isinf(v):
        raise ValueError(f"{name} must be a finite number of decibels, got {value!r}")
    return v


def snr_db(delta: Tensor, x: Tensor) -> Tensor:
    """Per-unit signal-to-noise ratio ``20 log10(||x||_2 / ||delta||_2)`` in dB (``inf`` for ``delta = 0``)."""
    num = _flat(x).norm(dim=1)
    den = _flat(delta).norm(dim=1)
    return 20 * torch.log10(num.clamp_min(_TINY)) - 20 * torch.log10(den.clamp_min(0))


def db_x(delta: Tensor, x: Tensor) -> Tensor:
    """Per-unit loudness of ``delta`` relative to ``x`` (Carlini & Wagner 2018, Sec. 3.3).

    .. math:: \\mathrm{dB}_x(\\delta) = 20\\log_{10}\\max_i|\\delta_i| - 20\\log_{10}\\max_i|x_i|

    (``-inf`` for ``delta = 0``).
    """
    return 20 * torch.log10(_flat(delta).abs().amax(1)) - 20 * torch.log10(_flat(x).abs().amax(1).clamp_min(_TINY))


class _DecibelBall:
    """A norm ball whose budget is a level in decibels relative to the signal, held in ``eps`` (so
    :meth:`with_eps` sweeps levels); subclasses name the level (``db_name``) and turn it into a radius."""

    db_name = "db"

    def __init__(self, level: float, *, lower: Optional[float] = -1.0, upper: Optional[float] = 1.0):
        super().__init__(0.0, lower=lower, upper=upper)
        self.eps = _check_db(self.db_name, level)

    def with_eps(self, eps: float):
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.eps = _check_db(self.db_name, eps)
        return clone

    def extra_sizes(self, delta: Tensor, x: Tensor) -> dict[str, Tensor]:
        return {"snr_db": snr_db(delta, x), "db_x": db_x(delta, x)}

    def describe(self) -> str:
        return f"{type(self).__name__}({self.db_name}={self.eps:g})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.db_name}={self.eps:g}, box=[{self.lower}, {self.upper}])"


class SNRBall(_DecibelBall, L2Ball):
    """Perturbations with a signal-to-noise ratio of at least ``snr_db`` decibels.

    .. math:: \\mathrm{SNR}(x, \\delta) = 20\\log_{10}\\frac{\\|x\\|_2}{\\|\\delta\\|_2} \\ge s
       \\iff \\|\\delta\\|_2 \\le \\|x\\|_2\\, 10^{-s/20}

    i.e. an L2 ball whose per-example radius scales with the example's energy (the SNR budget used for
    audio attacks, e.g. Yakura & Sakuma 2019 and the speech robustness literature). A *larger*
    ``snr_db`` is a *smaller* perturbation. The value box is ``[-1, 1]`` (float waveforms) by default.
    ``eps`` holds ``snr_db`` so that :meth:`with_eps` sweeps SNRs. Padding (zeros) adds no energy, so the
    budget of a padded waveform equals that of its unpadded version.
    """

    db_name = "snr_db"

    def __init__(self, snr_db: float, *, lower: Optional[float] = -1.0, upper: Optional[float] = 1.0):
        super().__init__(snr_db, lower=lower, upper=upper)

    @property
    def snr_db(self) -> float:
        return self.eps

    def radius(self, x: Tensor) -> Tensor:
        return _flat(x).norm(dim=1) * db_to_ratio(-self.eps)


class PeakDBBall(_DecibelBall, LinfBall):
    """Perturbations at most ``db`` decibels louder than the signal's peak (Carlini & Wagner 2018).

    Carlini & Wagner, "Audio Adversarial Examples: Targeted Attacks on Speech-to-Text",
    https://arxiv.org/abs/1801.01944, Sec. 3.3 measure loudness as
    :math:`\\mathrm{dB}_x(\\delta) = \\mathrm{dB}(\\delta) - \\mathrm{dB}(x)` with
    :math:`\\mathrm{dB}(v) = 20\\log_{10}\\max_i|v_i|`; the constraint :math:`\\mathrm{dB}_x(\\delta) \\le d`
    is the L-inf ball

    .. math:: \\|\\delta\\|_\\infty \\le \\max_i|x_i|\\; 10^{d/20}.

    ``db`` is usually negative (C&W report -31 dB on average). The value box is ``[-1, 1]`` by default.
    ``eps`` holds ``db`` so that :meth:`with_eps` sweeps loudness levels.
    """

    db_name = "db"

    def __init__(self, db: float, *, lower: Optional[float] = -1.0, upper: Optional[float] = 1.0):
        super().__init__(db, lower=lower, upper=upper)

    @property
    def db(self) -> float:
        return self.eps

    def radius(self, x: Tensor) -> Tensor:
        return _flat(x).abs().amax(1) * db_to_ratio(self.eps)
