"""Knowledge distillation objectives: KD (Hinton et al. 2015), ARD (Goldblum et al. 2020), RSLAD (Zi et al. 2021).

Conventions: ``student_logits``/``teacher_logits`` are ``(outputs, C)``; losses are batch means.
The adversarial variants attack the *student* with any mmrobust :class:`~mmrobust.attacks.Attack` (e.g.
PGD), read batches through adapters, and so work for every modality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..adapters.base import BatchAdapter, stage_adapter
from ..attacks.base import Attack
from ..errors import check_choice, check_fraction, check_positive
from ..utils import kept_modes

__all__ = ["kd_loss", "soft_kl", "DistillationObjective", "load_teacher"]


def soft_kl(student_logits: Tensor, teacher_probs: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-output :math:`\\mathrm{KL}(p_t \\,\\|\\, \\mathrm{softmax}(z_s/T))` with teacher probabilities ``p_t``."""
    log_s = F.log_softmax(student_logits / temperature, dim=1)
    return (teacher_probs * (teacher_probs.clamp_min(1e-12).log() - log_s)).sum(1)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, y: Optional[Tensor] = None, *,
            temperature: float = 4.0, alpha: float = 0.9) -> Tensor:
    """Knowledge distillation (Hinton et al. 2015, https://arxiv.org/abs/1503.02531, Sec. 2).

    .. math:: \\alpha T^2\\, \\mathrm{KL}(\\sigma(z_t/T) \\,\\|\\, \\sigma(z_s/T)) + (1-\\alpha)\\,\\mathrm{CE}(z_s, y)

    The :math:`T^2` factor keeps the soft-target gradients' scale independent of ``T`` (Hinton et al.).
    Without labels ``y`` only the soft term is used.
    """
    temperature = check_positive("temperature", temperature)
    alpha = check_fraction("alpha", alpha)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits and teacher_logits must have the same shape (outputs, C), got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    soft = soft_kl(student_logits, F.softmax(teacher_logits.detach() / temperature, 1), temperature).mean()
    if y is None:
        return temperature ** 2 * soft
    return alpha * temperature ** 2 * soft + (1 - alpha) * F.cross_entropy(student_logits, y)


def load_teacher(teacher: Union[nn.Module, str, Path], teacher_model: Optional[nn.Module] = None) -> nn.Module:
    """A teacher module, or ``teacher_model`` with weights loaded from the checkpoint path ``teacher``
    (a state_dict or Lightning checkpoint, read with ``torch.load(weights_only=True)``)."""
    if isinstance(teacher, nn.Module):
        return teacher
    if isinstance(teacher, (str, Path)):
        if not isinstance(teacher_model, nn.Module):
            raise TypeError("a teacher checkpoint path needs teacher_model, the nn.Module to load the weights into")
        from ..checkpoints import load_weights

        return load_weights(teacher_model, teacher)
    raise TypeError(f"teacher must be an nn.Module or a checkpoint path, got {type(teacher).__name__}")


class DistillationObjective:
    """Distillation loss of a student on a batch: ``objective(student, batch) -> scalar loss``.

    Methods (the teacher is frozen and run in eval mode):

    * ``"kd"`` -- Hinton et al. 2015 (:func:`kd_loss`) on clean inputs.
    * ``"ard"`` -- adversarially robust distillation (Goldblum et al. 2020, https://arxiv.org/abs/1905.09747,
      Eq. 2): the student on adversarial inputs matches the teacher on clean inputs,

      .. math:: \\alpha T^2\\,\\mathrm{KL}(\\sigma(t(x)/T)\\,\\|\\,\\sigma(s(x+\\delta)/T)) + (1-\\alpha)\\,\\mathrm{CE}(s(x), y),
          \\quad \\delta = \\arg\\max_{\\delta\\in\\Delta} \\mathrm{CE}(s(x+\\delta), y)

      (``attack`` keeps its own loss, cross-entropy in the paper).
    * ``"rslad"`` -- robust soft label adversarial distillation (Zi et al. 2021,
      https://arxiv.org/abs/2108.07969, Eq. 6-7): robust soft labels :math:`p_t = \\sigma(t(x))` replace the
      hard labels everywhere, also inside the attack,

      .. math:: \\alpha\\,\\mathrm{KL}(p_t \\,\\|\\, \\sigma(s(x+\\delta))) + (1-\\alpha)\\,\\mathrm{KL}(p_t\\,\\|\\,\\sigma(s(x))),
          \\quad \\delta = \\arg\\max_{\\delta\\in\\Delta} \\mathrm{KL}(p_t \\,\\|\\, \\sigma(s(x+\\delta)))

      with :math:`\\alpha = 5/6` in the paper.

    Args:
        teacher: the teacher ``nn.Module`` or a checkpoint path (then ``teacher_model`` is needed).
        method: ``"kd"``, ``"ard"`` or ``"rslad"``.
        temperature: ``T`` (KD/ARD; RSLAD uses ``T = 1``).
        alpha: weight of the distillation term; default 0.9 (KD), 1.0 (ARD on MNIST/CIFAR in the paper uses
            1.0 with ``T = 30``), 5/6 (RSLAD).
        attack: the student's attack for ARD/RSLAD, e.g. ``PGD(LinfBall(8/255), steps=10)``.
    """

    def __init__(self, teacher: Union[nn.Module, str, Path], *, method: str = "kd", temperature: float = 4.0,
                 alpha: Optional[float] = None, attack: Optional[Attack] = None,
                 teacher_model: Optional[nn.Module] = None, adapter: Optional[BatchAdapter] = None):
        self.method = check_choice("method", method, {"kd", "ard", "rslad"})
        self.teacher = load_teacher(teacher, teacher_model)
        self.temperature = check_positive("temperature", temperature)
        default_alpha = {"kd": 0.9, "ard": 1.0, "rslad": 5 / 6}[method]
        self.alpha = check_fraction("alpha", default_alpha if alpha is None else alpha)
        if method != "kd" and not isinstance(attack, Attack):
            raise TypeError(f"method={method!r} needs attack=<an mmrobust Attack> for the student's adversarial inputs")
        self.attack = attack
        self.adapter = adapter

    @property
    def runs_clean_pass(self) -> bool:
        """Whether the objective runs the student on the clean inputs: always for KD, for ARD and RSLAD when
        ``alpha < 1`` (their clean term); otherwise the student only sees its adversarial inputs."""
        return self.method == "kd" or self.alpha < 1

    def _teacher_on(self, batch: Any, adapter: BatchAdapter) -> Tensor:
        with kept_modes(self.teacher, train=False), torch.no_grad():
            tv = adapter.victim(self.teacher, batch)
            return tv.forward(tv.inputs).detach()

    def __call__(self, student: nn.Module, batch: Any) -> Tensor:
        adapter = stage_adapter(batch, "train", self.adapter)
        victim = adapter.victim(student, batch)
        y = victim.target
        t_logits = self._teacher_on(batch, adapter)
        if self.method == "kd":
            return kd_loss(victim.forward(victim.inputs), t_logits, y, temperature=self.temperature, alpha=self.alpha)
        if self.method == "ard":
            adv = (self.attack if self.attack.adapter else self.attack.with_adapter(adapter)).generate(student, batch)
            av = adapter.victim(student, adv)
            soft = soft_kl(av.forward(av.inputs), F.softmax(t_logits / self.temperature, 1), self.temperature).mean()
            loss = self.alpha * self.temperature ** 2 * soft
            if self.alpha < 1:
                loss = loss + (1 - self.alpha) * F.cross_entropy(victim.forward(victim.inputs), y)
            return loss
        # RSLAD: the attack maximises the KL to the robust soft labels
        soft_labels = F.softmax(t_logits, 1)
        attack = self.attack.with_adapter(self.attack.adapter or adapter)
        attack.loss_fn = lambda logits, labels, target=None: soft_kl(logits, soft_labels)
        attack.loss_name = "kl_to_teacher"
        adv = attack.generate(student, batch)
        av = adapter.victim(student, adv)
        loss = self.alpha * soft_kl(av.forward(av.inputs), soft_labels).mean()
        if self.alpha < 1:
            loss = loss + (1 - self.alpha) * soft_kl(victim.forward(victim.inputs), soft_labels).mean()
        return loss
