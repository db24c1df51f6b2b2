"""GradAlign: the gradient-alignment regulariser of single-step adversarial training."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..attacks.losses import get_loss
from ..attacks.single_step import unboxed
from ..utils import make_generator
from ._victim import check_threat, flat
from .curvature import loss_input_gradient
from .regularizers import Regularizer


def gradient_cosines(g1: Tensor, g2: Tensor) -> Tensor:
    """Per-row cosine of two gradients (rows where either is zero are left out, as the reference code)."""
    a, b = flat(g1), flat(g2)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    keep = (na > 0) & (nb > 0)
    return (a[keep] * b[keep]).sum(1) / (na[keep] * nb[keep])


class GradientAlignment(Regularizer):
    """GradAlign (Andriushchenko & Flammarion 2020, https://arxiv.org/abs/2007.02617, Eq. 6):

    .. math:: R(\\theta) = \\mathbb E_{(x, y),\\ \\eta \\sim U([-\\epsilon, \\epsilon]^d)}
       \\big[1 - \\cos\\big(\\nabla_x \\ell(x, y; \\theta),\\ \\nabla_x \\ell(x + \\eta, y; \\theta)\\big)\\big]

    It keeps the loss locally linear inside the ball, which is what single-step (FGSM) training needs to
    avoid catastrophic overfitting. Both gradients are of the cross-entropy (or ``loss``); the first is held
    fixed and the second is differentiated through (double back-propagation), as the reference code
    (``tml-epfl/understanding-fast-adv-training``, ``train.py``); examples where either gradient is zero
    are left out of the mean, and :math:`\\eta` is uniform in the ball (``threat.random_init`` without the
    value box, so ``x + eta`` may leave it, as there). The reference's training step (zero-start FGSM
    whose gradient is reused here as the first gradient) is
    ``FastAdversarialTraining(threat, method="grad_align", grad_align_weight=lambda)`` (0.2 at CIFAR-10 eps
    8/255 in the paper, larger for larger eps). Beside any other adversarial training
    add it with :class:`~mmrobust.callbacks.GeometricRegularization` (an
    :class:`~mmrobust.callbacks.ExtraLossCallback`), listed *before* the adversarial-training callback so it
    sees the clean batch (the first gradient is then computed again, one pass more). Leaving out examples
    with a zero gradient (as the reference does: the cosine is undefined there) gives the penalty a
    degenerate minimum: a network whose input gradients vanish (dead ReLUs, constant output) pays nothing;
    a batch where all vanish gives 0 here (NaN in the reference). On Wong et al.'s MNIST recipe at eps 0.3,
    lambda 2 drove training there and lambda 0.2 did not prevent catastrophic overfitting
    (``benchmarks/results/single_step_mnist.md``)::

        callbacks=[GeometricRegularization(GradientAlignment(threat, seed=0), weight=0.2, module_attr="model"),
                   FastAdversarialTraining(threat, seed=0)]

    Args:
        threat: the ball the noise is drawn from (the training budget).
        loss: loss whose input gradients are aligned (default cross-entropy).
        seed: seed of the noise's own generator (``None``: the global RNG).
    """

    def __init__(self, threat, *, loss="ce", seed: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.threat = check_threat("threat", threat)
        self.loss_fn = get_loss(loss)
        self.seed = seed
        self._generator: Optional[torch.Generator] = None

    def describe(self) -> str:
        return "grad_align"

    def noise(self, x: Tensor) -> Tensor:
        if self.seed is not None and self._generator is None:
            self._generator = make_generator(self.seed, "cpu")
        return unboxed(self.threat).random_init(x, self._generator)

    def __call__(self, model, batch, first_gradient: Optional[Tensor] = None):
        """The penalty on ``batch``. ``first_gradient``: :math:`\\nabla_x \\ell(x, y)` when the caller already
        has it (the reference code reuses the zero-start FGSM step's gradient); computed here when ``None``
        or of another shape than the input."""
        victim, name, x = self._victim(model, batch)
        g_clean = first_gradient
        if g_clean is None or g_clean.shape != x.shape:
            _, g_clean = loss_input_gradient(victim, name, x, self.loss_fn)
        _, g_noisy = loss_input_gradient(victim, name, x.detach() + self.noise(x), self.loss_fn, create_graph=True)
        cos = gradient_cosines(g_clean.detach(), g_noisy)
        if cos.numel() == 0:
            return g_noisy.sum() * 0.0  # every gradient vanished: nothing to align, still in the graph
        return 1.0 - cos.mean()
