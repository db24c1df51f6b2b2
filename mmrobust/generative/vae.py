"""Small reference variational auto-encoders whose latent space hosts on-manifold attacks.

A VAE (Kingma & Welling 2014, https://arxiv.org/abs/1312.6114, Eq. 10) is trained on the evidence lower bound

.. math:: \\mathcal L(x) = \\mathbb E_{q(z|x)}[\\log p(x|z)] - \\beta\\,\\mathrm{KL}(q(z|x) \\,\\|\\, \\mathcal N(0, I)),

with :math:`q(z|x) = \\mathcal N(\\mu(x), \\mathrm{diag}\\,\\sigma^2(x))` and the reparameterisation trick.
Two likelihoods: ``"bernoulli"`` for images in [0, 1] (the decoder ends in a sigmoid, so decoded inputs are
valid images) and ``"gaussian"`` (unit variance) for real-valued features such as standardised log-mel frames.
Stutz et al. 2019 (https://arxiv.org/abs/1812.00740) use such class-agnostic VAE-GANs as the data manifold for
on-manifold adversarial examples; the latent-space threat model is :class:`~mmrobust.threats.latent.LatentBall`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import check_choice, check_finite_nonneg, check_int, check_positive
from ..utils import kept_modes

LIKELIHOODS = ("bernoulli", "gaussian")


class VAE(nn.Module):
    """A multilayer-perceptron VAE for inputs of a fixed shape.

    Args:
        input_shape: shape of one input, e.g. ``(1, 28, 28)`` or ``(n_mels, frames)``.
        latent_dim: dimension of :math:`z`.
        hidden: widths of the hidden layers (mirrored in the decoder).
        likelihood: ``"bernoulli"`` (inputs in [0, 1], sigmoid decoder) or ``"gaussian"`` (real inputs).
    """

    def __init__(self, input_shape: Sequence[int], latent_dim: int = 8, hidden: Sequence[int] = (256, 128),
                 likelihood: str = "bernoulli"):
        super().__init__()
        self.input_shape = tuple(check_int("input_shape entries", int(s), 1) for s in input_shape)
        self.latent_dim = check_int("latent_dim", latent_dim, 1)
        self.likelihood = check_choice("likelihood", likelihood, LIKELIHOODS)
        hidden = [check_int("hidden entries", int(h), 1) for h in hidden]
        d = math.prod(self.input_shape)
        enc: List[nn.Module] = [nn.Flatten()]
        width = d
        for h in hidden:
            enc += [nn.Linear(width, h), nn.SiLU()]
            width = h
        self.encoder = nn.Sequential(*enc)
        self.to_stats = nn.Linear(width, 2 * latent_dim)
        dec: List[nn.Module] = []
        width = latent_dim
        for h in reversed(hidden):
            dec += [nn.Linear(width, h), nn.SiLU()]
            width = h
        dec.append(nn.Linear(width, d))
        self.decoder = nn.Sequential(*dec)

    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"the VAE expects inputs of shape (batch, {', '.join(map(str, self.input_shape))}), "
                             f"got {tuple(x.shape)}")

    def encode(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Posterior mean and log-variance :math:`(\\mu(x), \\log\\sigma^2(x))`."""
        self._check(x)
        mu, logvar = self.to_stats(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 8)

    def encode_mean(self, x: Tensor) -> Tensor:
        """The posterior mean :math:`\\mu(x)`: the deterministic latent code attacks start from."""
        return self.encode(x)[0]

    def decode_logits(self, z: Tensor) -> Tensor:
        return self.decoder(z).reshape(z.shape[0], *self.input_shape)

    def decode(self, z: Tensor) -> Tensor:
        """The decoder's mean :math:`\\mathbb E[x|z]` (in [0, 1] for the Bernoulli likelihood)."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"latent codes must have shape (batch, {self.latent_dim}), got {tuple(z.shape)}")
        out = self.decode_logits(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Reconstruction (mean) of a reparameterised sample, posterior mean and log-variance."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decode(z), mu, logvar

    def elbo_loss(self, x: Tensor, beta: float = 1.0, generator: Optional[torch.Generator] = None) -> Tensor:
        """Negative ELBO per input, averaged over the batch (Kingma & Welling 2014, Eq. 10)."""
        mu, logvar = self.encode(x)
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype) \
            if generator is None or generator.device == mu.device else \
            torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
        z = mu + noise * (0.5 * logvar).exp()
        out = self.decode_logits(z)
        if self.likelihood == "bernoulli":
            rec = F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)
        else:
            rec = 0.5 * (out - x).pow(2).flatten(1).sum(1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return (rec + beta * kl).mean()


def image_vae(channels: int = 1, image_size: int = 28, latent_dim: int = 8) -> VAE:
    """A Bernoulli VAE for digit images (MNIST 28x28, scikit-learn digits 8x8) with values in [0, 1]."""
    return VAE((channels, image_size, image_size), latent_dim, (256, 128), "bernoulli")


def audio_feature_vae(n_mels: int = 40, frames: int = 1, latent_dim: int = 8) -> VAE:
    """A Gaussian VAE for (standardised) log-mel feature patches of shape ``(n_mels, frames)``."""
    return VAE((n_mels, frames), latent_dim, (128, 64), "gaussian")


def _batches(data: Union[Tensor, Iterable], batch_size: int, generator: torch.Generator):
    if isinstance(data, Tensor):
        perm = torch.randperm(data.shape[0], generator=generator)
        for i in range(0, data.shape[0], batch_size):
            yield data[perm[i:i + batch_size].to(data.device)]
        return
    for batch in data:
        yield batch[0] if isinstance(batch, (list, tuple)) else batch


def train_vae(vae: VAE, data: Union[Tensor, Iterable], *, epochs: int = 10, batch_size: int = 128,
              lr: float = 1e-3, beta: float = 1.0, seed: Optional[int] = 0,
              max_seconds: Optional[float] = None) -> Dict[str, Any]:
    """Train ``vae`` on ``data`` (a tensor of inputs, or an iterable of tensors / ``(x, ...)`` batches) by
    minimising the negative ELBO with Adam. Restores the VAE's training flag afterwards.

    Returns ``{"loss": [mean negative ELBO per epoch], "epochs": epochs run}``; ``max_seconds`` stops early.
    """
    import time

    if not isinstance(vae, VAE):
        raise TypeError(f"vae must be a mmrobust.generative.VAE, got {type(vae).__name__}")
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    check_positive("lr", lr)
    check_finite_nonneg("beta", beta)
    if max_seconds is not None:
        check_positive("max_seconds", max_seconds)
    gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
    device = next(vae.parameters()).device
    sample_gen = torch.Generator(device=device).manual_seed(0 if seed is None else int(seed) + 1)
    opt = torch.optim.Adam(vae.parameters(), lr)
    history: List[float] = []
    start = time.perf_counter()
    with kept_modes(vae, train=True):
        for _ in range(epochs):
            total, count = 0.0, 0
            for x in _batches(data, batch_size, gen):
                x = x.to(device)
                if vae.likelihood == "bernoulli" and (float(x.min()) < 0 or float(x.max()) > 1):
                    raise ValueError("a Bernoulli VAE needs inputs in [0, 1]; rescale them or use likelihood='gaussian'")
                opt.zero_grad()
                loss = vae.elbo_loss(x, beta, sample_gen)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * x.shape[0]
                count += x.shape[0]
            history.append(total / max(count, 1))
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                break
    return {"loss": history, "epochs": len(history)}
