"""Training objectives for robust training: plain loss functions plus the attacks some of them need.

Conventions: ``logits_*`` have shape ``(outputs, C)``, ``y`` holds integer labels ``(outputs,)``; every
loss returns a scalar (batch mean) unless stated.  Nothing here touches a model's modes: the attacks
run through :func:`mmrobust.attacks.attack_mode` like every other attack.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .adapters.base import BatchAdapter, stage_adapter
from .attacks.attack_objective import AttackObjective
from .attacks.base import Threat, prepare_victim
from .attacks.pgd import PGD
from .errors import check_finite_nonneg, check_int, check_positive
from .threats.base import ThreatModel
from .utils import randn

#: floor inside logarithms of probabilities (the official MART code uses 1e-12 too)
_LOG_FLOOR = 1e-12



def batch_cross_entropy(model: torch.nn.Module, batch: Any, adapter: Optional[BatchAdapter] = None) -> Tensor:
    """Mean cross-entropy of ``model`` on a training ``batch`` of any modality, read through its adapter.

    The default loss of the weight-space callbacks (AWP, RandBET, HYDRA). Without ``adapter`` it scores
    the batch's *training* outputs (:func:`~mmrobust.adapters.base.stage_adapter`): for a PyG graph the
    ``train_mask`` nodes, never the test nodes an evaluation adapter would pick.
    """
    victim = prepare_victim(stage_adapter(batch, "train", adapter).victim(model, batch))
    return F.cross_entropy(victim.forward(victim.inputs), victim.target)


def _check_pair(logits_clean: Tensor, logits_adv: Tensor, y: Tensor) -> None:
    if logits_clean.dim() != 2 or logits_clean.shape != logits_adv.shape:
        raise ValueError(f"logits_clean and logits_adv must both have shape (outputs, C), got "
                         f"{tuple(logits_clean.shape)} and {tuple(logits_adv.shape)}")
    if y.shape != (logits_clean.shape[0],):
        raise ValueError(f"y must have shape ({logits_clean.shape[0]},), got {tuple(y.shape)}")


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy, the standard (and PGD-AT, Madry et al. 2018 Eq. 2.1 inner) training loss.

    .. math:: \\frac1n \\sum_i -\\log \\mathrm{softmax}(z_i)_{y_i}
    """
    return F.cross_entropy(logits, y)


def kl_divergence(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Per-row :math:`\\mathrm{KL}(p \\| q) = \\sum_k p_k (\\log p_k - \\log q_k)` from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(1)


def trades_loss(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, beta: float = 6.0) -> Tensor:
    """TRADES (Zhang et al. 2019, https://arxiv.org/abs/1901.08573, Eq. 5).

    .. math:: \\frac1n \\sum_i \\Big[\\mathrm{CE}(f(x_i), y_i)
              + \\beta\\, \\mathrm{KL}\\big(\\mathrm{softmax} f(x_i) \\,\\|\\, \\mathrm{softmax} f(x_i')\\big)\\Big]

    As in the official code (``KLDivLoss(sum)(log_softmax(adv), softmax(clean)) / batch``): KL from the
    clean to the adversarial distribution, summed over classes and averaged over the batch, with gradients
    through both logits.  ``beta`` is ``1/lambda`` of the paper (6 in the paper's experiments).
    """
    _check_pair(logits_clean, logits_adv, y)
    beta = check_finite_nonneg("beta", beta)
    natural = F.cross_entropy(logits_clean, y)
    robust = kl_divergence(logits_clean.log_softmax(1), logits_adv.log_softmax(1)).mean()
    return natural + beta * robust


def mart_loss(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, beta: float = 6.0) -> Tensor:
    """MART (Wang et al. 2020, https://openreview.net/forum?id=rklOg6EFwS, Eq. 7).

    .. math:: \\frac1n \\sum_i \\Big[\\mathrm{BCE}(p(x_i'), y_i)
              + \\lambda\\, \\mathrm{KL}\\big(p(x_i) \\| p(x_i')\\big)\\,(1 - p_{y_i}(x_i))\\Big],\\quad
              \\mathrm{BCE}(p, y) = -\\log p_y - \\log\\big(1 - \\max_{k \\ne y} p_k\\big)

    ``beta`` is the paper's :math:`\\lambda` (6 in its CIFAR-10 experiments).  Gradients flow through the
    clean logits in the KL term and its weight, as in the official code.
    """
    _check_pair(logits_clean, logits_adv, y)
    beta = check_finite_nonneg("beta", beta)
    p_adv = logits_adv.softmax(1)
    log_p_adv = logits_adv.log_softmax(1)
    true_mask = F.one_hot(y, logits_adv.shape[1]).bool()
    other_max = p_adv.masked_fill(true_mask, float("-inf")).amax(1)
    bce = -log_p_adv.gather(1, y[:, None]).squeeze(1) - torch.log((1 - other_max).clamp_min(_LOG_FLOOR))
    log_p_clean = logits_clean.log_softmax(1)
    p_clean_y = log_p_clean.exp().gather(1, y[:, None]).squeeze(1)
    kl = kl_divergence(log_p_clean, log_p_adv)
    return (bce + beta * kl * (1 - p_clean_y)).mean()


# -- CCAT ---------------------------------------------------------------------------------------------

def other_class_confidence(logits: Tensor, labels: Tensor, target_labels: Optional[Tensor] = None) -> Tensor:
    """CCAT's attack objective (Stutz et al. 2020, https://arxiv.org/abs/1910.06259, Sec. 3.2, attack objective).

    .. math:: \\max_{k \\ne y} \\log \\mathrm{softmax}(z)_k

    The paper maximises :math:`\\max_{k\\ne y} \\mathrm{softmax}(z)_k`; the logarithm has the same
    maximiser and does not saturate.  Usable as an attack loss: ``PGD(threat, loss=other_class_confidence)``.
    """
    log_p = logits.log_softmax(1)
    if target_labels is not None:  # targeted: confidence in the target class
        return log_p.gather(1, target_labels[:, None]).squeeze(1)
    return log_p.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf")).amax(1)


def ccat_lambda(relative_size: Tensor, rho: float = 10.0) -> Tensor:
    """CCAT's power transition (Stutz et al. 2020, Sec. 3.2): :math:`\\lambda = 1 - (1 - \\min(1, \\|\\delta\\|/\\epsilon))^\\rho`.

    ``relative_size`` is :math:`\\|\\delta\\|_\\infty / \\epsilon` (or the threat model's own size over its
    radius) per output.
    """
    rho = check_positive("rho", rho)
    return 1 - (1 - relative_size.clamp(0, 1)) ** rho


def ccat_target(y: Tensor, num_classes: int, relative_size: Tensor, rho: float = 10.0) -> Tensor:
    """CCAT's target distribution (Stutz et al. 2020, Sec. 3.2): :math:`(1-\\lambda)\\,\\mathrm{onehot}(y) + \\lambda/K`."""
    check_int("num_classes", num_classes, 2)
    lam = ccat_lambda(relative_size, rho)[:, None]
    onehot = F.one_hot(y, num_classes).to(lam.dtype)
    return (1 - lam) * onehot + lam / num_classes


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Per-row cross-entropy to a target distribution, :math:`-\\sum_k q_k \\log \\mathrm{softmax}(z)_k`."""
    return -(target * logits.log_softmax(1)).sum(1)


def ccat_loss(logits_clean: Tensor, y_clean: Tensor, logits_adv: Tensor, y_adv: Tensor,
              relative_size: Tensor, rho: float = 10.0) -> Tensor:
    """Confidence-calibrated adversarial training (Stutz et al. 2020, Sec. 3.2 and its training algorithm).

    .. math:: \\frac{1}{n_c + n_a}\\Big[\\sum_{i \\in \\mathrm{clean}} \\mathrm{CE}(f(x_i), y_i)
              + \\sum_{i \\in \\mathrm{adv}} \\mathrm{CE}\\big(f(\\tilde x_i),\\ (1-\\lambda_i)\\,
              \\mathrm{onehot}(y_i) + \\lambda_i/K\\big)\\Big]

    The batch is split into a clean and an adversarial part (half and half in the paper);
    ``relative_size`` is :math:`\\|\\delta_i\\|_\\infty/\\epsilon` of each adversarial output.
    """
    if logits_adv.dim() != 2 or relative_size.shape != (logits_adv.shape[0],) or y_adv.shape != relative_size.shape:
        raise ValueError(f"logits_adv (outputs, C), y_adv and relative_size (outputs,) must agree, got "
                         f"{tuple(logits_adv.shape)}, {tuple(y_adv.shape)}, {tuple(relative_size.shape)}")
    target = ccat_target(y_adv, logits_adv.shape[1], relative_size, rho)
    adv = soft_cross_entropy(logits_adv, target)
    clean = F.cross_entropy(logits_clean, y_clean, reduction="none")
    return torch.cat([clean, adv]).mean()


# -- TRADES inner maximisation ------------------------------------------------------------------------

class _SmallGaussianStart:
    """A threat model whose random start is ``std * N(0, I)`` (projected), everything else delegated."""

    def __init__(self, threat: ThreatModel, std: float):
        self._threat = threat
        self._std = std

    def __getattr__(self, name):
        return getattr(self._threat, name)

    def random_init(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return self._threat.project(self._std * randn(x.shape, generator, x), x)


class TradesAttack(PGD):
    """TRADES' inner maximisation (Zhang et al. 2019, https://arxiv.org/abs/1901.08573, Eq. 5 / Alg. 1).

    .. math:: x' = \\arg\\max_{x' \\in \\Delta(x)} \\mathrm{KL}\\big(\\mathrm{softmax} f(x) \\,\\|\\,
              \\mathrm{softmax} f(x')\\big)

    PGD on the KL divergence to the model's *fixed* clean prediction, started at
    ``x + init_std * N(0, I)`` (the KL has zero gradient at the clean point; the official code uses
    ``0.001``).  The clean prediction is computed once per batch in eval mode and travels as the call's
    :class:`~mmrobust.attacks.attack_objective.AttackObjective` (its ``reference``), never on the attack.
    Like PGD's other arguments, ``steps`` and ``step_size`` (fraction of the radius) are configurable;
    the paper's MNIST setting is 40 steps of 0.01 at eps 0.3 (``step_size=1/30``).
    """

    name = "trades"
    can_stop_early = False

    def __init__(self, threat: Threat, *, steps: int = 10, step_size: Optional[float] = None, init_std: float = 1e-3,
                 **kwargs):
        if "loss" in kwargs:  # given, it would be silently replaced by the KL
            raise ValueError(f"TradesAttack maximises the KL to the clean prediction by construction; "
                             f"loss={kwargs['loss']!r} is not an option (leave it out)")
        if kwargs.get("targeted"):
            raise ValueError("TradesAttack is untargeted (it maximises the KL to the clean prediction)")
        # The KL objective does not stop at misclassification, and its reference is per batch.
        if kwargs.pop("early_stop", False):
            raise ValueError("TradesAttack cannot stop early: its KL objective is not about misclassification")
        super().__init__(threat, steps=steps, step_size=step_size, loss="ce", **kwargs)
        self.loss_name = "trades_kl"
        self.init_std = check_finite_nonneg("init_std", init_std)

    def objective_for(self, victim, target_labels, clean_logits) -> AttackObjective:
        """The KL to the clean prediction of the call's batch (``clean_logits``, or one eval-mode forward pass
        when training), held as the objective's ``reference``."""
        if clean_logits is None:
            with torch.no_grad():
                clean_logits = victim.forward(victim.inputs)
        reference = clean_logits.detach().log_softmax(1)
        return AttackObjective(functools.partial(_kl_to, reference), reference=reference)

    def perturb(self, victim, threats: Dict[str, ThreatModel], target_labels, clean_logits):
        starts = {k: _SmallGaussianStart(t, self.init_std) for k, t in threats.items()}
        return super().perturb(victim, starts, target_labels, clean_logits)


def _kl_to(reference: Tensor, logits: Tensor, labels: Tensor, target_labels: Optional[Tensor] = None) -> Tensor:
    """TRADES' attack loss: per output, the KL divergence of the prediction at ``logits`` from ``reference``."""
    return kl_divergence(reference, logits.log_softmax(1))


OBJECTIVES = ("ce", "trades", "mart", "ccat")
