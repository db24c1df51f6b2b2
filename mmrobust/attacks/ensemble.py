"""AutoAttack-style ensembles: several attacks, each on what the previous ones left robust."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from ..adapters.base import BatchAdapter, BatchView, infer_adapter
from ..threats.base import ThreatModel, per_unit
from ..threats.verify import verify_run
from ..utils import progress_bar
from .base import Attack, AttackResult, attack_mode, check_logits, prepared, victim_for
from .survivors import Survivors, attack_survivors


class Ensemble(Attack):
    """Worst case over several attacks, run in order (Croce & Hein 2020, AutoAttack,
    https://arxiv.org/abs/2003.01690, Sec. 4).

    .. math:: \\text{robust}(x) = \\bigwedge_{a \\in \\mathcal{A}} \\big[f(a(x)) = y\\big]

    Each attack runs only on the units still robust after the previous ones (through
    ``BatchView.select`` when the adapter offers it; otherwise on the whole batch, keeping earlier
    successes). Per unit the returned point is the first successful attack's point (the clean input
    where the clean prediction is already wrong, the AutoAttack convention), so the ensemble's robust
    accuracy is never above the first member's nor above what each member found on the units it was
    given (a randomised member run separately on the whole batch draws other random numbers, so it may
    differ on single units). ``extras["robust_after"]`` lists ``(attack, robust outputs
    left)`` after each member and ``extras["robust_counts"]`` maps each member's description to it.
    Every member's points are checked against the member's threat model
    (:func:`mmrobust.threats.verify.verify_result`): outside raises
    :class:`~mmrobust.errors.BudgetViolation`, except for members unbounded by design (``FMN(cap=False)``),
    whose points outside the budget count as not broken.

    Each member reads the batch with its own ``adapter`` (e.g. ``WaveformAdapter()``), or the ensemble's
    when it has none.

    Args:
        attacks: the members, in the order to run them (cheap ones first saves time).
        progress: a progress bar over the members, shown only when stderr is a terminal (``False``: never);
            the same argument in :meth:`standard`, :meth:`plus` and :meth:`rand`.
        Other arguments as :class:`Attack`; ``loss`` only sets the reported ``AttackResult.loss``.

    Example:
        >>> from mmrobust.threats import LinfBall
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> from mmrobust.attacks import APGD, Ensemble, FGSM
        >>> threat = LinfBall(0.1, lower=0, upper=1)
        >>> result = Ensemble([FGSM(threat), APGD(threat, steps=10, seed=0)])(model, [x, y])
        >>> [name.split("(")[0] for name, robust_left in result.extras["robust_after"]]
        ['FGSM', 'APGD']
    """

    name = "ensemble"

    def __init__(self, attacks: Sequence[Attack], *, loss="ce", adapter=None, seed: Optional[int] = None,
                 progress: bool = True):
        attacks = list(attacks)
        if not attacks or not all(isinstance(a, Attack) for a in attacks):
            raise TypeError("attacks must be a non-empty sequence of Attack instances, got "
                            f"{[type(a).__name__ for a in attacks]}")
        edges = [a.describe() for a in attacks if getattr(a, "edge_threat", None) is not None]
        if edges:  # a unit's returned graph cannot be stitched from several members' edge sets
            raise TypeError(f"Ensemble combines per-unit perturbations and cannot combine edge-flip attacks ({edges[0]}); "
                            "pass them as a list to mmrobust.evaluate(model, data, [PRBCD(...), GRBCD(...)]), which "
                            "takes the worst case per node")
        super().__init__(attacks[0].threat, loss=loss, adapter=adapter, seed=seed)
        self.attacks: List[Attack] = attacks
        #: a progress bar over the members, shown only when stderr is a terminal (``False``: never)
        self.progress = bool(progress)

    @classmethod
    def standard(cls, threat: ThreatModel, *, steps: int = 100, n_target_classes: int = 9, n_queries: int = 5000,
                 seed: Optional[int] = 0, adapter=None, early_stop: bool = True, progress: bool = True) -> "Ensemble":
        """AutoAttack's "standard" version (Croce & Hein 2020, https://arxiv.org/abs/2003.01690, Sec. 5;
        ``version='standard'`` of the authors' code): APGD-CE, APGD-T (targeted DLR), FAB-T and Square, in
        this order, each on the units the previous ones left robust.

        Budgets as AutoAttack's: 100 iterations, 9 target classes for APGD-T and FAB-T (1 restart each),
        5000 queries for Square; for L1 balls APGD-CE takes 5 restarts and APGD-T 5 target classes (the
        authors' L1 setting, without their larger-radius restarts) and Square is left out (L-inf/L2 only).
        FAB-T is capped at the budget (:class:`~mmrobust.attacks.FABT` ``cap=True``). ``early_stop``: the
        members drop units at their first success inside the budget, as AutoAttack does across restarts and
        targets, which leaves robust accuracy unchanged; ``False`` runs every member on every step.
        """
        from .apgd import APGD, APGDT
        from .fab import FABT
        from .square import Square

        l1 = threat.norm == "l1"
        common = dict(seed=seed, adapter=adapter, early_stop=early_stop)
        members: List[Attack] = [
            APGD(threat, steps=steps, loss="ce", restarts=5 if l1 else 1, **common),
            APGDT(threat, steps=steps, n_target_classes=min(n_target_classes, 5) if l1 else n_target_classes,
                  **common),
            FABT(threat, steps=steps, n_target_classes=n_target_classes, cap=True, **common)]
        if threat.norm in ("linf", "l2"):
            members.append(Square(threat, n_queries=n_queries, seed=seed, adapter=adapter))
        return cls(members, seed=seed, adapter=adapter, progress=progress)

    @classmethod
    def plus(cls, threat: ThreatModel, *, steps: int = 100, restarts: int = 5, n_target_classes: int = 9,
             n_queries: int = 5000, seed: Optional[int] = 0, adapter=None, early_stop: bool = True,
             progress: bool = True) -> "Ensemble":
        """AutoAttack's "plus" version (``version='plus'`` of the authors' code): APGD-CE and APGD-DLR with
        5 restarts, untargeted FAB with 5 restarts, Square (5000 queries, ``restarts`` restarts), then
        APGD-T and FAB-T over 9 target classes. Stronger and several times slower than :meth:`standard`."""
        from .apgd import APGD, APGDT
        from .fab import FAB, FABT
        from .square import Square

        common = dict(seed=seed, adapter=adapter, early_stop=early_stop)
        members: List[Attack] = [
            APGD(threat, steps=steps, loss="ce", restarts=restarts, **common),
            APGD(threat, steps=steps, loss="dlr", restarts=restarts, **common),
            FAB(threat, steps=steps, restarts=restarts, cap=True, **common)]
        if threat.norm in ("linf", "l2"):
            members.append(Square(threat, n_queries=n_queries, restarts=restarts, seed=seed, adapter=adapter))
        members += [APGDT(threat, steps=steps, n_target_classes=n_target_classes, **common),
                    FABT(threat, steps=steps, n_target_classes=n_target_classes, cap=True, **common)]
        return cls(members, seed=seed, adapter=adapter, progress=progress)

    @classmethod
    def rand(cls, threat: ThreatModel, *, steps: int = 100, eot_samples: int = 20, seed: Optional[int] = 0,
             adapter=None, progress: bool = True) -> "Ensemble":
        """AutoAttack's "rand" version for randomised defences (``version='rand'`` of the authors' code):
        APGD-CE and APGD-DLR, each gradient the average over ``eot_samples`` forward passes of the model
        (Expectation over Transformation with the model's own randomness, Athalye et al. 2018,
        https://arxiv.org/abs/1802.00420, Sec. 4.3; :class:`~mmrobust.attacks.EOT` with no transform).
        Use it when the model's clean outputs change between two passes."""
        from .apgd import APGD
        from .eot import EOT

        members: List[Attack] = [
            EOT(APGD(threat, steps=steps, loss=loss, seed=seed, adapter=adapter), _unchanged, samples=eot_samples,
                eval_samples=0, seed=seed)
            for loss in ("ce", "dlr")]
        return cls(members, seed=seed, adapter=adapter, progress=progress)

    def with_threat(self, threat) -> "Ensemble":
        """The same members, each with ``threat`` (budget sweeps)."""
        clone = super().with_threat(threat)
        clone.attacks = [a.with_threat(threat) for a in self.attacks]
        return clone

    def members(self) -> List[Attack]:
        """The members as they run: each reads batches with its own ``adapter``, or the ensemble's when it
        has none (the ensemble's own result reads the batch with the first adapter among them)."""
        if self.adapter is None:
            return list(self.attacks)
        return [a if a.adapter is not None else a.with_adapter(self.adapter) for a in self.attacks]

    def describe(self) -> str:
        return "Ensemble[" + ", ".join(a.describe() for a in self.attacks) + "]"

    def state_dict(self):
        return {"attacks": [a.state_dict() for a in self.attacks]}

    def load_state_dict(self, state):
        for a, s in zip(self.attacks, state.get("attacks", [])):
            a.load_state_dict(s)

    def generate(self, model, batch, *, target_labels: Optional[Tensor] = None) -> Any:
        """The perturbed batch of a full ensemble evaluation (an ensemble needs its evaluations)."""
        return self(model, batch).batch

    def __call__(self, model, batch, *, target_labels: Optional[Tensor] = None) -> AttackResult:
        if target_labels is not None:
            raise ValueError("Ensemble is untargeted; give target_labels to its members instead")
        with attack_mode(model):
            return self._run(self.members(), model, batch)

    def run(self, victim: BatchView, threats=None, *, target_labels: Optional[Tensor] = None,
            objective=None) -> AttackResult:
        """The ensemble on a batch already read: every member attacks ``victim`` (or its units still robust)
        with its own objective."""
        if objective is not None:
            raise ValueError("Ensemble runs each member with its own objective; give objectives to members instead")
        if target_labels is not None:
            raise ValueError("Ensemble is untargeted; give target_labels to its members instead")
        victim = prepared(victim)
        return self._run(self.members(), victim=victim)

    def perturb(self, victim, threats, target_labels, clean_logits):
        """The ensemble's points and logits on ``victim`` (:meth:`run`), where an attack's ``perturb`` is called."""
        result = self.run(victim, threats, target_labels=target_labels)
        return result.inputs, result.logits

    def run_training(self, victim: BatchView, threats=None, *, target_labels: Optional[Tensor] = None, objective=None):
        """The perturbed inputs of a full ensemble evaluation (an ensemble needs its evaluations)."""
        return self.run(victim, threats, target_labels=target_labels, objective=objective).inputs

    def _run(self, members: List[Attack], model=None, batch=None, victim: Optional[BatchView] = None) -> AttackResult:
        bar = progress_bar(getattr(self, "progress", True), total=len(members), desc="ensemble", unit="member",
                           every_step=True)
        if bar is not None:
            bar.set_postfix_str(members[0].name)
        try:
            state = self.start(members, model, batch, victim=victim)
            if bar is not None:
                bar.update(1)
            self.advance(members, [state], bar=bar)
        finally:
            if bar is not None:
                bar.close()
        return self.result(state)

    def start(self, members: List[Attack], model=None, batch=None, *, victim: Optional[BatchView] = None) -> Survivors:
        """The first member on one batch (a user ``batch`` for ``model``, or a ``victim`` already read): its
        points, and the outputs it left robust, for :meth:`advance`. Call it inside
        :func:`~mmrobust.attacks.attack_mode`."""
        inferred: Dict[str, BatchAdapter] = {}
        victims: Dict[int, BatchView] = {}

        def adapter_for(attack: Attack) -> BatchAdapter:
            return attack.adapter or inferred.setdefault("adapter", infer_adapter(batch))

        def read(attack: Attack) -> BatchView:
            """The batch as ``attack`` reads it: with its own adapter, or the one inferred from the batch."""
            if victim is not None:
                return victim
            adapter = adapter_for(attack)
            if id(adapter) not in victims:
                victims[id(adapter)] = victim_for(model, batch, adapter)
            return victims[id(adapter)]

        first_victim = read(members[0])
        first = verify_run(members[0], first_victim, members[0].run(first_victim))
        view = read(next((a for a in members if a.adapter is not None), members[0]))
        inputs = {k: v.clone() for k, v in first.inputs.items()}
        clean_correct = first.clean_correct
        # the clean input wherever the clean prediction is already wrong
        wrong = view.per_unit((~clean_correct).float(), "amax") > 0
        for k, v in inputs.items():
            inputs[k] = torch.where(per_unit(wrong, v), view.inputs[k], v)
        robust = clean_correct & (first.logits.argmax(1) == first.target)
        return Survivors(read=read, victim=view, first=first, inputs=inputs,
                         logits=torch.where(clean_correct[:, None], first.logits, first.clean_logits),
                         robust=robust, exact_logits=view.unit is None,
                         history=[(members[0].describe(), int(robust.sum()))],
                         model=model, batch=None if victim is not None else batch,
                         adapter_for=None if victim is not None else adapter_for)

    def advance(self, members: List[Attack], states: List[Survivors], *, chunk_units: Optional[int] = None,
                bar=None) -> None:
        """Every member after the first on the outputs still robust in ``states`` (one per batch), in order;
        with ``chunk_units`` on the survivors of all of them joined where they can be
        (:func:`~mmrobust.attacks.survivors.attack_survivors`). Call it inside
        :func:`~mmrobust.attacks.attack_mode`."""
        own_bar = bar is None and len(members) > 1
        if own_bar:
            bar = progress_bar(getattr(self, "progress", True), total=len(members) - 1, desc="ensemble (pooled)",
                               unit="member", every_step=True)
        try:
            for attack in members[1:]:
                if bar is not None:
                    bar.set_postfix_str(f"{attack.name}; {sum(int(s.robust.sum()) for s in states)} outputs robust")
                attack_survivors(attack, states, chunk_units)
                if bar is not None:
                    bar.update(1)
        finally:
            if own_bar and bar is not None:
                bar.close()

    def result(self, state: Survivors) -> AttackResult:
        """The ensemble's result on the batch of ``state`` once :meth:`advance` ran."""
        victim, inputs, logits = state.victim, state.inputs, state.logits
        threats = self.threats_for(victim)
        if not state.exact_logits:
            with torch.no_grad():
                logits = victim.forward(inputs)
            check_logits(logits, victim, "on the ensemble's perturbed batch")
        result = self.finish(victim, threats, inputs, state.first.clean_logits, None, logits)
        result.extras["robust_after"] = list(state.history)
        result.extras["robust_counts"] = {name: count for name, count in state.history}
        return result


def _unchanged(v: Tensor, generator=None) -> Tensor:
    """The identity transform: EOT over the model's own randomness."""
    return v
