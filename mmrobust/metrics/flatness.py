"""Flatness of the (robust) loss in weight space (Stutz et al. 2021)."""

from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from ..adapters.base import BatchAdapter
from ..attacks.base import Attack, attack_mode, check_logits, victim_for
from ..attacks.losses import get_loss
from ..errors import NonFiniteError, check_int, check_positive
from ..threats.weights import WeightBall, perturbed_weights
from ..utils import make_generator


def _all_weights(ball: WeightBall) -> WeightBall:
    clone = copy.copy(ball)
    clone.trainable_only = False
    return clone


class WeightFlatness(Metric):
    """Average- and worst-case flatness of the (robust) loss around the weights.

    Stutz, Hein, Schiele 2021, "Relating Adversarially Robust Generalization to Flat Minima"
    (https://arxiv.org/abs/2104.04448), Eq. 3 (average case) and Eq. 4 (worst case), with adversarial
    examples :math:`\\tilde x` computed once at the clean weights :math:`w` and held fixed:

    .. math:: \\text{average} = \\mathbb E_{\\nu \\in B_\\xi(w)}\\big[\\mathcal L(f(\\tilde x; w + \\nu), y)\\big]
              - \\mathcal L(f(\\tilde x; w), y),\\qquad
              \\text{worst} = \\max_{\\nu \\in B_\\xi(w)} \\mathcal L(f(\\tilde x; w + \\nu), y) - \\mathcal L(f(\\tilde x; w), y)

    where :math:`B_\\xi(w) = \\{\\nu : \\|\\nu_l\\|_2 \\le \\xi \\|w_l\\|_2\\}` per layer, normalisation layers
    excluded (a :class:`~mmrobust.threats.WeightBall`). The average case draws ``samples`` perturbations
    uniformly in the ball; the worst case runs ``steps`` normalised projected gradient-ascent steps from
    a random start and keeps the best point (including ``w`` itself, so it is never negative). As in Stutz
    et al., random directions need a far larger budget than adversarial ones to change the loss, hence
    two balls; the defaults (relative L2, biases included) are ``xi = 0.5`` for the average case and
    ``xi = 0.01`` for the worst case (on the digits CNN these give increases of similar order).

    The worst case is maximised per ``update`` batch, so it grows with smaller batches; use the same
    batch size when comparing models. The model runs in eval mode; its weights, modes, flags and
    ``.grad`` are restored exactly afterwards (also on exceptions).

    Args:
        average_ball: the ball for random perturbations (``worst_ball`` when only that is given).
        worst_ball: the ball for the adversarial perturbation (``average_ball`` when only that is given).
        samples: random perturbations per batch.
        steps: ascent steps for the worst case.
        step_size: ascent step as a fraction of each layer's radius; default ``2.5 / steps``.
        loss: per-output loss from the attack-loss registry (``"ce"`` default) or a callable.
        seed: seed of the random perturbations (``None``: global RNG).
        adapter: batch adapter; inferred from the batch when ``None``.

    ``compute()`` returns ``{"average_case", "worst_case", "clean_loss"}`` (losses averaged over outputs).

    Example:
        >>> from mmrobust.metrics import WeightFlatness
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> metric = WeightFlatness(samples=4, steps=3)
        >>> metric.update(model, (x, y))              # pass attack=... to measure the robust loss's flatness
        >>> out = metric.compute()
        >>> sorted(out), bool(out["worst_case"] >= 0), round(float(out["clean_loss"]), 3)
        (['average_case', 'clean_loss', 'worst_case'], True, 0.968)
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, average_ball: Optional[WeightBall] = None, *, worst_ball: Optional[WeightBall] = None,
                 samples: int = 10, steps: int = 10, step_size: Optional[float] = None, loss="ce",
                 seed: Optional[int] = 0, adapter: Optional[BatchAdapter] = None, **kwargs):
        super().__init__(**kwargs)
        if average_ball is None and worst_ball is None:
            average_ball, worst_ball = WeightBall(0.5, include_biases=True), WeightBall(0.01, include_biases=True)
        self.average_ball = average_ball if average_ball is not None else worst_ball
        self.worst_ball = worst_ball if worst_ball is not None else average_ball
        for name, ball in (("average_ball", self.average_ball), ("worst_ball", self.worst_ball)):
            if not isinstance(ball, WeightBall):
                raise TypeError(f"{name} must be a WeightBall, got {type(ball).__name__}")
        # flatness is a property of the function, not of the training set-up: frozen layers count too
        self.average_ball, self.worst_ball = _all_weights(self.average_ball), _all_weights(self.worst_ball)
        self.samples = check_int("samples", samples, 1)
        self.steps = check_int("steps", steps, 0)
        self.step_size = 2.5 / max(self.steps, 1) if step_size is None else check_positive("step_size", step_size)
        self.loss_fn = get_loss(loss)
        self.seed = seed
        self.adapter = adapter
        self._generator = make_generator(seed)
        self.add_state("clean_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("average_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("worst_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _loss(self, victim, inputs) -> Tensor:
        logits = victim.forward(inputs)
        check_logits(logits, victim, "under a weight perturbation")
        return self.loss_fn(logits, victim.target, None)

    def update(self, model: nn.Module, batch: Any, attack: Optional[Attack] = None) -> None:
        """Add one batch: clean-weight loss, mean loss under random and loss under adversarial weights."""
        if attack is not None:
            batch = attack(model, batch).batch  # fixed adversarial examples at the clean weights
        with attack_mode(model):
            victim = victim_for(model, batch, self.adapter)
            inputs = victim.inputs
            with torch.no_grad():
                clean = self._loss(victim, inputs)
                average = torch.zeros_like(clean)
                for _ in range(self.samples):
                    with perturbed_weights(model, self.average_ball.random(model, self._generator)):
                        average += self._loss(victim, inputs)
                average /= self.samples
            worst = self._worst_case(model, victim, inputs, clean)
        self.clean_sum += clean.sum().to(self.clean_sum)
        self.average_sum += average.sum().to(self.average_sum)
        self.worst_sum += worst.sum().to(self.worst_sum)
        self.count += clean.numel()

    def _worst_case(self, model: nn.Module, victim, inputs, clean: Tensor) -> Tensor:
        """Per-output losses at the batch's best adversarial weights (``clean`` if nothing beats it)."""
        ball = self.worst_ball
        params = ball.parameters(model)
        radius = ball.radius(model)
        best, best_mean = clean, clean.mean()
        if self.steps == 0 or not params:
            return best
        for p in params.values():  # attack_mode froze them; weight gradients are needed here
            p.requires_grad_(True)
        deltas = ball.random(model, self._generator)
        for step in range(self.steps + 1):
            with perturbed_weights(model, deltas), torch.set_grad_enabled(step < self.steps):
                loss = self._loss(victim, inputs)
                if step < self.steps:
                    grads = torch.autograd.grad(loss.sum(), list(params.values()), allow_unused=True)
            loss = loss.detach()
            if float(loss.mean()) > float(best_mean):
                best, best_mean = loss, loss.mean()
            if step == self.steps:
                break
            grads = {k: g for k, g in zip(params, grads) if g is not None}
            if not all(bool(torch.isfinite(g).all()) for g in grads.values()):
                raise NonFiniteError("NaN/Inf in the weight gradient while measuring worst-case flatness")
            with torch.no_grad():
                deltas = ball.project(ball.step(deltas, grads, self.step_size, radius), radius)
        return best

    def compute(self) -> Dict[str, Tensor]:
        return weight_flatness_compute(self.clean_sum, self.average_sum, self.worst_sum, self.count)


def weight_flatness_compute(clean_sum: Tensor, average_sum: Tensor, worst_sum: Tensor,
                            count: Tensor) -> Dict[str, Tensor]:
    """``average_case``, ``worst_case`` (loss increases over the clean-weight loss) and ``clean_loss``, each
    averaged over the ``count`` outputs summed into the losses."""
    if float(count) == 0:
        raise RuntimeError("WeightFlatness.compute() called before any update()")
    clean = clean_sum / count
    return {"average_case": (average_sum / count - clean).float(), "worst_case": (worst_sum / count - clean).float(),
            "clean_loss": clean.float()}


def weight_flatness(model: nn.Module, batch: Any, attack: Optional[Attack] = None,
                    average_ball: Optional[WeightBall] = None, **kwargs: Any) -> Dict[str, Tensor]:
    """:class:`WeightFlatness` of one batch (its update is the measurement: random and adversarial weight
    perturbations around ``model``); ``kwargs`` as the class's."""
    metric = WeightFlatness(average_ball, **kwargs)
    metric.update(model, batch, attack)
    return metric.compute()


__all__ = ["WeightFlatness"]
