"""A threat model in the latent space of a generative model (on-manifold adversarial examples).

Stutz et al. 2019 ("Disentangling adversarial robustness and generalization", https://arxiv.org/abs/1812.00740,
Eq. 3) perturb the latent code of a generative model of the data and decode it,

.. math:: \\max_{\\|\\zeta\\| \\le \\eta} \\mathcal L\\big(f(\\mathrm{dec}(z + \\zeta)), y\\big), \\qquad z = \\mathrm{enc}(x),

so the adversarial example stays on the learned data manifold.

Design: the attack engine is unchanged. :class:`LatentBall` is an ordinary norm ball, but over the latent
code, and :class:`LatentAdapter` wraps the batch adapter so that the victim's attackable input *is* the code
:math:`z = \\mathrm{enc}(x)` and its forward pass decodes before classifying. Any attack (PGD, APGD, ...)
then runs in latent space; ``AttackResult.size`` is the latent norm :math:`\\|\\zeta\\|` and
``AttackResult.batch`` holds the decoded inputs :math:`\\mathrm{dec}(z+\\zeta)`. Note that the clean reference
is the *reconstruction* :math:`\\mathrm{dec}(\\mathrm{enc}(x))`, whose prediction ``AttackResult.clean_logits``
reports. Usage::

    vae = image_vae(1, 28, latent_dim=8); train_vae(vae, x_train)
    threat = LatentBall(1.0, vae.encode_mean, vae.decode)
    result = PGD(threat, adapter=threat.adapter())(model, (x, y))
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional

import torch
from torch import Tensor, nn

from ..adapters.base import BatchAdapter, BatchView, infer_adapter
from ..errors import check_choice
from ..utils import kept_modes
from .base import ThreatModel
from .norms import L1Ball, L2Ball, LinfBall

_BALLS = {"l2": L2Ball, "linf": LinfBall, "l1": L1Ball}


def _owner_modules(fns: Iterable[Callable]) -> List[nn.Module]:
    out: List[nn.Module] = []
    for fn in fns:
        owner = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
        if isinstance(owner, nn.Module) and all(owner is not m for m in out):
            out.append(owner)
    return out


class LatentBall(ThreatModel):
    """A norm ball of radius ``eps`` around the latent code :math:`z=\\mathrm{enc}(x)` (Stutz et al. 2019, Eq. 3).

    .. math:: \\{\\zeta : \\|\\zeta\\|_p \\le \\eta\\},\\qquad \\tilde x = \\mathrm{dec}(\\mathrm{enc}(x) + \\zeta)

    Args:
        eps: latent budget :math:`\\eta`.
        encoder: ``x -> z`` (e.g. ``vae.encode_mean``), deterministic.
        decoder: ``z -> x`` (e.g. ``vae.decode``); its output range defines the valid inputs.
        norm: ``"l2"`` (default), ``"linf"`` or ``"l1"`` in latent space.
    The four operations are those of the latent norm ball (no value box: latent codes are unbounded).
    Attacks need the matching adapter: ``attack = PGD(threat, adapter=threat.adapter())``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from mmrobust.threats import LatentBall
        >>> _ = torch.manual_seed(0)
        >>> encoder, decoder = nn.Linear(4, 2), nn.Linear(2, 4)      # stand-ins for vae.encode_mean / vae.decode
        >>> threat = LatentBall(0.5, encoder, decoder)
        >>> x = torch.rand(3, 4)
        >>> z = threat.encode(x)
        >>> z.shape, threat.decode(z + threat.random_init(z)).shape
        (torch.Size([3, 2]), torch.Size([3, 4]))
    """

    def __init__(self, eps: float, encoder: Callable[[Tensor], Tensor], decoder: Callable[[Tensor], Tensor], *,
                 norm: str = "l2"):
        super().__init__(eps)
        if not callable(encoder) or not callable(decoder):
            raise TypeError("encoder and decoder must be callables mapping inputs to latent codes and back")
        self.norm = check_choice("norm", norm, tuple(_BALLS))
        self.encoder = encoder
        self.decoder = decoder
        self.modules = _owner_modules((encoder, decoder))

    def _ball(self) -> ThreatModel:
        return _BALLS[self.norm](self.eps)

    def random_init(self, x, generator=None):
        return self._ball().random_init(x, generator)

    def step(self, delta, grad, step_size):
        return self._ball().step(delta, grad, step_size)

    def project(self, delta, x, radius=None):
        return self._ball().project(delta, x, radius)

    def size(self, delta, x):
        return self._ball().size(delta, x)

    def encode(self, x: Tensor) -> Tensor:
        with kept_modes(*self.modules, train=False, freeze=True), torch.no_grad():
            z = self.encoder(x)
        if not isinstance(z, Tensor) or z.shape[0] != x.shape[0]:
            raise ValueError("the encoder must return a tensor of latent codes with the batch dimension first")
        return z.detach()

    def decode(self, z: Tensor) -> Tensor:
        """Decode with gradients to ``z`` (the generative model itself stays frozen and in eval mode)."""
        with kept_modes(*self.modules, train=False, freeze=True):
            return self.decoder(z)

    def adapter(self, base: Optional[BatchAdapter] = None, input_name: Optional[str] = None) -> "LatentAdapter":
        """The batch adapter that exposes latent codes to attacks (``base``: how to read the batch)."""
        return LatentAdapter(self, base, input_name)

    def describe(self) -> str:
        return f"LatentBall(eps={self.eps:g}, norm={self.norm})"

    def __repr__(self) -> str:
        return f"LatentBall(eps={self.eps:g}, norm={self.norm!r})"


class LatentAdapter(BatchAdapter):
    """Wraps a batch adapter: the attackable input becomes :math:`z = \\mathrm{enc}(x)`, forward and rebuild
    decode :math:`x = \\mathrm{dec}(z)` first. ``BatchView.meta["latent_of"]`` names the wrapped input.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from mmrobust.threats import LatentBall
        >>> _ = torch.manual_seed(0)
        >>> threat = LatentBall(0.5, nn.Linear(4, 2), nn.Linear(2, 4))
        >>> x, y = torch.rand(3, 4), torch.tensor([0, 1, 2])
        >>> view = threat.adapter().victim(nn.Linear(4, 3), (x, y))
        >>> view.inputs["image"].shape, view.forward(view.inputs).shape, view.meta["latent_of"]
        (torch.Size([3, 2]), torch.Size([3, 3]), 'image')
    """

    def __init__(self, threat: LatentBall, base: Optional[BatchAdapter] = None, input_name: Optional[str] = None):
        if not isinstance(threat, LatentBall):
            raise TypeError(f"threat must be a LatentBall, got {type(threat).__name__}")
        self.threat = threat
        self.base = base
        self.input_name = input_name
        self.modality = getattr(base, "modality", "latent")

    def victim(self, model: nn.Module, batch: Any) -> BatchView:
        return self.latent_victim((self.base or infer_adapter(batch)).victim(model, batch))

    def latent_victim(self, inner: BatchView) -> BatchView:
        """The latent-space view of an input-space victim."""
        name = inner.input_name(self.input_name)
        x = inner.inputs[name]
        z = self.threat.encode(x.clone() if x.is_inference() else x)
        threat = self.threat

        def decoded(inputs):
            out = dict(inputs)
            out[name] = threat.decode(inputs[name])
            return out

        def forward(inputs):
            return inner.forward(decoded(inputs))

        def rebuild(inputs):
            with torch.no_grad():
                return inner.rebuild(decoded(inputs))

        select = None
        if inner.select is not None:
            def select(index):
                return self.latent_victim(inner.select(index))

        others = {k: v for k, v in inner.inputs.items() if k != name}
        return BatchView(inputs={name: z, **others}, target=inner.target, forward=forward, rebuild=rebuild,
                      unit=inner.unit, masks={k: m for k, m in inner.masks.items() if k != name},
                      select=select, meta=dict(inner.meta, latent_of=name))

    def batch_size(self, batch: Any) -> int:
        return (self.base or infer_adapter(batch)).batch_size(batch)
