"""Universal (input-agnostic) perturbations: one delta for every input."""

from __future__ import annotations

import copy
from typing import Any, Dict, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..adapters.base import BatchView
from ..errors import check_int, check_positive
from ..threats.base import ThreatModel
from ..threats.norms import L1Ball, L2Ball, LinfBall
from .base import Attack, attack_mode, victim_for


def fit_length(delta: Tensor, length: int) -> Tensor:
    """Crop or zero-pad ``delta`` along its last dimension to ``length``."""
    t = delta.shape[-1]
    if t == length:
        return delta
    if t > length:
        return delta[..., :length]
    return F.pad(delta, (0, length - t))


class UniversalPerturbation(Attack):
    """A universal adversarial perturbation learned by projected stochastic gradient ascent.

    Moosavi-Dezfooli et al. 2017, "Universal adversarial perturbations", https://arxiv.org/abs/1610.08401,
    seek one :math:`v` with :math:`\\|v\\|_p \\le \\xi` fooling most inputs; Neekhara et al. 2019,
    "Universal Adversarial Perturbations for Speech Recognition Systems", https://arxiv.org/abs/1905.03828,
    do this for audio. Following the batched variant of Shafahi et al. 2020 (https://arxiv.org/abs/1812.03705,
    Alg. 2) we maximise the expected loss directly,

    .. math:: v \\leftarrow \\Pi_{\\Delta}\\Big(v + \\alpha\\, s\\big(\\nabla_v \\tfrac{1}{|B|}\\sum_{(x,y)\\in B}
       \\mathcal{L}(f(\\mathrm{clip}(x + m \\odot v)), y)\\big)\\Big)

    over the batches of a dataloader, where :math:`s` is the threat model's steepest-ascent direction,
    :math:`\\Pi_\\Delta` its projection, :math:`m` the example's padding mask and ``clip`` the value box.

    The budget is absolute, the same for every input: the threat model is evaluated at a *reference
    signal*, a constant of amplitude ``reference_level`` with the delta's shape. With ``LinfBall(eps)`` or
    ``L2Ball(eps)`` the reference does not matter; with ``PeakDBBall(db)`` the peak of ``v`` is ``db``
    decibels relative to ``reference_level`` (e.g. the dataset's typical peak), with ``SNRBall(snr)`` its
    energy is ``snr`` dB below that of a constant signal at ``reference_level``. At attack time the delta is
    cropped or zero-padded to each batch's length, zeroed on padding and the sum clipped to the value box;
    results report per-example sizes (and dB, for audio threats) of what was actually added.

    Args:
        threat: the budget of the universal delta (see above).
        length: number of samples (last dimension) of the delta; inferred from the first batch if ``None``.
        reference_level: amplitude of the reference signal for relative budgets.
        step_size: step length per update as a fraction of the budget radius.
        adapter, loss, targeted, seed: as for every :class:`Attack` (``targeted`` needs one target class
            for all inputs, ``target_class``).

    Example:
        >>> from mmrobust.attacks import UniversalPerturbation
        >>> from mmrobust.threats import LinfBall
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> attack = UniversalPerturbation(LinfBall(0.1, lower=0, upper=1), seed=0)
        >>> delta = attack.fit(model, [[x, y]], epochs=3)  # any iterable of batches, e.g. a DataLoader
        >>> result = attack(model, [x, y])                   # the same delta added to every input
        >>> delta.shape, bool(((result.inputs["image"] - x).abs() <= 0.1 + 1e-6).all())
        (torch.Size([1, 2, 2]), True)
    """

    name = "universal"
    optimises_each_input = False  # one learned perturbation/generator for every input (mmrobust.checks)

    def __init__(self, threat: ThreatModel, *, length: Optional[int] = None, reference_level: float = 1.0,
                 step_size: float = 0.05, target_class: Optional[int] = None, **kwargs):
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"threat must be one ThreatModel for the universal delta, got {type(threat).__name__}")
        if target_class is not None:
            kwargs["targeted"] = True
        super().__init__(threat, **kwargs)
        self.length = None if length is None else check_int("length", length, 1)
        self.reference_level = check_positive("reference_level", reference_level)
        self.step_size = check_positive("step_size", step_size)
        self.target_class = None if target_class is None else check_int("target_class", target_class, 0)
        self.delta: Optional[Tensor] = None

    # -- the delta --------------------------------------------------------------------------------
    def _reference(self, delta: Tensor) -> Tensor:
        return torch.full_like(delta, self.reference_level)[None]

    def _budget_project(self, delta: Tensor) -> Tensor:
        """Project onto the threat's ball at the reference (the value box is applied per input later)."""
        unboxed = copy.copy(self.threat)
        unboxed.lower = unboxed.upper = None
        return unboxed.project(delta[None], self._reference(delta))[0]

    def radius(self, delta: Tensor) -> Tensor:
        return self.threat.radius(self._reference(delta))

    def apply(self, x: Tensor, delta: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """``clip(x + m * v)`` with ``v`` cropped/padded to ``x``'s length and broadcast over the batch."""
        d = fit_length(delta.to(x.device, x.dtype), x.shape[-1])
        d = d.reshape((1,) * (x.dim() - d.dim()) + tuple(d.shape)).expand_as(x)
        if mask is not None:
            d = d * mask
        adv = x + d
        if self.threat.lower is not None or self.threat.upper is not None:
            adv = adv.clamp(self.threat.lower, self.threat.upper)
        return adv

    def _victim(self, model: nn.Module, batch: Any) -> BatchView:
        victim = victim_for(model, batch, self.adapter)
        if len(victim.inputs) != 1:
            raise ValueError(f"a universal perturbation needs a batch with one attackable input, got {sorted(victim.inputs)}")
        return victim

    def fit(self, model: nn.Module, dataloader: Iterable, epochs: int = 1, *, max_batches: Optional[int] = None,
            progress: bool = False) -> Tensor:
        """Learn the delta over ``epochs`` passes of ``dataloader`` (continuing from the current delta).

        Returns the delta (shape ``(length,)`` or ``(channels, length)``), also kept in ``self.delta``.
        """
        check_int("epochs", epochs, 1)
        gen = None
        with attack_mode(model):
            for epoch in range(epochs):
                batches = dataloader
                if progress:
                    from tqdm.auto import tqdm
                    batches = tqdm(dataloader, desc=f"universal perturbation, epoch {epoch + 1}/{epochs}", leave=False)
                for i, batch in enumerate(batches):
                    if max_batches is not None and i >= max_batches:
                        break
                    victim = self._victim(model, batch)
                    name, x = next(iter(victim.inputs.items()))
                    self.threat.check_input(x, name=name)
                    if self.delta is None:
                        length = self.length or x.shape[-1]
                        shape = tuple(x.shape[1:-1]) + (length,)
                        gen = self.generator()
                        init = self.threat.random_init(torch.full((1,) + shape, self.reference_level,
                                                                  device=x.device, dtype=x.dtype), gen)[0]
                        self.delta = self._budget_project(init * 0.1)
                    delta = self.delta.to(x.device, x.dtype).detach().requires_grad_(True)
                    logits = victim.forward({name: self.apply(x, delta, victim.masks.get(name))})
                    tl = None
                    if self.targeted:
                        tl = torch.full_like(victim.target, self.target_class if self.target_class is not None else 0)
                    loss = self.output_loss(logits, victim, tl).mean()
                    grad, = torch.autograd.grad(loss, delta)
                    with torch.no_grad():
                        r = self.radius(delta)
                        stepped = self.threat.step(delta[None], grad[None], r * self.step_size)[0]
                        self.delta = self._budget_project(stepped).detach()
        return self.delta

    def verified_threats(self, victim: BatchView) -> Dict[str, ThreatModel]:
        """The balls every returned point keeps, for :func:`~mmrobust.threats.verify.verify_result`.

        A relative budget (``SNRBall``, ``PeakDBBall``) holds for the universal delta at the reference signal,
        not for each input (a quiet input gets the same delta as a loud one), so the points are checked
        against the absolute ball of the same norm and that radius: cropping, masking and clipping to the box
        only shrink what is added. Absolute balls are returned as they are.
        """
        threats = self.threats_for(victim)
        if self.delta is None or type(self.threat) in (LinfBall, L2Ball, L1Ball):
            return threats
        ball = {"linf": LinfBall, "l2": L2Ball, "l1": L1Ball}[self.threat.norm]
        absolute = ball(float(self.radius(self.delta).max()), lower=self.threat.lower, upper=self.threat.upper)
        return {name: absolute for name in threats}

    # -- applying it ------------------------------------------------------------------------------
    def __call__(self, model, batch, *, target_labels: Optional[Tensor] = None):
        if self.delta is None:
            raise RuntimeError("the universal perturbation is not learned yet; call fit(model, dataloader) first "
                               "or load_state_dict() a learned one")
        if self.targeted and target_labels is None:
            victim_y = self._victim(model, batch).target
            target_labels = torch.full_like(victim_y, self.target_class or 0)
        return super().__call__(model, batch, target_labels=target_labels)

    def run_training(self, victim, threats=None, *, target_labels=None, objective=None):
        if self.delta is None:
            raise RuntimeError("call fit(model, dataloader) before generate()")
        return super().run_training(victim, threats, target_labels=target_labels, objective=objective)

    def perturb(self, victim, threats, target_labels, clean_logits) -> Dict[str, Tensor]:
        return {k: (self.apply(v, self.delta, victim.masks.get(k)) if k in threats else v)
                for k, v in victim.inputs.items()}

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "delta": None if self.delta is None else self.delta.detach().cpu().clone()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        delta = state.get("delta")
        self.delta = None if delta is None else delta.detach().clone()

    def describe(self) -> str:
        return f"UniversalPerturbation({self.threat!r}, reference_level={self.reference_level:g})"
