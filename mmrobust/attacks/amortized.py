"""Amortised attacks: a generator network outputs the perturbation in one forward pass (AdvGAN-style).

Xiao et al. 2018 ("Generating adversarial examples with adversarial networks", https://arxiv.org/abs/1801.02610,
Eq. 1-4) train a generator :math:`G_\\phi` so that :math:`x + G_\\phi(x)` fools the classifier, with a
soft hinge on the perturbation norm and a GAN term for realism. Here the budget is enforced exactly instead:
the generator's output is mapped into the threat model and the generator maximises the attack loss,

.. math:: \\max_\\phi\\ \\mathbb E_{(x,y)}\\, \\mathcal L\\big(f(x + \\Pi_{\\Delta(x)}(r\\,s(G_\\phi(x)))), y\\big),

with :math:`s(g) = \\tanh(g)` for L-inf balls (AdvGAN's bounded output) and :math:`s(g) = g / \\|g\\|` in the
threat's norm otherwise (the generator picks a direction and spends the full budget; squashing would saturate and
stall training), and :math:`\\Pi` the threat model's exact projection (the hinge loss of Eq. 3 becomes unnecessary;
the GAN term of Eq. 2 is not used: realism comes from the threat model). After training, an attack costs one
generator forward pass, so adversarial training with it (``online=True`` also updates the generator on every
training batch, against the current classifier) is much cheaper per step than PGD-AT.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..adapters.base import BatchView
from ..errors import check_int, check_positive
from ..threats.base import ThreatModel, per_unit
from ..utils import kept_modes
from .base import Attack, apply_masks, attack_mode, prepared, victim_for


class ConvPerturbationGenerator(nn.Module):
    """A small fully convolutional generator for ``(N, C, H, W)`` inputs (encoder-residual-decoder as in
    AdvGAN's generator, scaled down): output has the input's shape, unbounded (the attack maps it into the
    threat model).

    Example:
        >>> import torch
        >>> from mmrobust.attacks import ConvPerturbationGenerator
        >>> generator = ConvPerturbationGenerator(channels=3, width=8, blocks=1)
        >>> generator(torch.zeros(2, 3, 16, 16)).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(self, channels: int = 1, width: int = 32, blocks: int = 2):
        super().__init__()
        check_int("channels", channels, 1)
        check_int("width", width, 1)
        check_int("blocks", blocks, 0)
        layers: List[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        for _ in range(blocks):
            # no batch norm: the generator is trained on small batches and used in eval mode right after
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MLPPerturbationGenerator(nn.Module):
    """A generator for inputs of any fixed shape (waveforms, features): flatten, MLP, reshape.

    Example:
        >>> import torch
        >>> from mmrobust.attacks import MLPPerturbationGenerator
        >>> generator = MLPPerturbationGenerator((1, 16000), hidden=8)  # one second of 16 kHz audio
        >>> generator(torch.zeros(2, 1, 16000)).shape
        torch.Size([2, 1, 16000])
    """

    def __init__(self, input_shape: Sequence[int], hidden: int = 256):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        d = math.prod(self.input_shape)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, check_int("hidden", hidden, 1)), nn.ReLU(),
                                 nn.Linear(hidden, d))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).reshape(x.shape[0], *self.input_shape)


class AmortizedAttack(Attack):
    """An attack computed by a trained generator network (Xiao et al. 2018, Eq. 1 and 4, with the budget
    enforced by projection).

    .. math:: \\delta(x) = \\Pi_{\\Delta(x)}\\big(r(x)\\, s(G_\\phi(x))\\big)

    Args:
        threat: a single :class:`~mmrobust.threats.ThreatModel` (the generator's outputs are projected onto it).
        generator: ``x -> raw perturbation`` of ``x``'s shape (e.g. :class:`ConvPerturbationGenerator`).
        lr: Adam learning rate of the generator.
        online: if true, :meth:`generate` (used by adversarial training) first takes ``online_steps`` generator
            updates on the batch against the current model, so the generator tracks the classifier.
        loss: the attack loss the generator maximises (default ``"margin"``, the C&W loss AdvGAN uses, Eq. 4).
        kappa: cap on the per-output loss while training the generator, :math:`\\min(\\mathcal L, \\kappa)`; with
            the margin loss and ``kappa=0`` an output stops pulling the generator once it is misclassified
            (AdvGAN's :math:`\\max(Z_y - \\max_{i\\ne y} Z_i, -\\kappa)`, Eq. 4). ``None``: no cap.
    ``fit(model, data)`` trains the generator against a fixed model; ``update(model, batch)`` is one step.
    The generator and its optimiser state are part of :meth:`state_dict`.

    Example:
        >>> import torch
        >>> from mmrobust.attacks import AmortizedAttack, ConvPerturbationGenerator
        >>> from mmrobust.threats import LinfBall
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> _ = torch.manual_seed(0)
        >>> attack = AmortizedAttack(LinfBall(0.1, lower=0, upper=1), ConvPerturbationGenerator(channels=1, width=4))
        >>> losses = attack.fit(model, [[x, y]], epochs=3)  # mean attack loss per epoch; any iterable of batches
        >>> result = attack(model, [x, y])                   # one forward pass of the generator
        >>> len(losses), bool(((result.inputs["image"] - x).abs() <= 0.1 + 1e-6).all())
        (3, True)
    """

    name = "amortized"
    optimises_each_input = False  # one learned perturbation/generator for every input (mmrobust.checks)

    def __init__(self, threat: ThreatModel, generator: nn.Module, *, lr: float = 1e-3, online: bool = False,
                 online_steps: int = 1, loss="margin", kappa: Optional[float] = 0.0, **kwargs):
        if not isinstance(threat, ThreatModel):
            raise TypeError(f"AmortizedAttack needs a single ThreatModel, got {type(threat).__name__}")
        if not isinstance(generator, nn.Module):
            raise TypeError(f"generator must be a torch.nn.Module mapping inputs to perturbations, got "
                            f"{type(generator).__name__}")
        super().__init__(threat, loss=loss, **kwargs)
        self.generator_net = generator
        self.lr = check_positive("lr", lr)
        self.online = bool(online)
        self.online_steps = check_int("online_steps", online_steps, 1)
        self.kappa = None if kappa is None else float(kappa)
        self.optimizer = torch.optim.Adam(generator.parameters(), lr=self.lr)
        # held in a dict shared by this attack's copies (``with_threat``: the training warm-up's budgets), as the
        # generator and optimiser are, so updates taken by a copy are counted on the user's attack
        self._progress = {"updates": 0}

    @property
    def updates(self) -> int:
        """Generator updates taken so far (by this attack or its copies), checkpointed in :meth:`state_dict`."""
        return self._progress["updates"]

    @updates.setter
    def updates(self, value: int) -> None:
        self._progress["updates"] = int(value)

    def settings(self) -> List[str]:
        return super().settings() + [f"generator={type(self.generator_net).__name__}", f"online={self.online}"]

    # -- the perturbation --------------------------------------------------------------------------------
    def perturbation(self, x: Tensor, threat: Optional[ThreatModel] = None) -> Tensor:
        """:math:`\\Pi_{\\Delta(x)}(r\\,s(G(x)))`, differentiable with respect to the generator."""
        threat = self.threat if threat is None else threat
        self._to_device(x.device)
        raw = self.generator_net(x)
        if raw.shape != x.shape:
            raise ValueError(f"the generator must return a perturbation of the input's shape {tuple(x.shape)}, "
                             f"got {tuple(raw.shape)}")
        r = per_unit(threat.radius(x), x)
        if threat.norm == "linf":  # AdvGAN's bounded output; corners of the box are reachable
            return threat.project(r * torch.tanh(raw), x)
        # other norms: the generator picks a direction and spends the full budget; a squashing function
        # would saturate and stall training
        return threat.project(r * raw / per_unit(threat.size(raw, x).clamp_min(1e-12), x), x)

    def _to_device(self, device) -> None:
        p = next(self.generator_net.parameters(), None)
        if p is not None and p.device != torch.device(device):
            self.generator_net.to(device)

    def _name(self, victim: BatchView) -> str:
        if len(victim.inputs) != 1:
            raise ValueError(f"AmortizedAttack attacks batches with one input, got {sorted(victim.inputs)}")
        return next(iter(victim.inputs))

    def perturb(self, victim, threats, target_labels, clean_logits):
        name = self._name(victim)
        x = victim.inputs[name]
        with kept_modes(self.generator_net, train=False), torch.no_grad():
            delta = apply_masks({name: self.perturbation(x, threats[name])}, victim)[name]
        return {name: x + delta}

    # -- training the generator ----------------------------------------------------------------------------
    def update(self, model: nn.Module, batch: Any, *, target_labels: Optional[Tensor] = None) -> float:
        """One Adam step of the generator maximising the attack loss on ``batch`` against ``model``
        (model frozen in eval mode); returns the mean attack loss before the step."""
        with attack_mode(model):
            return self.update_on(victim_for(model, batch, self.adapter), target_labels=target_labels)

    def update_on(self, victim: BatchView, *, target_labels: Optional[Tensor] = None) -> float:
        """:meth:`update` on a batch already read (inside :func:`~mmrobust.attacks.attack_mode`)."""
        if self.targeted and target_labels is None:
            raise ValueError("a targeted AmortizedAttack needs target_labels to train")
        name = self._name(victim)
        x = victim.inputs[name]
        threat = self.threats_for(victim)[name]
        with kept_modes(self.generator_net, train=True):
            delta = apply_masks({name: self.perturbation(x, threat)}, victim)[name]
            logits = victim.forward({**victim.inputs, name: x + delta})
            per_output = self.output_loss(logits, victim, target_labels)
            if self.kappa is not None:
                per_output = per_output.clamp(max=self.kappa)
            loss = per_output.mean()
            if not bool(torch.isfinite(loss)):
                raise FloatingPointError("the amortised attack's loss is NaN/Inf")
            self.optimizer.zero_grad(set_to_none=True)
            (-loss).backward()
            self.optimizer.step()
        self.updates += 1
        return float(loss.detach())

    def fit(self, model: nn.Module, data: Iterable, *, epochs: int = 1, max_steps: Optional[int] = None) -> List[float]:
        """Train the generator against a fixed ``model`` on batches from ``data`` (e.g. a DataLoader);
        returns the mean attack loss per epoch."""
        check_int("epochs", epochs, 1)
        history, steps = [], 0
        for _ in range(epochs):
            losses = []
            for batch in data:
                losses.append(self.update(model, batch))
                steps += 1
                if max_steps is not None and steps >= max_steps:
                    break
            history.append(sum(losses) / max(1, len(losses)))
            if max_steps is not None and steps >= max_steps:
                break
        return history

    def run_training(self, victim: BatchView, threats=None, *, target_labels: Optional[Tensor] = None, objective=None):
        """The perturbed inputs for training; ``online``: after ``online_steps`` generator updates on ``victim``."""
        if self.online:
            victim = prepared(victim)
            for _ in range(self.online_steps):
                self.update_on(victim, target_labels=target_labels)
        return super().run_training(victim, threats, target_labels=target_labels, objective=objective)

    # -- checkpointing -----------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state.update(generator=self.generator_net.state_dict(), optimizer=self.optimizer.state_dict(),
                     updates=self.updates)
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "generator" in state:
            self.generator_net.load_state_dict(state["generator"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.updates = state.get("updates", self.updates)
