"""Expectation over Transformation (Athalye et al. 2018) around any gradient attack."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from ..adapters.base import BatchView
from ..errors import check_int
from ..threats.base import ThreatModel
from .base import Attack, AttackResult


class RandomTransforms(nn.Module):
    """Apply transforms in sequence, each with its own draw from the shared generator."""

    def __init__(self, transforms: Sequence[nn.Module]):
        super().__init__()
        if isinstance(transforms, nn.Module):
            transforms = [transforms]
        transforms = list(transforms)
        for i, t in enumerate(transforms):
            if not callable(t):
                raise TypeError(f"transforms[{i}] must be a callable module forward(x, generator), got {type(t).__name__}")
        self.transforms = nn.ModuleList(t for t in transforms if isinstance(t, nn.Module))
        self._steps = transforms  # in the given order, plain callables included

    def forward(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        for t in self._steps:
            x = t(x, generator)
        return x


def _compose(transforms) -> Callable:
    if isinstance(transforms, RandomTransforms):
        return transforms
    if callable(transforms) and not isinstance(transforms, (list, tuple)):
        return transforms
    return RandomTransforms(list(transforms))


def eot_victim(victim: BatchView, transform: Callable, samples: int,
               generator: Optional[torch.Generator] = None) -> BatchView:
    """A victim whose forward is the model's expected log-probability under random transforms.

    .. math:: \\tilde f(x) = \\frac1S \\sum_{s=1}^{S} \\log\\mathrm{softmax}\\, f(t_s(x)),\\quad t_s \\sim T

    Every call draws ``samples`` fresh transforms (from ``generator``); each is applied to the whole
    batch and run through the model in its own forward pass (the samples are not stacked into one
    batch). Attacks differentiating any loss of :math:`\\tilde f` therefore follow the Monte-Carlo
    EOT gradient. ``transform(tensor, generator)`` is applied to every attackable input, so any modality
    with dense inputs works (waveforms, images).
    """

    def forward(inputs: Dict[str, Tensor]) -> Tensor:
        total = None
        for _ in range(samples):
            moved = {k: transform(v, generator) for k, v in inputs.items()}
            logp = victim.forward(moved).log_softmax(1)
            total = logp if total is None else total + logp
        return total / samples

    def select(index: Tensor) -> BatchView:
        return eot_victim(victim.select(index), transform, samples, generator)

    return BatchView(inputs=victim.inputs, target=victim.target, forward=forward, rebuild=victim.rebuild,
                  unit=victim.unit, masks=victim.masks, select=None if victim.select is None else select,
                  meta=victim.meta, deterministic=False)


class EOT(Attack):
    """Expectation over Transformation (Athalye, Engstrom, Ilyas & Kwok 2018, "Synthesizing Robust
    Adversarial Examples", https://arxiv.org/abs/1707.07397, Eq. 1 and Sec. 2):

    .. math:: \\max_{\\delta \\in \\Delta(x)} \\mathbb{E}_{t \\sim T}\\, \\mathcal{L}(f(t(x + \\delta)), y)

    Wraps any gradient attack: the wrapped attack runs unchanged against :func:`eot_victim`, whose
    output averages log-probabilities over ``samples`` random transforms drawn anew at every forward
    pass (so each gradient is the average over the sampled transforms). Success and the returned logits
    are those of the plain model on the final perturbation (as the wrapped attack would report them);
    the result's extras add an over-the-air-like evaluation under ``eval_samples`` fresh transforms:

    * ``extras["eot/transformed_accuracy"]`` -- per output, fraction of fresh draws classified correctly;
    * ``extras["eot/transformed_success"]`` -- per output, fraction of draws on which the attack's goal holds;
    * ``extras["eot/clean_transformed_accuracy"]`` -- the same accuracy for the clean input.

    Args:
        attack: any :class:`Attack` whose gradients come from ``victim.forward`` (PGD, APGD, FMN, ...).
        transforms: a module ``forward(x, generator)`` or a sequence of them applied in order
            (e.g. :mod:`mmrobust.audio.transforms`).
        samples: transforms averaged per forward pass during the attack (20, AutoAttack's ``version='rand'``).
        eval_samples: fresh transforms for the final evaluation (0 disables it).
        seed: seed of the transform generator (``None``: the global RNG).

    Example:
        >>> from mmrobust.attacks import EOT, PGD
        >>> from mmrobust.audio.transforms import AddNoise
        >>> from mmrobust.threats import LinfBall
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> attack = EOT(PGD(LinfBall(0.1, lower=0, upper=1), steps=3, seed=0), AddNoise(snr_db=30), samples=2,
        ...              eval_samples=4, seed=0)
        >>> result = attack(model, [x, y])
        >>> sorted(result.extras), result.extras["eot/transformed_accuracy"].shape
        (['eot/clean_transformed_accuracy', 'eot/transformed_accuracy', 'eot/transformed_success'], torch.Size([8]))
    """

    name = "eot"

    def __init__(self, attack: Attack, transforms, *, samples: int = 20, eval_samples: int = 16,
                 seed: Optional[int] = None):
        if not isinstance(attack, Attack):
            raise TypeError(f"attack must be an mmrobust Attack, got {type(attack).__name__}")
        super().__init__(attack.threat, loss=attack.loss_fn, targeted=attack.targeted, adapter=attack.adapter,
                         seed=seed)
        self.loss_name = attack.loss_name
        self.attack = attack
        self.transform = _compose(transforms)
        self.samples = check_int("samples", samples, 1)
        self.eval_samples = check_int("eval_samples", eval_samples, 0)

    def describe(self) -> str:
        return f"EOT({self.attack.describe()}, samples={self.samples})"

    @property
    def bounded(self) -> bool:
        """The inner attack's: ``EOT(FMN(cap=False))`` may return points outside the threat model."""
        return getattr(self.attack, "bounded", True)

    def with_threat(self, threat) -> "EOT":
        clone = super().with_threat(threat)
        clone.attack = self.attack.with_threat(threat)
        return clone

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "attack": self.attack.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "attack" in state:
            self.attack.load_state_dict(state["attack"])

    def perturb(self, victim, threats: Dict[str, ThreatModel], target_labels, clean_logits):
        wrapped = eot_victim(victim, self.transform, self.samples, self.generator())
        given = None if self.objective is None else self.objective.targets  # the caller's targets, if any
        inner = self.attack.pursuing(self.attack.objective_for(wrapped, given, clean_logits))
        out = inner.perturb(wrapped, threats, target_labels, clean_logits)
        # logits the inner attack may return are expectations; let finish() evaluate the plain model
        return out[0] if isinstance(out, tuple) else out

    @torch.no_grad()
    def transformed_predictions(self, victim: BatchView, inputs: Dict[str, Tensor], draws: int) -> Tensor:
        """``(draws, outputs)`` predicted classes under fresh random transforms."""
        gen = self.generator()
        preds = [victim.forward({k: self.transform(v, gen) for k, v in inputs.items()}).argmax(1)
                 for _ in range(draws)]
        return torch.stack(preds)

    def finish(self, victim, threats, adv, clean_logits, target_labels, logits=None) -> AttackResult:
        result = super().finish(victim, threats, adv, clean_logits, target_labels, logits)
        if self.eval_samples:
            adv_pred = self.transformed_predictions(victim, result.inputs, self.eval_samples)
            clean_pred = self.transformed_predictions(victim, victim.inputs, self.eval_samples)
            y = victim.target[None]
            goal = adv_pred == target_labels[None] if self.targeted else adv_pred != y
            result.extras["eot/transformed_accuracy"] = (adv_pred == y).float().mean(0)
            result.extras["eot/transformed_success"] = goal.float().mean(0)
            result.extras["eot/clean_transformed_accuracy"] = (clean_pred == y).float().mean(0)
        return result
