"""Imperceptible audio attacks: the masking-threshold penalty with an adaptive weight (Qin et al. 2019).

Qin, Carlini, Goodfellow, Cottrell & Raffel, "Imperceptible, Robust, and Targeted Adversarial Examples for
Automatic Speech Recognition", ICML 2019, https://arxiv.org/abs/1903.10346, Sec. 4 (second stage): minimise

.. math:: \\ell_{\\mathrm{net}}(f(x + \\delta), t) + \\alpha\\, \\ell_\\theta(x, \\delta),\\qquad
   \\ell_\\theta(x, \\delta) = \\operatorname{mean}_{k, m} \\max(\\bar p_\\delta(k, m) - \\theta_x(k, m), 0)

with Adam, starting from a perturbation that already fools the model, inside the first stage's L-inf
budget (here: any outer threat model, e.g. :class:`~mmrobust.threats.PeakDBBall` or
:class:`~mmrobust.threats.SNRBall`). :math:`\\theta_x` is the masking threshold of
:mod:`mmrobust.threats.psychoacoustic`. The weight adapts per example: every ``up_every`` steps it is
multiplied by 1.2 if the example is adversarial (more room to hide the perturbation), every
``down_every`` steps by 0.8 if it is not (the paper's schedule: 20 and 50 steps). Among the adversarial
iterates the one with the smallest :math:`\\ell_\\theta` is returned.

:class:`MaskingPenalty` holds the penalty and its schedule and is shared by :class:`MaskingPenaltyAttack`
(classifiers, untargeted or targeted) and :class:`~mmrobust.attacks.CTCTargetedAttack` (``masking=``).
A penalty leaves some bins above the threshold; results report how many frames
(``extras["<input>/frames_above"]``) next to the SNR and the peak dB.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor

from ..errors import check_int, check_positive
from ..threats.base import ThreatModel
from ..threats.psychoacoustic import MaskingThreshold, masking_report, masking_threshold
from .base import Attack, Threat, apply_masks
from .kernel import input_gradients


class MaskingPenalty:
    """Qin et al.'s :math:`\\alpha\\,\\ell_\\theta` with its per-example adaptive weight (see the module docstring).

    Args:
        sample_rate: of the waveforms. n_fft, hop_length: the analysis window (default 128 ms, hop a quarter).
        alpha: initial weight. Its scale is the ratio of the model's loss gradient to the penalty's: Qin et al.
            use 0.05 with DeepSpeech's CTC loss on 16-bit integer audio; the default suits cross-entropy
            or CTC on float waveforms, where the penalty's gradient is some 1e4 times the loss's.
        up, up_every: factor applied to the weight of adversarial examples every ``up_every`` steps.
        down, down_every: factor applied to the weight of not-yet-adversarial examples every ``down_every`` steps.

    Example:
        >>> import torch
        >>> from mmrobust.attacks.imperceptible import MaskingPenalty
        >>> _ = torch.manual_seed(0)
        >>> masking = MaskingPenalty(16000, n_fft=256)
        >>> x, delta = 0.1 * torch.randn(2, 1600), 0.01 * torch.randn(2, 1600)  # 0.1 s of 16 kHz audio
        >>> penalty, grad = masking.value_and_grad(delta, masking.threshold(x))
        >>> penalty.shape, grad.shape
        (torch.Size([2]), torch.Size([2, 1600]))
        >>> masking.update(masking.initial_weights(x), 20, torch.tensor([True, False])) / masking.alpha
        tensor([1.2000, 1.0000], dtype=torch.float64)
    """

    def __init__(self, sample_rate: int, *, alpha: float = 1e-4, up: float = 1.2, up_every: int = 20,
                 down: float = 0.8, down_every: int = 50, n_fft: Optional[int] = None,
                 hop_length: Optional[int] = None):
        self.sample_rate = int(check_positive("sample_rate", sample_rate))
        self.alpha = check_positive("alpha", alpha)
        self.up, self.down = check_positive("up", up), check_positive("down", down)
        self.up_every, self.down_every = check_int("up_every", up_every, 1), check_int("down_every", down_every, 1)
        self.n_fft, self.hop_length = n_fft, hop_length

    def threshold(self, x: Tensor) -> MaskingThreshold:
        return masking_threshold(x, self.sample_rate, self.n_fft, self.hop_length)

    def initial_weights(self, x: Tensor) -> Tensor:
        return torch.full((x.shape[0],), self.alpha, dtype=torch.float64, device=x.device)

    def value_and_grad(self, delta: Tensor, threshold: MaskingThreshold):
        """Per-example :math:`\\ell_\\theta` and its gradient in ``delta``."""
        with torch.enable_grad():
            leaf = delta.detach().requires_grad_(True)
            value = threshold.penalty(leaf)
            grad, = torch.autograd.grad(value.sum(), leaf)
        return value.detach(), grad

    def update(self, weights: Tensor, step: int, success: Tensor) -> Tensor:
        """The weights after ``step`` (1-based) steps, given which examples are adversarial now."""
        if step % self.up_every == 0:
            weights = torch.where(success, weights * self.up, weights)
        if step % self.down_every == 0:
            weights = torch.where(success, weights, weights * self.down)
        return weights

    def report(self, delta: Tensor, x: Tensor, threshold: MaskingThreshold) -> Dict[str, Tensor]:
        rep = masking_report(delta, x, self.sample_rate, threshold=threshold)
        return {"frames_above": rep["frames_above"], "excess_db": rep["excess_db"]}


def adam_direction(grad: Tensor, state: Dict[str, Tensor], step: int, betas=(0.9, 0.999)) -> Tensor:
    """Adam's bias-corrected update direction for ``grad`` (ascent), moments kept in ``state``."""
    b1, b2 = betas
    state["m1"] = b1 * state.get("m1", torch.zeros_like(grad)) + (1 - b1) * grad
    state["m2"] = b2 * state.get("m2", torch.zeros_like(grad)) + (1 - b2) * grad * grad
    return (state["m1"] / (1 - b1 ** step)) / ((state["m2"] / (1 - b2 ** step)).sqrt() + 1e-12)


class MaskingPenaltyAttack(Attack):
    """Qin et al.'s imperceptible attack for waveform classifiers (see the module docstring): Adam on the
    attack loss (ascent; targeted attacks descend their target's loss) minus ``alpha`` times the masking
    penalty, with per-coordinate steps of at most ``step_size`` times the outer radius (L-inf balls) or
    the radius over :math:`\\sqrt n` (L2-type balls such as SNR), projected onto the outer threat model. Success is misclassification (or the target class); per example the
    adversarial iterate with the smallest penalty is returned, else the last iterate.

    Args:
        threat: the outer budget (the paper's first-stage bound), e.g. ``PeakDBBall(-20)`` or ``SNRBall(20)``.
        masking: a :class:`MaskingPenalty` (sample rate, initial weight, schedule).
        steps: Adam steps. step_size: step length as a fraction of the outer radius.
        start: the first stage, an attack whose result (projected onto ``threat``) is the starting point,
            e.g. ``PGD(SNRBall(20))`` (Qin et al. start from Carlini & Wagner's attack); ``None``: zero.

    Example:
        >>> import torch
        >>> from mmrobust.attacks import MaskingPenaltyAttack
        >>> from mmrobust.attacks.imperceptible import MaskingPenalty
        >>> from mmrobust.threats import SNRBall
        >>> _ = torch.manual_seed(0)
        >>> x = 0.1 * torch.randn(2, 1600)  # two waveforms, 0.1 s at 16 kHz
        >>> model = torch.nn.Linear(1600, 3).eval()
        >>> y = model(x).argmax(1)
        >>> attack = MaskingPenaltyAttack(SNRBall(20), MaskingPenalty(16000, n_fft=256), steps=50)
        >>> result = attack(model, [x, y])
        >>> bool((result.extras["image/snr_db"] >= 20 - 1e-3).all()), sorted(result.extras)
        (True, ['image/db_x', 'image/excess_db', 'image/frames_above', 'image/snr_db'])
    """

    name = "masking_penalty"

    def __init__(self, threat: Threat, masking: MaskingPenalty, *, steps: int = 200, step_size: float = 0.02,
                 start: Optional[Attack] = None, **kwargs):
        super().__init__(threat, **kwargs)
        if start is not None and not isinstance(start, Attack):
            raise TypeError(f"start must be an Attack (the first stage, e.g. PGD) or None, got {type(start).__name__}")
        if start is not None and start.targeted != self.targeted:
            raise ValueError(f"start must pursue the same goal as this attack: start.targeted={start.targeted}, "
                             f"targeted={self.targeted} (build both targeted or both untargeted)")
        self.start = start
        if not isinstance(masking, MaskingPenalty):
            raise TypeError(f"masking must be a MaskingPenalty(sample_rate, ...), got {type(masking).__name__}")
        self.masking = masking
        self.steps = check_int("steps", steps, 1)
        self.step_size = check_positive("step_size", step_size)

    def settings(self) -> List[str]:
        return super().settings() + [f"masking alpha={self.masking.alpha:g}", f"steps={self.steps}"]

    def perturb(self, victim, threats: Dict[str, ThreatModel], target_labels, clean_logits):
        if len(threats) != 1:
            raise ValueError("MaskingPenaltyAttack perturbs one waveform input; got threats for "
                             f"{sorted(threats)}")
        (key, threat), = threats.items()
        x = victim.inputs[key]
        thr = self.masking.threshold(x)
        radius = threat.radius(x)
        weights = self.masking.initial_weights(x)
        # Adam's own step: per coordinate at most step_size times the radius (L-inf) or the radius / sqrt(n)
        # (other norms: an all-saturated step then has L2 length step_size * radius), smaller as Adam settles
        n = x[0].numel()
        per_coordinate = (radius * self.step_size / (1.0 if threat.norm == "linf" else n ** 0.5)).reshape(
            -1, *([1] * (x.dim() - 1)))
        delta = torch.zeros_like(x)
        if self.start is not None:
            out = self.start.perturb(victim, self.start.threats_for(victim), target_labels, clean_logits)
            first = out[0] if isinstance(out, tuple) else out
            delta = threat.project(first[key].detach() - x, x)
        best = torch.zeros_like(x)
        best_pen = torch.full((x.shape[0],), float("inf"), dtype=torch.float64, device=x.device)
        state: Dict[str, Tensor] = {}
        for step in range(1, self.steps + 2):
            logits, _, grads = input_gradients(self, victim, victim.inputs, {key: delta}, target_labels,
                                               step <= self.steps)
            success = victim.per_unit(self.is_success(logits, victim, target_labels).float()) > 0
            pen, pen_grad = self.masking.value_and_grad(delta, thr)
            better = success & (pen.double() < best_pen)
            best = torch.where(better.reshape(-1, *([1] * (x.dim() - 1))), delta, best)
            best_pen = torch.where(better, pen.double(), best_pen)
            if step > self.steps:
                break
            with torch.no_grad():
                w = weights.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
                direction = adam_direction(grads[key] - w * pen_grad, state, step)
                delta = delta + direction * per_coordinate
                delta = threat.project(apply_masks({key: delta}, victim)[key], x)
            weights = self.masking.update(weights, step, success)
        found = torch.isfinite(best_pen).reshape(-1, *([1] * (x.dim() - 1)))
        final = torch.where(found, best, delta)
        return {k: x + final if k == key else v for k, v in victim.inputs.items()}

    def finish(self, victim, threats, adv, clean_logits, target_labels, logits=None):
        result = super().finish(victim, threats, adv, clean_logits, target_labels, logits)
        key = next(iter(threats))
        x = victim.inputs[key]
        report = self.masking.report(adv[key].detach() - x, x, self.masking.threshold(x))
        result.extras.update({f"{key}/{k}": v for k, v in report.items()})
        return result
