"""The attack interface: ``attack(model, batch) -> AttackResult``.

Rules every attack follows (enforced here, not in each attack):

* the model runs in eval mode during the attack and every module's previous mode is restored;
* parameters have ``requires_grad`` switched off while attacking, so autograd computes input
  gradients only; flags, values and ``.grad`` are restored exactly, also when the attack raises;
* the user's tensors are never modified in place; attacks work on copies;
* attacks run with gradients enabled even when called under ``torch.no_grad()`` or Lightning's
  ``inference_mode`` (inputs created in inference mode are cloned into normal tensors);
* NaN or Inf in the model's outputs or gradients raises :class:`~mmrobust.errors.NonFiniteError`.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from ..adapters.base import BatchAdapter, BatchView, infer_adapter
from ..threats.base import ThreatModel
from ..utils import SeededStream, make_generator, normal_tensor
from .attack_objective import AttackObjective
from .labels import check_labels, label_checked
from .losses import get_loss
from .reading import apply_masks, attack_mode, check_logits, prepare_victim, prepared, victim_for  # noqa: F401
from ..threats.verify import UNVERIFIED
from .result import AttackResult, mark_not_found

Threat = Union[ThreatModel, Mapping[str, ThreatModel]]


class Attack(SeededStream, ABC):
    """Base class: an algorithm over a threat model.

    Args:
        threat: a :class:`ThreatModel` (for single-input batches) or a mapping from input names to
            threat models (a joint attack on several inputs; inputs not named stay clean).
        loss: name of a loss in :mod:`mmrobust.attacks.losses` or a callable
            ``(logits, labels, target_labels) -> per-output loss``.
        targeted: if true, ``__call__`` needs ``target_labels`` (or picks the most likely wrong class).
        adapter: how to read the batch; inferred from the batch when ``None``.
        seed: seed of the attack's own random generator (restarts, random starts) for reproducibility;
            ``None`` uses the global RNG. Every seeded attack (and :class:`~mmrobust.attacks.CTCTargetedAttack`)
            follows one semantics: the generator is created from ``seed`` on the first call and *continued* by
            later calls (a training attack draws new random starts every step); :meth:`reseed` restarts it,
            so a call after ``reseed()`` repeats the first call of a fresh object. :func:`mmrobust.evaluate`,
            :class:`~mmrobust.callbacks.RobustnessEvaluation`, sweeps and checks attack with private copies
            restarted at ``seed``, so they give the same number every time and leave the user's stream alone
            (AutoAttack's reference code re-seeds inside every call instead).

    Example:
        >>> from mmrobust.attacks import Attack
        >>> from mmrobust.threats import LinfBall
        >>> from mmrobust.utils import toy_problem
        >>> class Noise(Attack):                      # the smallest attack: one random point of the ball
        ...     def perturb(self, victim, threats, target_labels, clean_logits):
        ...         return {k: x + threats[k].random_init(x, self.generator()) if k in threats else x
        ...                 for k, x in victim.inputs.items()}
        >>> model, x, y = toy_problem()
        >>> result = Noise(LinfBall(0.05, lower=0, upper=1), seed=0)(model, [x, y])
        >>> bool((result.size["image"] <= 0.05 + 1e-6).all()), result.success.shape
        (True, torch.Size([8]))
    """

    name = "attack"

    @property
    def changes_structure(self) -> bool:
        """Whether the attack changes parts of the batch that are not attackable inputs (e.g. graph edges).

        Such perturbations cannot be split per unit, so callers that mix clean and adversarial units
        (``AdversarialTraining(ratio < 1)``) refuse them.
        """
        return False

    def __init__(self, threat: Threat, *, loss: Union[str, Callable[..., Tensor]] = "ce", targeted: bool = False,
                 adapter: Optional[BatchAdapter] = None, seed: Optional[int] = None):
        if not isinstance(threat, ThreatModel) and not (
                isinstance(threat, Mapping) and threat and all(isinstance(t, ThreatModel) for t in threat.values())):
            raise TypeError(f"threat must be a ThreatModel or a non-empty mapping of input names to ThreatModels, "
                            f"got {type(threat).__name__}")
        self.threat = threat
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self.loss_fn = get_loss(loss)
        self.targeted = bool(targeted)
        self.adapter = adapter
        self.seed = seed
        self._generator: Optional[torch.Generator] = None

    # -- randomness -------------------------------------------------------------------------------
    def reseed(self) -> "Attack":
        """Restart the random stream at ``seed``, in place, and those of the attacks this one holds (an
        Ensemble's members, an EOT's inner attack): the next call draws the random starts the first call
        drew. Evaluation callbacks call it before every evaluation run, so the same weights give the same
        robust accuracy whenever they are evaluated. Without a ``seed`` (global RNG) it does nothing."""
        self.restart_stream()
        for value in vars(self).values():
            held = value.values() if isinstance(value, Mapping) else value if isinstance(value, (list, tuple)) \
                else (value,)
            for inner in held:
                if isinstance(inner, Attack) and inner is not self:
                    inner.reseed()
        return self

    def state_dict(self) -> Dict[str, Any]:
        """RNG state, so a resumed run draws the same random starts."""
        return {"seed": self.seed,
                "rng": None if self._generator is None else self._generator.get_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.seed = state.get("seed", self.seed)
        if state.get("rng") is not None:
            self._generator = make_generator(self.seed if self.seed is not None else 0, "cpu")
            self._generator.set_state(state["rng"])

    # -- threats per input ------------------------------------------------------------------------
    def threats_for(self, victim: BatchView) -> Dict[str, ThreatModel]:
        if isinstance(self.threat, ThreatModel):
            if len(victim.inputs) != 1:
                raise ValueError(f"this batch has several attackable inputs {sorted(victim.inputs)}; give the "
                                 "attack a mapping {name: ThreatModel} (e.g. mmrobust.threats.Joint), or, to attack "
                                 "one of them and pass the others through, an adapter that reads only that input "
                                 "(e.g. adapter=TensorAdapter(input_key=...), or MultimodalAdapter(inputs=[...]))")
            return {next(iter(victim.inputs)): self.threat}
        unknown = set(self.threat) - set(victim.inputs)
        if unknown:
            raise KeyError(f"threat names inputs {sorted(unknown)} the batch does not have; "
                           f"attackable inputs are {sorted(victim.inputs)}")
        return dict(self.threat)

    def private_copy(self) -> "Attack":
        """A copy that shares no attack and no random generator with this attack, continuing its random stream.

        Member attacks (an :class:`~mmrobust.attacks.Ensemble`'s ``attacks``, an :class:`~mmrobust.attacks.EOT`'s
        inner ``attack``, in attributes, lists, tuples or dicts) are private copies too, and every
        ``torch.Generator`` is a new one in the same state; threat models, adapters, losses, modules and other
        containers are shared (attacking does not change them). :func:`mmrobust.evaluate` and
        :class:`~mmrobust.callbacks.RobustnessEvaluation` attack with such copies, so the same attack object
        and the same call give the same number, and the user's attack object is never changed.
        """
        clone = copy.copy(self)
        clone.__dict__ = {k: private_value(v) for k, v in self.__dict__.items()}
        return clone

    def with_threat(self, threat: Threat) -> "Attack":
        """A shallow copy of this attack with another threat model (budget sweeps, schedules)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.threat = threat
        return clone

    def with_adapter(self, adapter: BatchAdapter) -> "Attack":
        """A shallow copy reading batches with ``adapter``; it shares this attack's random generator."""
        return self.sharing_copy(adapter=adapter)

    def sharing_copy(self, **attributes: Any) -> "Attack":
        """A shallow copy with ``attributes`` replaced that shares this attack's random generator (so its
        draws advance the same, checkpointed stream); per-call settings live on such copies."""
        self.generator()
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.__dict__.update(attributes)
        return clone

    def for_stage(self, batch: Any, stage: str) -> "Attack":
        """This attack as used at a training stage: an attack without an adapter reads the batch with
        :func:`~mmrobust.adapters.base.stage_adapter` (e.g. a graph's training nodes while training), as
        a copy holding that adapter only when the stage changes what is read."""
        if self.adapter is not None:
            return self
        inferred = infer_adapter(batch)
        staged = inferred.for_stage(batch, stage)
        return self if staged is inferred else self.with_adapter(staged)

    def settings(self) -> List[str]:
        """The settings :meth:`describe` lists after the threat model; subclasses append theirs."""
        return [f"loss={self.loss_name}"] + (["targeted"] if self.targeted else [])

    def describe(self) -> str:
        """``Name(threat, setting, ...)``: how results and checkpoints name this attack."""
        if isinstance(self.threat, ThreatModel):
            t = repr(self.threat)
        else:
            t = "{" + ", ".join(f"{k}: {v!r}" for k, v in self.threat.items()) + "}"
        return f"{type(self).__name__}({', '.join([t] + self.settings())})"

    # -- the call ---------------------------------------------------------------------------------
    def checked_threats(self, victim: BatchView) -> Dict[str, ThreatModel]:
        """The threat model of each attacked input, with the inputs checked against it.

        The same checks run for evaluation and for training: projecting out-of-box data would otherwise
        silently clip it.
        """
        threats = self.threats_for(victim)
        for name, threat in threats.items():
            label = victim.labels.get(name, name)
            threat.check_input(victim.inputs[name], name=label)
            if name in victim.masks:  # padding must not count towards a budget relative to the signal
                threat.check_padding(victim.inputs[name], victim.masks[name], name=label)
        return threats

    def __call__(self, model: nn.Module, batch: Any, *, target_labels: Optional[Tensor] = None) -> AttackResult:
        """Read ``batch`` (:func:`victim_for`), then :meth:`run` in :func:`attack_mode`."""
        with attack_mode(model):
            return self.run(victim_for(model, batch, self.adapter), target_labels=target_labels)

    def generate(self, model: nn.Module, batch: Any, *, target_labels: Optional[Tensor] = None) -> Any:
        """Only the perturbed batch, skipping the clean and final evaluation passes (for training).

        Attacks that track the best iterate return their last iterate here instead, as fast
        adversarial training does (Wong et al. 2020); targeted attacks need ``target_labels``.
        """
        with attack_mode(model):
            victim = victim_for(model, batch, self.adapter)
            return victim.rebuild(self.run_training(victim, target_labels=target_labels))

    def run(self, victim: BatchView, threats: Optional[Dict[str, ThreatModel]] = None, *,
            target_labels: Optional[Tensor] = None, objective: Optional[AttackObjective] = None) -> AttackResult:
        """The attack on a batch already read (a :class:`BatchView`, e.g. ``victim.select(units)``), inside
        :func:`attack_mode`: the clean pass and label checks, default targets, then :meth:`perturb` and
        :meth:`finish` on a per-call copy pursuing ``objective`` (default :meth:`objective_for`; its
        ``targets`` stand for ``target_labels``). Composites (ensembles, partly adversarial batches) call
        it instead of rebuilding and re-reading batches; ``threats`` default to :meth:`checked_threats`."""
        victim, threats, target_labels = self._call_setup(victim, threats, target_labels, objective)
        with torch.no_grad():
            clean_logits = victim.forward(victim.inputs)
        check_logits(clean_logits, victim, "on the clean batch")
        n_classes = clean_logits.shape[1]
        y = victim.target
        check_labels(y, n_classes)
        if target_labels is not None:
            if target_labels.shape != y.shape:
                raise ValueError(f"target_labels must have shape {tuple(y.shape)}, got {tuple(target_labels.shape)}")
            check_labels(target_labels, n_classes, "target_labels")
        call = self.pursuing(objective or self.objective_for(victim, target_labels, clean_logits))
        if self.targeted and target_labels is None:
            # most likely wrong class, a common default (Carlini & Wagner 2017 use random targets)
            target_labels = clean_logits.masked_fill(
                torch.nn.functional.one_hot(y, n_classes).bool(), float("-inf")).argmax(1)
        adv, logits, found = _unpack(call.perturb(victim, threats, target_labels, clean_logits))
        return mark_not_found(call.finish(victim, threats, adv, clean_logits, target_labels, logits), found, victim)

    def run_training(self, victim: BatchView, threats: Optional[Dict[str, ThreatModel]] = None, *,
                     target_labels: Optional[Tensor] = None,
                     objective: Optional[AttackObjective] = None) -> Dict[str, Tensor]:
        """The perturbed inputs of a batch already read, without evaluation passes (:meth:`generate`'s
        work, for training code that holds a :class:`BatchView`), inside :func:`attack_mode`."""
        if self.targeted and target_labels is None and (objective is None or objective.targets is None):
            raise ValueError("generate() with a targeted attack needs target_labels")
        victim, threats, target_labels = self._call_setup(victim, threats, target_labels, objective)
        # no clean pass here: the attack's first forward pass learns the class count and checks the labels
        victim = label_checked(victim, target_labels)
        call = self.pursuing(objective or self.objective_for(victim, target_labels, None))
        adv = _unpack(call.perturb(victim, threats, target_labels, None))[0]
        return {k: v.detach() for k, v in adv.items()}

    def _call_setup(self, victim: BatchView, threats: Optional[Dict[str, ThreatModel]],
                    target_labels: Optional[Tensor], objective: Optional[AttackObjective]) -> tuple:
        """What :meth:`run` and :meth:`run_training` do first: a prepared copy of ``victim``, its checked
        threats (unless given), and ``target_labels`` (default: the objective's targets) as long tensors on
        the labels' device."""
        victim = prepared(victim)
        threats = self.checked_threats(victim) if threats is None else threats
        if target_labels is None and objective is not None:
            target_labels = objective.targets
        if target_labels is not None:
            target_labels = normal_tensor(target_labels).to(victim.target.device).long()
        return victim, threats, target_labels

    # -- the objective of a call ------------------------------------------------------------------
    #: the :class:`AttackObjective` of the call in progress: held only by the per-call copy that :meth:`run`
    #: and :meth:`run_training` make (:meth:`pursuing`), never by the user's attack
    objective: Optional[AttackObjective] = None

    def objective_for(self, victim: BatchView, target_labels: Optional[Tensor],
                      clean_logits: Optional[Tensor]) -> AttackObjective:
        """The objective of a call on ``victim`` (``clean_logits`` ``None`` when training): the attack's
        loss; success means misclassified, or the target for targeted attacks. Attacks with a reference
        point (TRADES) or another success test (APGD-T, FAB-T) override it."""
        return AttackObjective(self.loss_fn, targets=target_labels, targeted=self.targeted,
                               reach_targets=self.targeted)

    def pursuing(self, objective: AttackObjective) -> "Attack":
        """A per-call copy that pursues ``objective`` (it shares this attack's random generator); composites
        hand their members' objectives over this way when they call ``perturb`` directly."""
        return self.sharing_copy(objective=objective)

    def _objective(self, victim: BatchView, target_labels: Optional[Tensor]) -> AttackObjective:
        """The call's objective; outside a call (e.g. re-scoring a result) the default one."""
        return self.objective if self.objective is not None else self.objective_for(victim, target_labels, None)

    @abstractmethod
    def perturb(self, victim: BatchView, threats: Dict[str, ThreatModel], target_labels: Optional[Tensor],
                clean_logits: Optional[Tensor]) -> Union[Dict[str, Tensor], tuple]:
        """Return perturbed inputs (a dict with the same keys as ``victim.inputs``); every attack implements
        it (abstract: configuration parsers such as LightningCLI then never try to build a bare ``Attack``).

        May return ``(inputs, logits)`` when the logits at the returned point are already known, which
        saves :meth:`finish` a forward pass, and ``(inputs, logits, found)`` for minimal-norm attacks
        (units where ``found`` is false get size ``inf`` and no success). ``clean_logits`` is ``None``
        when called from :meth:`generate` (training), where no evaluation is wanted.
        """

    # -- shared pieces ----------------------------------------------------------------------------
    def output_loss(self, logits: Tensor, victim: BatchView, target_labels: Optional[Tensor]) -> Tensor:
        """Per-output loss of the call's objective (``target_labels``: those of the outputs given)."""
        return self._objective(victim, target_labels).loss(logits, victim.target, target_labels)

    def is_success(self, logits: Tensor, victim: BatchView, target_labels: Optional[Tensor]) -> Tensor:
        """Per output: the call's objective is reached."""
        return self._objective(victim, target_labels).success(logits, victim.target, target_labels)

    def finish(self, victim: BatchView, threats: Dict[str, ThreatModel], adv: Dict[str, Tensor],
               clean_logits: Tensor, target_labels: Optional[Tensor],
               logits: Optional[Tensor] = None) -> AttackResult:
        adv = {k: v.detach() for k, v in adv.items()}
        with torch.no_grad():
            if logits is None:
                logits = victim.forward(adv)
            check_logits(logits, victim, "on the perturbed batch")
            loss = self.output_loss(logits, victim, target_labels)
            success = self.is_success(logits, victim, target_labels)
        size = {name: threats[name].size(adv[name] - victim.inputs[name], victim.inputs[name])
                for name in threats}
        extras = dict(victim.meta)
        for name in threats:
            extra = threats[name].extra_sizes(adv[name] - victim.inputs[name], victim.inputs[name])
            extras.update({f"{name}/{key}": value for key, value in extra.items()})
        if not getattr(self, "bounded", True):
            # minimal-norm points may lie outside the threat model; verify_run removes the mark once checked
            extras[UNVERIFIED] = True
        return AttackResult(batch=victim.rebuild(adv), inputs=adv, target=victim.target,
                            clean_logits=clean_logits.detach(), logits=logits.detach(), success=success,
                            loss=loss.detach(), size=size, unit=victim.unit, attack=self.describe(),
                            extras=extras)



def _unpack(out) -> tuple:
    """``perturb``'s answer as ``(inputs, logits or None, found or None)``."""
    out = tuple(out) if isinstance(out, tuple) else (out,)
    return out + (None,) * (3 - len(out))


def private_value(value: Any) -> Any:
    """``value`` with attacks replaced by private copies and generators by new ones in the same state."""
    if isinstance(value, Attack):
        return value.private_copy()
    if isinstance(value, torch.Generator):
        g = torch.Generator(device=value.device)
        g.set_state(value.get_state())
        return g
    # containers are copied only when they hold attacks or generators (other lists, e.g. a user's log, stay shared)
    if type(value) in (list, tuple):
        items = [private_value(v) for v in value]
        return type(value)(items) if any(a is not b for a, b in zip(items, value)) else value
    if type(value) is dict:
        items = {k: private_value(v) for k, v in value.items()}
        return items if any(items[k] is not value[k] for k in value) else value
    return value
