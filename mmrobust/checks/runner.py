"""Run the attack-failure checks during an evaluation: :class:`FailureChecks`."""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..adapters.base import infer_adapter
from ..attacks.base import Attack, AttackResult, attack_mode, prepare_victim, victim_for
from ..errors import check_int
from ..utils import make_generator
from . import attack as attack_checks
from . import model as model_checks
from .base import CHECKS, CheckResult, not_applicable, resolve_checks
from .results import is_black_box, tally_black_box, tally_edge_budget

#: checks that do not apply to graph batches (they need a norm-ball budget on the input)
_NOT_FOR_EDGES = ("gradient_masking", "transfer_gap", "unconverged_loss", "late_restarts")


def reference_attack(attacks: Mapping[str, Attack]) -> Optional[Attack]:
    """The first gradient attack of the evaluation that optimises each input (an Ensemble's first gradient
    member, carrying the ensemble's adapter when it has none): the one the rerun checks repeat. Attacks that
    apply a learned perturbation or generator (``UniversalPerturbation``, ``AmortizedAttack``:
    ``optimises_each_input`` false) are weaker than FGSM by design and do not grow with a rerun budget, so
    the rerun checks do not judge them."""
    for attack in attacks.values():
        members = attack.members() if hasattr(attack, "members") and hasattr(attack, "attacks") else [attack]
        for member in members:
            if not is_black_box(member) and not hasattr(member, "attacks") \
                    and getattr(member, "optimises_each_input", True):
                return member
    return None


def fired_summary(results: Sequence[CheckResult]) -> str:
    """One line per fired check: name, evidence, advice (empty string when none fired)."""
    return "\n".join(f"- {r.name}: {r.evidence}. {r.advice}" for r in results if r.fired)


class FailureChecks:
    """The attack-failure checks of one evaluation run (:mod:`mmrobust.checks`).

    Feed it every attacked batch with :meth:`observe`; :meth:`results` then gives one
    :class:`~mmrobust.checks.CheckResult` per check (fired or not, with evidence and advice; "not applicable"
    with the reason where a check needs something the evaluation does not have).

    On the first batch the model checks (:mod:`mmrobust.checks.model`) and the rerun checks
    (:mod:`mmrobust.checks.attack`) run on its first ``units`` units; the results checks
    (:mod:`mmrobust.checks.results`) read every batch's results. Cost: about two forward and four backward
    passes on ``units`` units, plus three reruns on them (FGSM, the first gradient attack at ``budget_factor``
    times its budget, and the same attack again with its loss traced) -- small next to attacking a whole
    dataset. The model's modes, flags, gradients and weights are restored (:func:`~mmrobust.attacks.attack_mode`,
    the attacks' own rules), the global random state too (``torch.random.fork_rng``), and the evaluation's
    attacks are not touched (reruns use private copies), so the evaluation's numbers do not depend on the
    checks. A check that raises is reported as not applicable with the error, and the evaluation goes on.

    Args:
        checks: ``True`` (all of :data:`~mmrobust.checks.CHECKS`), ``False``/``None`` (none) or a list of names.
        units: how many units of the first batch the model and rerun checks use.
        seed: seed of the checks' random directions and starts.
        budget_factor: the budget multiple of the large-budget rerun (:func:`~mmrobust.checks.budget_curve`).
    """

    def __init__(self, checks: Union[bool, None, str, Sequence[str]] = True, *, units: int = 32, seed: int = 0,
                 budget_factor: float = 10.0):
        self.names = resolve_checks(checks)
        self.units = check_int("units", units, 1)
        self.seed = seed
        self.budget_factor = float(budget_factor)
        self.reset()

    def reset(self) -> None:
        self._found: Dict[str, CheckResult] = {}
        self._probed = False
        self._black: Dict[str, int] = {}
        self._edges: Dict[str, Any] = {}  # flips used and allowed, and the attacks' notes on unused ones

    def __bool__(self) -> bool:
        return bool(self.names)

    @property
    def observed(self) -> bool:
        """Whether a batch has been observed since the last :meth:`reset`."""
        return self._probed

    # -- feeding ------------------------------------------------------------------------------------
    def observe(self, model: nn.Module, batch: Any, attacks: Mapping[str, Attack],
                results: Sequence[AttackResult]) -> None:
        """One attacked batch: ``attacks`` by name and their (checked) ``results`` on ``batch``."""
        if not self.names:
            return
        devices = [t.device for t in model.parameters()][:1]
        cuda = [d for d in devices if d.type == "cuda"]
        with torch.random.fork_rng(devices=cuda):
            if not self._probed:
                self._probed = True
                self._probe(model, batch, attacks, results)
            self._tally(model, batch, attacks, results)

    def _run(self, name: str, function, *args, **kwargs) -> None:
        if name not in self.names:
            return
        try:
            self._found[name] = function(*args, **kwargs)
        except Exception as e:  # a diagnostic must not end an evaluation; the report says it did not run
            self._found[name] = not_applicable(name, f"the check raised {type(e).__name__}: {e}")

    def _probe(self, model: nn.Module, batch: Any, attacks: Mapping[str, Attack],
               results: Sequence[AttackResult]) -> None:
        ref = reference_attack(attacks)
        adapter = (ref.adapter if ref is not None else None) or next(
            (a.adapter for a in attacks.values() if a.adapter is not None), None) or infer_adapter(batch)
        generator = make_generator(self.seed)
        with attack_mode(model):
            victim = victim_for(model, batch, adapter)
            index = None
            if victim.select is not None and victim.unit is None and victim.num_units > self.units:
                index = torch.arange(self.units, device=victim.target.device)
            sub = victim if index is None else prepare_victim(victim.select(index))
            edges = "graph" in victim.meta and ref is not None and attack_checks.is_edge_threat(ref.threat)
            threats = {}
            if ref is not None:
                try:
                    threats = ref.threats_for(sub)
                except Exception:
                    threats = {}
            self._run("randomised_forward", model_checks.randomised_forward, sub)
            self._run("probability_outputs", model_checks.probability_outputs, sub)
            self._run("zero_gradients", model_checks.zero_gradients, sub, threats, generator, edge_weights=edges)
            if edges and not threats:
                self._skip("gradient_masking", "edge-flip attacks: no input budget to take finite differences in")
            else:
                self._run("gradient_masking", model_checks.gradient_masking, sub, threats, generator)
            sub_batch = batch if index is None else sub.rebuild(sub.inputs)
        robust = torch.stack([r.robust for r in results]).all(0)
        if index is not None:
            robust = robust[index.to(robust.device)]
        if ref is None:
            for name in ("transfer_gap", "budget_curve", "unconverged_loss", "late_restarts"):
                self._skip(name, "needs a gradient attack that optimises each input among the evaluation's "
                                 "attacks (a universal or amortized perturbation is not judged by reruns)")
            return
        ref = ref if ref.adapter is not None else ref.with_adapter(adapter)
        if edges:
            for name in _NOT_FOR_EDGES:
                self._skip(name, "does not apply to edge-flip attacks")
        else:
            self._run("transfer_gap", attack_checks.transfer_gap, model, sub_batch, ref, robust)
        self._run("budget_curve", attack_checks.budget_curve, model, sub_batch, ref, robust,
                  factor=self.budget_factor)
        if not edges and ({"unconverged_loss", "late_restarts"} & set(self.names)):
            try:
                trace = attack_checks.loss_trace(model, sub_batch, ref)
            except Exception as e:
                for name in ("unconverged_loss", "late_restarts"):
                    self._skip(name, f"tracing the attack raised {type(e).__name__}: {e}")
            else:
                self._run("unconverged_loss", attack_checks.unconverged_loss, trace)
                self._run("late_restarts", attack_checks.late_restarts, trace)

    def _skip(self, name: str, why: str) -> None:
        if name in self.names:
            self._found[name] = not_applicable(name, why)

    def _tally(self, model: nn.Module, batch: Any, attacks: Mapping[str, Attack],
               results: Sequence[AttackResult]) -> None:
        if "black_box_beats_white_box" in self.names:
            tally_black_box(attacks, results, self._black)
        if "edge_budget_unused" in self.names:
            edge_attacks = {k: a for k, a in attacks.items() if getattr(a, "edge_threat", None) is not None}
            if edge_attacks:
                first = next(iter(edge_attacks.values()))
                victim = (first.adapter or infer_adapter(batch)).victim(model, batch)
                chosen = [r for k, r in zip(attacks, results) if k in edge_attacks]
                tally_edge_budget(edge_attacks, chosen, victim, self._edges)

    # -- reading ------------------------------------------------------------------------------------
    def results(self) -> List[CheckResult]:
        """One result per selected check, in the order of :data:`~mmrobust.checks.CHECKS`."""
        found = dict(self._found)
        if "black_box_beats_white_box" in self.names:
            found["black_box_beats_white_box"] = CHECKS["black_box_beats_white_box"].function(self._black)
        if "edge_budget_unused" in self.names:
            found["edge_budget_unused"] = CHECKS["edge_budget_unused"].function(self._edges)
        out = []
        for name in self.names:
            out.append(found.get(name) or not_applicable(name, "no batch was evaluated"))
        return out


def warn_fired(results: Sequence[CheckResult], where: str, warn=None) -> None:
    """One warning listing the fired checks (``warn``: e.g. Lightning's ``rank_zero_warn``)."""
    summary = fired_summary(results)
    if summary:
        (warn or (lambda m: warnings.warn(m, stacklevel=3)))(
            f"{where}: attack-failure checks fired; the robust accuracy may be overestimated:\n{summary}")


def sweep_checks(budgets: Sequence[float], results: Sequence[Optional[Mapping[str, Any]]],
                 robust_accuracy: Sequence[float], larger_is_stronger: bool = True) -> Optional[List[Dict[str, Any]]]:
    """The checks of a budget sweep (one :func:`~mmrobust.evaluate` result per budget) as one list of check
    dicts: a check fired if it fired at any budget (evidence per budget), and one more entry,
    ``sweep_monotone``, applies :func:`~mmrobust.checks.accuracy_curve_check` to the worst-case accuracy over
    the swept budgets (it must not rise; ``None`` when the results carry no checks). ``larger_is_stronger``:
    ``False`` for budgets where a larger value is a smaller perturbation (SNR in dB)."""
    from .attack import accuracy_curve_check

    per_budget = [(b, r.get("checks")) for b, r in zip(budgets, results) if r is not None and r.get("checks")]
    if not per_budget:
        return None
    merged: List[Dict[str, Any]] = []
    for entry in per_budget[0][1]:
        name = entry["name"]
        seen = [(b, c) for b, checks in per_budget for c in checks if c["name"] == name]
        fired = [(b, c) for b, c in seen if c["fired"]]
        ran = [(b, c) for b, c in seen if c.get("ran", True)]
        shown = fired or ran or seen
        out = dict(shown[0][1])
        out["evidence"] = "; ".join(f"at budget {b:g}: {c['evidence']}" for b, c in shown)
        out["fired"], out["ran"] = bool(fired), bool(ran)
        out["status"] = "FIRED" if fired else ("passed" if ran else "not applicable")
        merged.append(out)
    curve = accuracy_curve_check(list(budgets), list(robust_accuracy), unbounded=False, name="sweep_monotone",
                                 larger_is_stronger=larger_is_stronger)
    merged.append(curve.as_dict())
    return merged
