"""Certified L2 robustness by randomized smoothing (Cohen, Rosenfeld, Kolter 2019)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from scipy.stats import beta, binomtest, norm
from torch import Tensor, nn

from .attacks.base import attack_mode, normal_tensor
from .errors import NonFiniteError, check_fraction, check_int, check_positive
from .utils import make_generator, randn

#: class index returned where the smoothed classifier abstains
ABSTAIN = -1


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` Clopper-Pearson lower confidence bound on a binomial proportion.

    .. math:: \\underline p = B(\\alpha;\\ k,\\ n - k + 1)\\quad (0 \\text{ when } k = 0)

    with :math:`B(q; a, b)` the Beta quantile (Cohen et al. 2019, ``LowerConfBound``).
    """
    if successes <= 0:
        return 0.0
    return float(beta.ppf(alpha, successes, trials - successes + 1))


@dataclass
class Certificate:
    """What :meth:`SmoothedClassifier.certify` returns, one entry per example.

    Attributes:
        prediction: the smoothed class, or ``ABSTAIN`` (-1).
        radius: certified L2 radius :math:`\\sigma\\,\\Phi^{-1}(\\underline{p_A})` (0 where abstaining).
        p_lower: the lower confidence bound :math:`\\underline{p_A}` on the top class's probability.
        counts: ``(examples, classes)`` noise votes of the estimation round.
    """

    prediction: Tensor
    radius: Tensor
    p_lower: Tensor
    counts: Tensor

    @property
    def abstained(self) -> Tensor:
        return self.prediction == ABSTAIN


class SmoothedClassifier(nn.Module):
    """The Gaussian-smoothed classifier :math:`g(x) = \\arg\\max_c P(f(x + \\varepsilon) = c)`, :math:`\\varepsilon \\sim \\mathcal N(0, \\sigma^2 I)`.

    Cohen, Rosenfeld, Kolter 2019, "Certified Adversarial Robustness via Randomized Smoothing"
    (https://arxiv.org/abs/1902.02918). Theorem 1: if the top class has probability at least
    :math:`\\underline{p_A} > 1/2`, then :math:`g` is constant on the L2 ball of radius

    .. math:: R = \\sigma\\,\\Phi^{-1}(\\underline{p_A}).

    :meth:`certify` is the paper's CERTIFY (guess the class from ``n0`` samples, bound its probability with a
    one-sided Clopper-Pearson bound from ``n`` fresh samples, abstain if the bound is below 1/2); the
    radius holds with probability at least ``1 - alpha``. :meth:`predict` is PREDICT (two-sided binomial
    test between the two top counts; abstain if its p-value exceeds ``alpha``). Works on any continuous
    input tensor whose leading dimension indexes examples (images, waveforms, feature vectors); noise is
    drawn in the input space, without clipping, as in the paper -- train the base model with
    :class:`~mmrobust.callbacks.GaussianNoiseTraining` at the same ``sigma``.

    Args:
        base_model: the base classifier ``f`` returning ``(batch, num_classes)`` logits.
        sigma: noise standard deviation (input units), ``> 0``.
        num_classes: number of classes ``f`` predicts.
        n0: samples to guess the top class in CERTIFY.
        n: samples for the estimate in CERTIFY and the vote in PREDICT.
        alpha: failure probability, in (0, 1).
        batch_size: noisy copies per forward pass.
        generator: a ``torch.Generator`` or an integer seed for the noise (``None``: global RNG). The same
            seed and ``batch_size`` give the same certificate; another ``batch_size`` draws other (equally
            valid) noise, as torch's normal sampler does not split into batches exactly.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from mmrobust import SmoothedClassifier
        >>> base = nn.Linear(2, 2)                      # class 0 for x[0] > 0, class 1 for x[0] < 0
        >>> with torch.no_grad():
        ...     _ = base.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])), base.bias.zero_()
        >>> smoothed = SmoothedClassifier(base, 0.5, num_classes=2, n0=10, n=200, generator=0)
        >>> certificate = smoothed.certify(torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 0.0]]))
        >>> certificate.prediction, certificate.radius.round(decimals=3)   # the point on the boundary abstains (-1)
        (tensor([ 0,  1, -1]), tensor([0.9130, 0.9130, 0.0000], dtype=torch.float64))
    """

    def __init__(self, base_model: nn.Module, sigma: float, *, num_classes: int, n0: int = 100, n: int = 10000,
                 alpha: float = 0.001, batch_size: int = 1000,
                 generator: Union[torch.Generator, int, None] = None):
        super().__init__()
        if not isinstance(base_model, nn.Module):
            raise TypeError(f"base_model must be a torch.nn.Module, got {type(base_model).__name__}")
        self.base_model = base_model
        self.sigma = check_positive("sigma", sigma)
        self.num_classes = check_int("num_classes", num_classes, 2)
        self.n0 = check_int("n0", n0, 1)
        self.n = check_int("n", n, 1)
        self.alpha = check_fraction("alpha", alpha, open_low=True, open_high=True)
        self.batch_size = check_int("batch_size", batch_size, 1)
        if isinstance(generator, int) and not isinstance(generator, bool):
            generator = make_generator(generator)
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")
        self.generator = generator

    # -- Monte Carlo ------------------------------------------------------------------------------
    def sample_counts(self, x: Tensor, num: int) -> Tensor:
        """``(examples, classes)`` counts of the base model's predictions on ``num`` noisy copies of each example."""
        if not isinstance(x, Tensor) or not torch.is_floating_point(x) or x.dim() < 1 or x.shape[0] == 0:
            raise ValueError(f"x must be a non-empty floating-point tensor of shape (examples, ...), got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        x = normal_tensor(x).detach()
        counts = torch.zeros(x.shape[0], self.num_classes, dtype=torch.long, device=x.device)
        with attack_mode(self.base_model), torch.no_grad():
            for i in range(x.shape[0]):
                remaining = num
                while remaining > 0:
                    m = min(self.batch_size, remaining)
                    copies = x[i:i + 1].expand(m, *x.shape[1:])
                    noisy = copies + self.sigma * randn(copies.shape, self.generator, x)
                    logits = self.base_model(noisy)
                    if not isinstance(logits, Tensor) or logits.shape != (m, self.num_classes):
                        raise ValueError(f"base_model must return logits of shape (batch, num_classes={self.num_classes}),"
                                         f" got {getattr(logits, 'shape', type(logits).__name__)}")
                    if not bool(torch.isfinite(logits).all()):
                        # argmax reads a NaN as the largest logit: NaN outputs would vote, and be certified
                        raise NonFiniteError("base_model returned NaN/Inf logits on noisy inputs (sigma="
                                             f"{self.sigma:g}); their votes would be meaningless")
                    counts[i] += torch.bincount(logits.argmax(1), minlength=self.num_classes)
                    remaining -= m
        return counts

    # -- the paper's two procedures ---------------------------------------------------------------
    def predict(self, x: Tensor, n: Optional[int] = None, alpha: Optional[float] = None) -> Tensor:
        """PREDICT: the smoothed class per example, ``ABSTAIN`` where the top two counts are not separable.

        Abstains unless the two-sided binomial test of :math:`n_A` against :math:`n_A + n_B` at 1/2 has
        p-value at most ``alpha``; a returned class differs from :math:`g(x)` with probability at most ``alpha``.
        """
        n = self.n if n is None else check_int("n", n, 1)
        alpha = self.alpha if alpha is None else check_fraction("alpha", alpha, open_low=True, open_high=True)
        counts = self.sample_counts(x, n)
        top2 = counts.topk(2, dim=1)
        out = torch.full((x.shape[0],), ABSTAIN, dtype=torch.long, device=counts.device)
        for i in range(x.shape[0]):
            n_a, n_b = int(top2.values[i, 0]), int(top2.values[i, 1])
            if binomtest(n_a, n_a + n_b, 0.5).pvalue <= alpha:
                out[i] = top2.indices[i, 0]
        return out

    def certify(self, x: Tensor, n0: Optional[int] = None, n: Optional[int] = None,
                alpha: Optional[float] = None) -> Certificate:
        """CERTIFY: class and certified L2 radius per example (``ABSTAIN`` and radius 0 where unsure)."""
        n0 = self.n0 if n0 is None else check_int("n0", n0, 1)
        n = self.n if n is None else check_int("n", n, 1)
        alpha = self.alpha if alpha is None else check_fraction("alpha", alpha, open_low=True, open_high=True)
        guess = self.sample_counts(x, n0).argmax(1)
        counts = self.sample_counts(x, n)
        n_a = counts.gather(1, guess[:, None]).squeeze(1)
        p_lower = torch.tensor([clopper_pearson_lower(int(k), n, alpha) for k in n_a.tolist()],
                               dtype=torch.float64, device=counts.device)
        certified = p_lower > 0.5
        radius = torch.zeros_like(p_lower)
        if bool(certified.any()):
            z = torch.tensor(norm.ppf(p_lower[certified].cpu().numpy()), dtype=torch.float64)
            radius[certified] = self.sigma * z.to(radius.device)
        prediction = torch.where(certified, guess, torch.full_like(guess, ABSTAIN))
        return Certificate(prediction=prediction, radius=radius, p_lower=p_lower, counts=counts)

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`predict` (class indices, ``ABSTAIN`` = -1), so the wrapper drops into eval loops."""
        return self.predict(x)


__all__ = ["SmoothedClassifier", "Certificate", "ABSTAIN", "clopper_pearson_lower"]
