"""Imperceptible audio budgets: the perturbation's spectrum kept under the clean signal's masking threshold.

Qin, Carlini, Goodfellow, Cottrell & Raffel, "Imperceptible, Robust, and Targeted Adversarial Examples for
Automatic Speech Recognition", ICML 2019, https://arxiv.org/abs/1903.10346, Sec. 3 (frequency masking with
the MPEG-1 psychoacoustic model 1, as in their reference code ``generate_masking_threshold.py``):

1. **Normalised PSD** of every STFT frame (Hann window of ``n_fft`` samples, hop ``n_fft / 4``):
   :math:`p_x(k) = 10\\log_{10}|\\tfrac{1}{N}s_x(k)|^2` with :math:`s_x = \\sqrt{8/3}\\,\\mathrm{STFT}(x)`, shifted
   so that the loudest bin of the utterance sits at 96 dB: :math:`\\bar p_x(k) = 96 - \\max p_x + p_x(k)`.
2. **Maskers**: local maxima of :math:`\\bar p_x` over frequency, smoothed over their two neighbours,
   :math:`P_{TM}(k) = 10\\log_{10}(10^{\\bar p_x(k-1)/10} + 10^{\\bar p_x(k)/10} + 10^{\\bar p_x(k+1)/10})`;
   kept if above the absolute threshold of hearing ATH (Terhardt's formula, offset by -12 dB as in the
   reference code) and the strongest masker within 0.5 Bark.
3. **Individual thresholds** on the Bark scale :math:`z(f) = 13\\arctan(0.00076f) + 3.5\\arctan((f/7500)^2)`:
   :math:`T_j(i) = P_{TM}(j) - 6.025 - 0.275\\,z_j + SF(z_i - z_j)` with the two-slope spreading function
   :math:`SF(\\Delta z) = 27\\Delta z` for :math:`\\Delta z \\le 0` and
   :math:`(-27 + 0.37\\max(P_{TM}(j) - 40, 0))\\Delta z` above.
4. **Global threshold** :math:`\\theta_x(i) = 10^{ATH(i)/10} + \\sum_j 10^{T_j(i)/10}` (power, in the
   normalised units), per frame.

The perturbation is measured in the *same* normalisation as ``x`` (the reference code's
``10^{9.6} / max psd_x`` factor): :math:`\\bar p_\\delta(k) = 96 - \\max p_x + p_\\delta(k)`, and it is masked
where :math:`\\bar p_\\delta \\le \\theta_x`. Qin et al. penalise :math:`\\max(\\bar p_\\delta - \\theta_x, 0)`;
:class:`PsychoacousticBall` makes it a constraint instead (every bin of every frame under the threshold,
``margin_db`` above or below it), which projected-gradient attacks can use unchanged.

Two deliberate differences from the reference code, both making the constraint hold for *every* sample:
frames are centred with zero padding (``torch.stft(center=True)``; the reference's ``center=False``
leaves the first sample and the tail after the last full frame outside every frame), and the 0.5-Bark
decimation keeps a masker only if no masker within 0.5 Bark is stronger (the MPEG-1 rule; the reference
compares neighbours pairwise in one pass). Below 1 Bark, where there is no threshold in quiet, the threshold
is floored at the quietest audible level (else a frame without maskers would allow no perturbation there).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ..errors import check_int, check_positive
from ..utils import rand
from .audio import _DecibelBall, _flat
from .base import ThreatModel
from .norms import l2_norm

_PSD_FLOOR = 1e-20  # reference code: 10 log10(z^2 + 1e-20)
# A point within _SLACK (relative amplitude, 9e-4 dB) of its bound counts as inside and is left alone;
# projected points are scaled to _TARGET of it, so rounding them to float32 keeps them inside.
_SLACK, _TARGET = 1e-4, 1 - 1e-5


def bark(f: Tensor) -> Tensor:
    """Bark scale of frequencies ``f`` in Hz (Zwicker & Terhardt 1980, as in Qin et al. 2019)."""
    return 13 * torch.atan(0.00076 * f) + 3.5 * torch.atan((f / 7500.0) ** 2)


def quiet_threshold(f: Tensor) -> Tensor:
    """Absolute threshold of hearing in dB (Terhardt 1979) less 12 dB, as in Qin et al.'s code; ``-inf``
    below 1 Bark (no threshold in quiet there, only maskers)."""
    khz = (f / 1000.0).clamp_min(1e-6)
    ath = 3.64 * khz ** -0.8 - 6.5 * torch.exp(-0.6 * (khz - 3.3) ** 2) + 1e-3 * khz ** 4 - 12
    return torch.where(bark(f) > 1, ath, torch.full_like(ath, -math.inf))


def _stft(wave: Tensor, n_fft: int, hop: int) -> Tensor:
    """``(R, T)`` -> complex ``(R, n_fft // 2 + 1, frames)``, Hann window, centred frames, zero padding."""
    window = torch.hann_window(n_fft, periodic=True, dtype=wave.dtype, device=wave.device)
    return torch.stft(wave, n_fft, hop_length=hop, win_length=n_fft, window=window, center=True,
                      pad_mode="constant", return_complex=True)


def _istft(spec: Tensor, n_fft: int, hop: int, length: int, dtype) -> Tensor:
    window = torch.hann_window(n_fft, periodic=True, dtype=dtype, device=spec.device)
    return torch.istft(spec, n_fft, hop_length=hop, win_length=n_fft, window=window, center=True, length=length)


def _global_threshold(psd_db: Tensor, freqs: Tensor, chunk: int = 256) -> Tensor:
    """Steps 2-4 of the module docstring for ``(R, K)`` normalised PSD rows in dB; ``(R, K)`` power."""
    z = bark(freqs)
    ath = quiet_threshold(freqs)
    ath_power = torch.pow(10.0, ath / 10)  # 0 where ath = -inf
    out = []
    for rows in psd_db.split(chunk):
        r, k = rows.shape
        peak = torch.zeros_like(rows, dtype=torch.bool)
        peak[:, 1:-1] = (rows[:, 1:-1] > rows[:, :-2]) & (rows[:, 1:-1] > rows[:, 2:])
        power = torch.pow(10.0, rows / 10)
        smooth = torch.full_like(rows, -math.inf)
        smooth[:, 1:-1] = 10 * torch.log10(power[:, :-2] + power[:, 1:-1] + power[:, 2:])
        cand = peak & (smooth > ath)
        # strongest within 0.5 Bark: compare the candidates of each row pairwise
        idx, valid = _compact(cand)
        zc, pc = z[idx], torch.where(valid, smooth.gather(1, idx), torch.full_like(idx, -math.inf, dtype=rows.dtype))
        near = ((zc[:, :, None] - zc[:, None, :]).abs() < 0.5) & valid[:, None, :]
        order = torch.arange(idx.shape[1], device=rows.device)
        beaten = (pc[:, None, :] > pc[:, :, None]) | ((pc[:, None, :] == pc[:, :, None]) & (order[None, None, :] < order[None, :, None]))
        keep = valid & ~(near & beaten & (order[None, :, None] != order[None, None, :])).any(2)
        kept_pos, kept_valid = _compact(keep)
        j = idx.gather(1, kept_pos)
        zj, pj = z[j], smooth.gather(1, j)
        dz = z[None, :, None] - zj[:, None, :]  # (rows, maskee, masker)
        upper = -27 + 0.37 * (pj - 40).clamp_min(0)
        sf = torch.where(dz <= 0, 27 * dz, upper[:, None, :] * dz)
        t = pj[:, None, :] - 6.025 - 0.275 * zj[:, None, :] + sf
        contrib = torch.where(kept_valid[:, None, :], torch.pow(10.0, t / 10), torch.zeros((), dtype=rows.dtype, device=rows.device))
        out.append(contrib.sum(2) + ath_power[None, :])
    # below 1 Bark there is no threshold in quiet; a frame without maskers would get a zero bound there
    # (no perturbation at all, and division by zero): floor at the quietest audible level anywhere
    return torch.cat(out).clamp_min(float(ath_power[ath_power > 0].min()))


def _compact(mask: Tensor) -> Tuple[Tensor, Tensor]:
    """Column indices of the True entries of each row of ``mask``, left-aligned and padded (with 0) to the
    largest count; and which of them are real."""
    count = mask.sum(1)
    width = max(int(count.max()) if count.numel() else 0, 1)
    idx = torch.sort(mask.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :width]
    valid = torch.arange(width, device=mask.device)[None, :] < count[:, None]
    return torch.where(valid, idx, torch.zeros_like(idx)), valid


class MaskingThreshold:
    """The clean signal's masking threshold as an amplitude bound on each STFT coefficient of a perturbation.

    ``bound`` (shape ``(B * C, n_fft // 2 + 1, frames)``): the largest :math:`|\\mathrm{STFT}(\\delta)|` that keeps
    :math:`\\bar p_\\delta \\le \\theta_x` in that bin; ``theta_db`` is :math:`10\\log_{10}\\theta_x` and
    ``psd_db`` :math:`\\bar p_x` (both in the normalised dB of the module docstring).
    """

    def __init__(self, x: Tensor, sample_rate: int, n_fft: int, hop_length: int):
        self.shape, self.n_fft, self.hop = tuple(x.shape), n_fft, hop_length
        rows = x.detach().reshape(-1, x.shape[-1]).double()
        spec = _stft(rows, n_fft, hop_length)
        p = (8.0 / 3.0) * (spec.abs() / n_fft) ** 2
        p_db = 10 * torch.log10(p + _PSD_FLOOR)
        self.frame_energy = spec.abs().pow(2).sum(1)  # (rows, frames); 0 where x is silent
        self.offset_db = 96 - p_db.amax((1, 2), keepdim=True)  # per row (channel of an example)
        self.psd_db = p_db + self.offset_db
        freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64, device=x.device)
        r, k, m = self.psd_db.shape
        theta = _global_threshold(self.psd_db.transpose(1, 2).reshape(r * m, k), freqs)
        self.theta_db = (10 * torch.log10(theta)).reshape(r, m, k).transpose(1, 2)
        # pbar_delta = (8/3) |S/N|^2 10^(offset/10) <= theta  <=>  |S| <= N sqrt(3/8 theta 10^(-offset/10))
        self.bound = n_fft * torch.sqrt(0.375 * theta.reshape(r, m, k).transpose(1, 2) * torch.pow(10.0, -self.offset_db / 10))

    def ratio(self, delta: Tensor) -> Tensor:
        """``|STFT(delta)| / bound`` per row, bin and frame (float64)."""
        spec = _stft(delta.reshape(-1, delta.shape[-1]).double(), self.n_fft, self.hop)
        return spec.abs() / self.bound

    def penalty(self, delta: Tensor) -> Tensor:
        """Qin et al.'s imperceptibility loss per example, differentiable in ``delta``: the mean over bins and
        frames of :math:`\\max(\\bar p_\\delta - \\theta_x, 0)`, in power as in their code (the paper writes it
        in dB); channels are summed."""
        spec = _stft(delta.reshape(-1, delta.shape[-1]).double(), self.n_fft, self.hop)
        power = (8.0 / 3.0) * (spec.abs() / self.n_fft) ** 2 * torch.pow(10.0, self.offset_db / 10)
        excess = (power - torch.pow(10.0, self.theta_db / 10)).clamp_min(0).mean((1, 2))
        return excess.reshape(delta.shape[0], -1).sum(1).to(delta.dtype)

    def psd_db_of(self, delta: Tensor) -> Tensor:
        """:math:`\\bar p_\\delta` in dB, normalised like ``x``."""
        spec = _stft(delta.reshape(-1, delta.shape[-1]).double(), self.n_fft, self.hop)
        return 10 * torch.log10((8.0 / 3.0) * (spec.abs() / self.n_fft) ** 2 + _PSD_FLOOR) + self.offset_db


def default_n_fft(sample_rate: int) -> int:
    """Qin et al.'s 2048-sample (128 ms at 16 kHz) window at another rate, rounded to a power of two."""
    return 2 ** max(4, round(math.log2(0.128 * sample_rate)))


def masking_threshold(x: Tensor, sample_rate: int, n_fft: Optional[int] = None,
                      hop_length: Optional[int] = None) -> MaskingThreshold:
    """The masking threshold of waveforms ``x`` (``(B, T)`` or ``(B, C, T)``); see the module docstring."""
    n_fft = default_n_fft(sample_rate) if n_fft is None else check_int("n_fft", n_fft, 16)
    hop = n_fft // 4 if hop_length is None else check_int("hop_length", hop_length, 1)
    return MaskingThreshold(x, int(sample_rate), n_fft, hop)


def masking_report(delta: Tensor, x: Tensor, sample_rate: int, n_fft: Optional[int] = None,
                   hop_length: Optional[int] = None, threshold: Optional[MaskingThreshold] = None,
                   tol_db: float = 1e-3) -> Dict[str, Tensor]:
    """Per example: ``frames_above`` (STFT frames with some bin of ``delta`` above ``x``'s masking threshold),
    ``frames`` (frames in which ``x`` or ``delta`` is non-silent, i.e. counted at all) and ``excess_db`` (the
    largest :math:`\\bar p_\\delta - \\theta_x` over bins and frames; <= 0: inaudible everywhere). A frame is above
    when it exceeds the threshold by more than ``tol_db`` (float rounding of a perturbation projected exactly
    onto the threshold). Works for any perturbation, so SNR- and dB-bounded attacks are measured the same way."""
    mt = threshold if threshold is not None else masking_threshold(x, sample_rate, n_fft, hop_length)
    excess = mt.psd_db_of(delta) - mt.theta_db  # (rows, K, M)
    b = x.shape[0]
    per_frame = excess.amax(1).reshape(b, -1)  # (B, C * M)
    active = (mt.frame_energy > 0).reshape(b, -1) | (_stft_energy(delta, mt) > 0).reshape(b, -1)
    return {"frames_above": ((per_frame > tol_db) & active).sum(1), "frames": active.sum(1),
            "excess_db": per_frame.amax(1).to(x.dtype)}


def _stft_energy(delta: Tensor, mt: MaskingThreshold) -> Tensor:
    spec = _stft(delta.reshape(-1, delta.shape[-1]).double(), mt.n_fft, mt.hop)
    return spec.abs().pow(2).sum(1)


class PsychoacousticBall(_DecibelBall, ThreatModel):
    """Perturbations whose power spectrum stays ``margin_db`` decibels relative to the clean signal's frequency
    masking threshold in every bin of every frame (Qin et al. 2019; see the module docstring).

    .. math:: \\Delta(x) = \\{\\delta : \\bar p_\\delta(k, m) \\le \\theta_x(k, m)\\,10^{\\mathrm{margin}/10}\\
       \\forall k, m\\} \\cap \\{-1 \\le x + \\delta \\le 1\\}

    ``margin_db = 0`` is the threshold itself; negative margins are stricter. As a norm ball: with
    :math:`b_x(k, m)` the largest admissible :math:`|\\mathrm{STFT}(\\delta)(k, m)|` at margin 0, the norm is
    :math:`\\|\\delta\\|_x = R_x \\max_{k,m} |\\mathrm{STFT}(\\delta)(k,m)| / b_x(k,m)` (a weighted L-inf norm of the STFT
    coefficients) and the radius :math:`R_x 10^{\\mathrm{margin}/20}`, where the scale :math:`R_x` is the L2 norm a
    perturbation would have whose every coefficient sat at the threshold (Parseval for the Hann/hop-N/4
    tight frame). :meth:`size` and :meth:`radius` are in these waveform-L2 units, so attacks' step sizes
    (fractions of the radius) keep their meaning; :meth:`scaled` ``f`` moves the margin by ``20 log10 f``.

    * :meth:`step`: normalised gradient (the L2 steepest ascent; the set's own geometry needs ``x``, which
      ``step`` does not see), shaped back onto the threshold by :meth:`project`.
    * :meth:`project`: no closed form exists, since overlapping frames share samples. It alternates
      clipping each STFT coefficient to its bound and resynthesising (``torch.istft``, the least-squares
      inverse; samples where ``delta`` is 0, such as masked padding, stay 0) ``iterations`` times, clips
      to the value box, then scales the whole perturbation down until every coefficient is within bound:
      a point of the set near ``delta`` (inside up to float rounding, which :meth:`contains` tolerates),
      not the Euclidean nearest point. The set is thin: the threshold has deep valleys between harmonics
      and frames, so perturbations that do not follow the signal's own spectral shape (a gradient step)
      are cut to a few percent of :math:`R_x` or less, and PGD in this ball is a weak attack. Qin et al.
      penalise the excess instead (:class:`~mmrobust.attacks.MaskingPenaltyAttack`).

    The threshold of the last few inputs is cached (compared by value), since attacks project every step.
    :meth:`extra_sizes` reports ``snr_db``, ``db_x``, ``frames_above`` (frames with some bin above the
    threshold at margin 0) and ``excess_db``. Channels ``(B, C, T)`` each get their own threshold.

    Args:
        margin_db: level relative to the masking threshold (dB); 0 is Qin et al.'s imperceptibility bound.
        sample_rate: of the waveforms (Hz).
        n_fft, hop_length: analysis window (default: 128 ms as in Qin et al., a power of two; hop a quarter).
        iterations: clip-and-resynthesise rounds in :meth:`project`.

    Example:
        >>> import math, torch
        >>> from mmrobust.threats import PsychoacousticBall
        >>> wave = 0.5 * torch.sin(2 * math.pi * 440 * torch.arange(4000) / 8000)[None]   # 0.5 s of a 440 Hz tone
        >>> threat = PsychoacousticBall(0.0, sample_rate=8000)          # at the masking threshold itself
        >>> noise = 0.01 * torch.randn(1, 4000, generator=torch.Generator().manual_seed(0))
        >>> delta = threat.project(noise, wave)
        >>> bool(threat.contains(delta, wave)), threat.extra_sizes(delta, wave)["frames_above"]
        (True, tensor([0]))
    """

    db_name = "margin_db"
    sign = 1.0
    norm = "psychoacoustic"

    def __init__(self, margin_db: float = 0.0, *, sample_rate: int, n_fft: Optional[int] = None,
                 hop_length: Optional[int] = None, iterations: int = 5, lower: Optional[float] = -1.0,
                 upper: Optional[float] = 1.0):
        super().__init__(margin_db, lower=lower, upper=upper)
        self.sample_rate = int(check_positive("sample_rate", sample_rate))
        self.n_fft = default_n_fft(self.sample_rate) if n_fft is None else check_int("n_fft", n_fft, 16)
        self.hop_length = self.n_fft // 4 if hop_length is None else check_int("hop_length", hop_length, 1)
        if self.hop_length > self.n_fft // 4:
            raise ValueError(f"hop_length must be <= n_fft // 4 = {self.n_fft // 4} (a Hann window needs that overlap "
                             f"for the frames to cover every sample evenly), got {hop_length}")
        self.iterations = check_int("iterations", iterations, 0)
        self._cache: List[Tuple[Tensor, MaskingThreshold, Tensor]] = []

    @property
    def margin_db(self) -> float:
        return self.level

    def _copy(self, **changes):
        clone = super()._copy(**changes)
        clone._cache = []
        return clone

    # -- threshold and scale --------------------------------------------------------------------------
    def threshold(self, x: Tensor) -> Tuple[MaskingThreshold, Tensor]:
        """``x``'s :class:`MaskingThreshold` and the scale :math:`R_x` (per example), cached by value."""
        for cx, mt, scale in self._cache:
            if cx.shape == x.shape and cx.dtype == x.dtype and cx.device == x.device and torch.equal(cx, x):
                return mt, scale
        mt = MaskingThreshold(x, self.sample_rate, self.n_fft, self.hop_length)
        window = torch.hann_window(self.n_fft, periodic=True, dtype=torch.float64)
        frame_gain = float(self.n_fft * window.pow(2).sum() / self.hop_length)  # sum_k |S|^2 = gain * ||d||^2
        two_sided = torch.full((mt.bound.shape[1],), 2.0, dtype=torch.float64, device=x.device)
        two_sided[0] = 1.0
        if self.n_fft % 2 == 0:
            two_sided[-1] = 1.0
        energy = (mt.bound.pow(2) * two_sided[None, :, None]).sum((1, 2)).reshape(x.shape[0], -1).sum(1)
        scale = (energy / frame_gain).sqrt().to(x.dtype)
        self._cache = ([(x.detach().clone(), mt, scale)] + self._cache)[:4]
        return mt, scale

    def radius(self, x: Tensor) -> Tensor:
        return self.threshold(x)[1] * self._ratio()

    def size(self, delta: Tensor, x: Tensor) -> Tensor:
        mt, scale = self.threshold(x)
        worst = mt.ratio(delta).reshape(x.shape[0], -1).amax(1)
        return (worst * scale.double()).to(delta.dtype)

    # -- the four operations --------------------------------------------------------------------------
    def random_init(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        mt, _ = self.threshold(x)
        mag = mt.bound * self._ratio() * rand(mt.bound.shape, generator, mt.bound)
        phase = 2 * math.pi * rand(mt.bound.shape, generator, mt.bound)
        rows = _istft(torch.polar(mag, phase), self.n_fft, self.hop_length, x.shape[-1], torch.float64)
        return self.project(rows.reshape(x.shape).to(x.dtype), x)

    def step(self, delta: Tensor, grad: Tensor, step_size: Tensor) -> Tensor:
        g = _flat(grad)
        g = g / l2_norm(g)[:, None].clamp_min(1e-12)
        return delta + (g * step_size[:, None]).reshape(delta.shape)

    def project(self, delta: Tensor, x: Tensor, radius: Optional[Tensor] = None) -> Tensor:
        mt, scale = self.threshold(x)
        level = (torch.full_like(scale, self._ratio()) if radius is None else radius).double() / (
            1.0 if radius is None else scale.double().clamp_min(1e-300))
        per_row = level.reshape(-1, 1).expand(x.shape[0], mt.bound.shape[0] // x.shape[0]).reshape(-1, 1, 1)
        bound = mt.bound * per_row
        rows = delta.detach().reshape(-1, x.shape[-1]).double()
        support = (rows != 0).to(rows.dtype)  # zeros stay zero: attacks zero the padding before projecting
        for _ in range(self.iterations):
            spec = _stft(rows, self.n_fft, self.hop_length)
            mag = spec.abs()
            over = mag > bound * (1 + _SLACK)
            if not bool(over.any()):
                break
            spec = torch.where(over, spec * (bound / mag.clamp_min(1e-300)), spec)
            rows = _istft(spec, self.n_fft, self.hop_length, x.shape[-1], torch.float64) * support
        d = rows.reshape(x.shape).to(x.dtype)
        # clip to the value box only where it is left: (x + d) - x rounds a small d in float32
        d = torch.where(self.clamp_box(torch.zeros_like(d), x + d) != 0, self.clamp_box(d, x), d).double()
        worst = (_stft(d.reshape(-1, x.shape[-1]), self.n_fft, self.hop_length).abs() / bound).reshape(x.shape[0], -1)
        worst = worst.amax(1)
        shrink = torch.where(worst > 1 + _SLACK, _TARGET / worst, torch.ones_like(worst))
        # x + s d lies between x and x + d, so the box holds for any s in [0, 1]
        return (d * shrink.reshape(-1, *([1] * (x.dim() - 1)))).to(delta.dtype)

    def extra_sizes(self, delta: Tensor, x: Tensor) -> Dict[str, Tensor]:
        out = super().extra_sizes(delta, x)
        report = masking_report(delta, x, self.sample_rate, threshold=self.threshold(x)[0])
        out.update(frames_above=report["frames_above"], excess_db=report["excess_db"])
        return out

    def describe(self) -> str:
        return f"PsychoacousticBall(margin_db={self.level:g}, sample_rate={self.sample_rate}, n_fft={self.n_fft})"

    def __repr__(self) -> str:
        return (f"PsychoacousticBall(margin_db={self.level:g}, sample_rate={self.sample_rate}, n_fft={self.n_fft}, "
                f"hop_length={self.hop_length}, box=[{self.lower}, {self.upper}])")
