"""Audio budgets measured relative to the signal: signal-to-noise ratio and peak loudness in dB.

Both are norm balls whose radius depends on the clean waveform ``x`` (per unit, i.e. per example),
intersected with the waveform value box ``[-1, 1]`` by default. Attack results report both dB measures
per example (``extras["<input>/snr_db"]`` and ``extras["<input>/db_x"]``) through :meth:`extra_sizes`.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
from torch import Tensor

from .base import check_scale, db_to_ratio
from .norms import L2Ball, LinfBall, l2_norm

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
    """A norm ball whose budget is a level in decibels relative to the signal, held in ``level`` (named
    ``snr_db`` or ``db`` by the subclass). ``sign`` says how the radius follows the level:
    ``radius = reference(x) * 10^(sign * level / 20)``, so scaling the radius by ``f`` moves the level by
    ``sign * 20 log10(f)`` (``f = 0``: a level of ``-sign * inf``, nothing allowed)."""

    db_name = "db"
    sign = 1.0

    def __init__(self, level: float, *, lower: Optional[float] = -1.0, upper: Optional[float] = 1.0):
        super().__init__(None, lower=lower, upper=upper)
        self.level = _check_db(self.db_name, level)
        self._warn_level()

    def _warn_level(self) -> None:
        """Warn about levels that can only be a mistake; subclasses know their usual range."""

    @property
    def eps(self):
        raise AttributeError(f"{type(self).__name__} has no `eps`: its budget is `{self.db_name}`, a level in dB "
                             "(not a radius). Scale its radius with .scaled(f); set another level with "
                             ".with_level(db)")

    def with_eps(self, eps):
        raise TypeError(f"{type(self).__name__} has no radius `eps`; use .with_level({self.db_name}) for another "
                        "level in dB or .scaled(f) for f times the radius")

    def with_level(self, level: float):
        """A copy with another level in dB (budget curves over dB levels)."""
        return self._copy(level=_check_db(self.db_name, level))

    def with_budget(self, budget: float):
        """The level in dB (:meth:`with_level`): budget sweeps over dB levels."""
        return self.with_level(budget)

    @property
    def larger_budget_is_stronger(self) -> bool:
        return self.sign > 0

    @property
    def budget_name(self) -> str:
        direction = "larger = smaller perturbation" if self.sign < 0 else "larger = louder perturbation"
        return f"{self.db_name} (dB, {direction})"

    def scaled(self, factor: float):
        f = check_scale(factor)
        shift = 20 * math.log10(f) if f > 0 else -math.inf
        return self._copy(level=self.level + self.sign * shift)

    def _ratio(self) -> float:
        return db_to_ratio(self.sign * self.level)

    def extra_sizes(self, delta: Tensor, x: Tensor) -> dict[str, Tensor]:
        return {"snr_db": snr_db(delta, x), "db_x": db_x(delta, x)}

    def describe(self) -> str:
        return f"{type(self).__name__}({self.db_name}={self.level:g})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.db_name}={self.level:g}, box=[{self.lower}, {self.upper}])"


class SNRBall(_DecibelBall, L2Ball):
    """Perturbations with a signal-to-noise ratio of at least ``snr_db`` decibels.

    .. math:: \\mathrm{SNR}(x, \\delta) = 20\\log_{10}\\frac{\\|x\\|_2}{\\|\\delta\\|_2} \\ge s
       \\iff \\|\\delta\\|_2 \\le \\|x\\|_2\\, 10^{-s/20}

    i.e. an L2 ball whose per-example radius scales with the example's energy (the SNR budget used for
    audio attacks, e.g. Yakura & Sakuma 2019 and the speech robustness literature). A *larger*
    ``snr_db`` is a *smaller* perturbation. The value box is ``[-1, 1]`` (float waveforms) by default.
    :meth:`with_level` gives another SNR, :meth:`scaled` ``f`` times the radius (``snr_db - 20 log10 f``). Padding (zeros) adds no energy, so the
    budget of a padded waveform equals that of its unpadded version; attacks refuse batches whose padding
    (beyond ``lengths``, or where the padding mask is 0) holds non-zero samples, which would count as signal
    (:meth:`~mmrobust.threats.ThreatModel.check_padding`).

    Example:
        >>> import torch
        >>> from mmrobust.threats import SNRBall
        >>> wave = torch.sin(torch.linspace(0, 100, 1600))[None]  # one clip
        >>> threat = SNRBall(30)
        >>> delta = threat.project(0.5 * torch.randn(1, 1600, generator=torch.Generator().manual_seed(0)), wave)
        >>> snr = 10 * torch.log10(wave.pow(2).sum() / delta.pow(2).sum())
        >>> bool(snr >= 30 - 1e-3)
        True
    """

    db_name = "snr_db"
    sign = -1.0

    def _warn_level(self) -> None:
        s = self.level
        if 0 < s < 1:  # an amplitude ratio ||delta|| / ||x|| given where decibels are expected
            warnings.warn(f"SNRBall(snr_db={s:g}) allows noise almost as loud as the signal; snr_db is in decibels "
                          f"(typical budgets 20-40 dB). If {s:g} is the ratio ||delta|| / ||x||, that is "
                          f"SNRBall({20 * math.log10(1 / s):.1f})", UserWarning, stacklevel=4)
        elif s < -10:
            warnings.warn(f"SNRBall(snr_db={s:g}) allows noise {10 ** (-s / 20):.3g} times louder than the signal; "
                          f"a larger SNR is a smaller perturbation (did you mean SNRBall({-s:g})?)",
                          UserWarning, stacklevel=4)

    def __init__(self, snr_db: float, *, lower: Optional[float] = -1.0, upper: Optional[float] = 1.0):
        super().__init__(snr_db, lower=lower, upper=upper)

    @property
    def snr_db(self) -> float:
        return self.level

    def radius(self, x: Tensor) -> Tensor:
        return l2_norm(_flat(x)) * self._ratio()


class PeakDBBall(_DecibelBall, LinfBall):
    """Perturbations at most ``db`` decibels louder than the signal's peak (Carlini & Wagner 2018).

    Carlini & Wagner, "Audio Adversarial Examples: Targeted Attacks on Speech-to-Text",
    https://arxiv.org/abs/1801.01944, Sec. 3.3 measure loudness as
    :math:`\\mathrm{dB}_x(\\delta) = \\mathrm{dB}(\\delta) - \\mathrm{dB}(x)` with
    :math:`\\mathrm{dB}(v) = 20\\log_{10}\\max_i|v_i|`; the constraint :math:`\\mathrm{dB}_x(\\delta) \\le d`
    is the L-inf ball

    .. math:: \\|\\delta\\|_\\infty \\le \\max_i|x_i|\\; 10^{d/20}.

    ``db`` is usually negative (C&W report -31 dB on average). The value box is ``[-1, 1]`` by default.
    :meth:`with_level` gives another level, :meth:`scaled` ``f`` times the radius (``db + 20 log10 f``).

    Example:
        >>> import torch
        >>> from mmrobust.threats import PeakDBBall
        >>> threat = PeakDBBall(-20)                                   # 20 dB below the peak: 0.1 x max|x|
        >>> x = torch.tensor([[0.5, -0.2, 0.1, 0.0]])
        >>> threat.radius(x), threat.project(torch.full((1, 4), 0.3), x)
        (tensor([0.0500]), tensor([[0.0500, 0.0500, 0.0500, 0.0500]]))
    """

    db_name = "db"

    def _warn_level(self) -> None:
        if self.level > 0:
            warnings.warn(f"PeakDBBall(db={self.level:g}) allows perturbations louder than the signal's peak; the "
                          f"level is usually negative (Carlini & Wagner: -31 dB; did you mean PeakDBBall({-self.level:g})?)",
                          UserWarning, stacklevel=4)

    def __init__(self, db: float, *, lower: Optional[float] = -1.0, upper: Optional[float] = 1.0):
        super().__init__(db, lower=lower, upper=upper)

    @property
    def db(self) -> float:
        return self.level

    def radius(self, x: Tensor) -> Tensor:
        return _flat(x).abs().amax(1) * self._ratio()
