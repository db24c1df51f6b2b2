"""Single-step attacks of fast adversarial training: FGSM-RS (Wong et al. 2020) and N-FGSM (de Jorge et al. 2022).

Both differ from :class:`~mmrobust.attacks.FGSM` with ``random_start=True`` in *where the gradient is
taken*, which is what decides whether single-step training collapses (catastrophic overfitting):

* :class:`FGSMRS` takes it at an unclipped uniform start in the ball, as the paper's Alg. 3 and its
  reference code (``locuslab/fast_adversarial``, ``MNIST/train_mnist.py``) do; only the final
  perturbation is projected onto ball and box. :class:`FGSM` projects the start onto the value box
  first; on MNIST, whose pixels are mostly 0 or 1, that halves the noise on most pixels and the
  Wong et al. recipe then collapses (PGD-50 robust accuracy 0.01 instead of 0.83).
* :class:`NFGSM` starts from stronger noise (``k * eps``, clipped to the box as in the reference code
  ``pdejorge/N-FGSM`` unless ``clip_noise=False``), steps ``eps`` and does *not* project back onto the
  eps ball: its training points may lie up to ``(k + 1) * eps`` from the input (inside the value box).
  On Wong et al.'s MNIST recipe at eps 0.3 neither variant gave a robust model (``benchmarks/results/single_step_mnist.md``). It is a training perturbation;
  its ``__call__`` refuses to report robust accuracy for points outside the threat model.
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor

from ..errors import check_finite_nonneg, check_positive
from ..threats.base import ThreatModel
from .base import Attack, Threat, apply_masks
from .kernel import input_gradients


def unboxed(threat: ThreatModel) -> ThreatModel:
    """A copy of ``threat`` without its value box (same ball, same radius per unit)."""
    clone = copy.copy(threat)
    clone.lower = clone.upper = None
    return clone


def single_step(attack: Attack, victim, threats: Dict[str, ThreatModel], start: Dict[str, Tensor],
                step_size: float, target_labels: Optional[Tensor]) -> Dict[str, Tensor]:
    """``start + step_size * radius * s(grad)`` with the gradient of the attack's loss taken at ``start``
    (unprojected: the caller projects). The gradients go to ``attack.on_gradient`` when it is set."""
    x = victim.inputs
    start = apply_masks(start, victim)
    _, _, grads = input_gradients(attack, victim, x, start, target_labels)
    if getattr(attack, "on_gradient", None) is not None:
        attack.on_gradient(grads)
    with torch.no_grad():
        return {k: t.step(start[k], grads[k], t.radius(x[k]) * step_size) for k, t in threats.items()}


class FGSMRS(Attack):
    """FGSM from a random start, as in fast adversarial training (Wong et al. 2020, https://arxiv.org/abs/2001.03994, Alg. 3).

    .. math:: \\eta \\sim U(B_\\epsilon),\\quad
              \\delta = \\Pi_{B_\\epsilon \\cap [l, u]}\\big(\\eta + \\alpha\\, s(\\nabla_\\eta \\mathcal{L}(f(x + \\eta), y))\\big),
              \\quad \\alpha = 1.25\\,\\epsilon

    The start :math:`\\eta` is uniform in the ball and *not* clipped to the value box before the gradient
    (``x + eta`` may leave ``[lower, upper]`` there), exactly as the reference code; the returned point is
    projected onto ball and box, so it always lies in the threat model. :math:`s` is the threat model's
    steepest-ascent direction (sign for L-inf).

    With ``random_start=False`` the start is zero: FGSM at the clean point, as the GradAlign reference code
    runs it (``--attack_init=zero``, ``fgsm_alpha`` 1.25 clipped to the ball, i.e. a step of eps).

    Args:
        threat: the budget, e.g. ``LinfBall(0.3, lower=0, upper=1)``.
        step_size: :math:`\\alpha` as a fraction of the radius (1.25 in the paper).
        random_start: uniform start in the ball (the paper) or zero start.
        Other keyword arguments (``loss``, ``adapter``, ``seed``) go to :class:`Attack`.

    ``on_gradient`` (``None`` by default), when set to a callable, receives the input gradients of every
    step (a dict per input, detached): :class:`~mmrobust.callbacks.FastAdversarialTraining` hands the
    zero-start gradient, :math:`\\nabla_x \\mathcal L(x)`, to GradAlign instead of computing it again.
    :meth:`private_copy` (the copies evaluation attacks with) drops it: evaluating the training attack must
    not hand an evaluation batch's gradient to the training hook.

    Example:
        >>> from mmrobust.attacks import FGSMRS
        >>> from mmrobust.threats import LinfBall
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> result = FGSMRS(LinfBall(0.1, lower=0, upper=1), seed=0)(model, [x, y])
        >>> bool(((result.inputs["image"] - x).abs() <= 0.1 + 1e-6).all()), result.robust.shape
        (True, torch.Size([8]))
    """

    name = "fgsm_rs"
    on_gradient: Optional[Callable[[Dict[str, Tensor]], None]] = None

    def __init__(self, threat: Threat, *, step_size: float = 1.25, random_start: bool = True, **kwargs):
        super().__init__(threat, **kwargs)
        self.step_size = check_positive("step_size", step_size)
        self.random_start = bool(random_start)

    def settings(self) -> List[str]:
        return super().settings() + [f"step_size={self.step_size:g}"] + ([] if self.random_start else ["zero_start"])

    def private_copy(self) -> "FGSMRS":
        clone = super().private_copy()
        clone.on_gradient = None  # a hook into the owner's training state (GradAlign), not the copy's
        return clone

    def start(self, victim, threats: Dict[str, ThreatModel]) -> Dict[str, Tensor]:
        if not self.random_start:
            return {k: torch.zeros_like(victim.inputs[k]) for k in threats}
        gen = self.generator()
        return {k: unboxed(t).random_init(victim.inputs[k], gen) for k, t in threats.items()}

    def perturb(self, victim, threats, target_labels, clean_logits):
        x = victim.inputs
        delta = single_step(self, victim, threats, self.start(victim, threats), self.step_size, target_labels)
        delta = apply_masks({k: t.project(delta[k], x[k]) for k, t in threats.items()}, victim)
        return {k: x[k] + delta[k] if k in delta else x[k] for k in x}


class NFGSM(FGSMRS):
    """N-FGSM (de Jorge et al. 2022, https://arxiv.org/abs/2202.01181, Alg. 1): noise-augmented FGSM.

    .. math:: \\eta \\sim U\\big([-k\\epsilon, k\\epsilon]^d\\big),\\quad
              \\delta = \\mathrm{clip}_{[l, u]}\\big(\\eta + \\alpha\\,\\mathrm{sign}\\nabla_\\eta \\mathcal{L}(f(x + \\eta), y)\\big),
              \\quad k = 2,\\ \\alpha = \\epsilon

    With ``clip_noise=True`` (default) the noise is clipped to the value box before the gradient, exactly
    as the reference code (``pdejorge/N-FGSM``, ``train.py``: ``eta.uniform_(-k eps, k eps)``, clamped to
    ``[lower - X, upper - X]``, gradient at ``X + eta``, ``delta = eta + alpha sign(grad)`` clamped to the
    box, no eps clipping by default; settings given for CIFAR-10/100, SVHN (with an eps warm-up) and
    ImageNet, none for MNIST). On natural images the box rarely binds; on MNIST, whose pixels are mostly 0
    or 1, it halves the noise on most pixels, and at eps 0.3 the run collapsed
    (``benchmarks/results/single_step_mnist.md``). ``clip_noise=False`` takes the gradient at the
    unclipped noise, as :class:`FGSMRS` does. The result is *not* projected onto the eps ball (the
    paper's point: stronger noise and no clipping avoid catastrophic overfitting without extra passes),
    only onto the box, so training points lie within ``(k + step_size) * eps`` of the input. Hence this is a
    training perturbation: :meth:`generate` returns it, while calling the attack for an
    :class:`~mmrobust.attacks.AttackResult` raises (its robust accuracy would not be about the threat
    model; evaluate with PGD/APGD). The noise is ``k`` times a uniform point of the ball (uniform
    in the cube of side ``2 k eps`` for L-inf).

    Args:
        threat: the budget eps (and value box) the noise and the step are scaled by.
        noise: :math:`k`, the noise magnitude as a multiple of the radius (2 in the paper; 0: no noise).
        step_size: :math:`\\alpha` as a fraction of the radius (1 in the paper).
        clip_noise: clip the noise to the value box before the gradient (the reference code) or not.

    Example:
        >>> from mmrobust.attacks import NFGSM
        >>> from mmrobust.threats import LinfBall
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> adv, _ = NFGSM(LinfBall(0.1, lower=0, upper=1), seed=0).generate(model, [x, y])  # a training batch
        >>> shift = (adv - x).abs().amax()
        >>> bool(shift > 0.1), bool(shift <= 3 * 0.1 + 1e-6), bool(((adv >= 0) & (adv <= 1)).all())
        (True, True, True)
    """

    name = "n_fgsm"

    def __init__(self, threat: Threat, *, noise: float = 2.0, step_size: float = 1.0, clip_noise: bool = True,
                 **kwargs):
        super().__init__(threat, step_size=step_size, **kwargs)
        self.noise = check_finite_nonneg("noise", noise)
        self.clip_noise = bool(clip_noise)

    def settings(self) -> List[str]:
        return super().settings() + [f"noise={self.noise:g}", f"clip_noise={self.clip_noise}"]

    def start(self, victim, threats):
        x = victim.inputs
        if self.noise == 0:
            return {k: torch.zeros_like(x[k]) for k in threats}
        # k times a uniform point of the unboxed ball: uniform in the ball of radius k * eps
        noise = {k: self.noise * d for k, d in super().start(victim, threats).items()}
        if not self.clip_noise:
            return noise
        return {k: threats[k].clamp_box(d, x[k]) for k, d in noise.items()}

    def perturb(self, victim, threats, target_labels, clean_logits):
        if clean_logits is not None:
            raise TypeError("NFGSM is a training perturbation whose points may leave the eps ball (de Jorge et al. "
                            "2022 do not project onto it); use attack.generate(model, batch) for training, and "
                            "PGD/APGD or FGSMRS to measure robust accuracy")
        x = victim.inputs
        delta = single_step(self, victim, threats, self.start(victim, threats), self.step_size, target_labels)
        delta = apply_masks({k: t.clamp_box(delta[k], x[k]) for k, t in threats.items()}, victim)
        return {k: x[k] + delta[k] if k in delta else x[k] for k in x}
