"""Budget sweeps: robust accuracy as a function of the budget, per attack and in the worst case, and the
distribution of minimal perturbations found by minimum-norm attacks (FMN, FAB).

:func:`sweep` is what ``mmrobust evaluate --budgets ...`` runs. Every budget is one
:func:`~mmrobust.evaluate` call on the attacks moved to that budget by their threat model
(:meth:`~mmrobust.threats.ThreatModel.with_budget`: ``eps`` of a norm ball, a level in dB, a count or a
fraction of edges), so the number at budget ``b`` is the number ``evaluate`` gives for the same attacks
built at ``b`` with the same seeds; nothing is smoothed or made monotone (a curve that rises with the
budget is a sign of a failing attack, shown as measured).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import torch
from torch import nn

from .adapters.base import BatchAdapter
from .attacks.base import Attack
from .checks import sweep_checks
from .evaluation import Attacks, evaluate, model_device, move_batch, named_attacks
from .metrics.functional import size_quantile
from .threats.base import ThreatModel
from .utils import progress_bar

Budget = Union[int, float]

#: name of the worst case over all attacks in tables and plots
WORST = "worst case"


def attack_with_budget(attack: Attack, budget: Budget, name: str = "attack") -> Attack:
    """``attack`` (a shallow copy, members included) with its threat model at the absolute ``budget``
    (:meth:`~mmrobust.threats.ThreatModel.with_budget`); warm-ups scale a budget by a factor instead
    (:func:`mmrobust.callbacks.adversarial.attack_at_budget`)."""
    threat = attack.threat
    if not isinstance(threat, ThreatModel):
        raise TypeError(f"attacks[{name!r}] has a threat per input ({sorted(threat)}); a budget sweep needs one "
                        "ThreatModel per attack, as a single number cannot be a budget for several inputs. Sweep "
                        "each input's threat model in its own run, or build the attacks per budget yourself")
    try:
        moved = threat.with_budget(budget)
    except (TypeError, ValueError) as error:
        raise type(error)(f"budget {budget!r} does not fit attacks[{name!r}]'s {type(threat).__name__} "
                          f"(budget unit: {threat.budget_name}): {error}") from error
    return attack.with_threat(moved)


def is_minimum_norm(attack: Attack) -> bool:
    """Whether ``attack`` finds the smallest adversarial perturbation per unit (FMN, FAB and FAB-T)."""
    from .attacks.fab import FAB
    from .attacks.fmn import FMN

    return isinstance(attack, (FMN, FAB))


@dataclass
class BudgetSweep:
    """What :func:`sweep` measured.

    Attributes:
        budgets: the budgets, in the order given.
        budget_name: what a budget is (``"eps (linf)"``, ``"snr_db (dB, ...)"``, ``"edge budget ..."``).
        clean_accuracy: accuracy on the clean data (the same at every budget).
        per_attack: attack name -> robust accuracy at each budget.
        robust_accuracy: the worst case over all attacks at each budget.
        min_norms: minimum-norm attack name -> the size of the smallest adversarial perturbation found for
            each clean-correct output (in the threat model's norm; ``inf`` where none was found).
        num_examples: scored outputs per budget.
        attacks: attack name -> description at the first budget.
        results: the :func:`~mmrobust.evaluate` result at each budget.
        larger_budget_is_stronger: ``False`` where a larger budget value is a smaller perturbation (SNR in dB).
        checks: the attack-failure checks (:func:`mmrobust.checks.sweep_checks`: each check merged over the
            budgets, and ``sweep_monotone`` on the worst-case curve); ``None`` with ``checks=False``.

    Example:
        >>> from mmrobust import sweep
        >>> from mmrobust.attacks import PGD
        >>> from mmrobust.threats import LinfBall
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> result = sweep(model, [(x, y)], {"pgd": PGD(LinfBall(0.1, lower=0, upper=1), steps=5, seed=0)},
        ...                budgets=[0.0, 0.05, 0.3], progress=False, checks=False)
        >>> result.budget_name, result.clean_accuracy, result.robust_accuracy[0]
        ('eps (linf)', 0.5, 0.5)
        >>> sorted(result.rows()[-1]), result.robust_accuracy[-1] <= result.robust_accuracy[0]
        (['budget', 'clean', 'pgd', 'worst case'], True)
    """

    budgets: List[Budget]
    budget_name: str
    clean_accuracy: float
    per_attack: Dict[str, List[float]]
    robust_accuracy: List[float]
    num_examples: int
    attacks: Dict[str, str]
    results: List[Dict[str, Any]]
    min_norms: Dict[str, List[float]] = field(default_factory=dict)
    larger_budget_is_stronger: bool = True
    checks: Optional[List[Dict[str, Any]]] = None

    def rows(self) -> List[Dict[str, Any]]:
        """The table: one row per budget with the clean accuracy, each attack and the worst case."""
        return [{"budget": b, "clean": self.clean_accuracy,
                 **{name: accs[i] for name, accs in self.per_attack.items()}, WORST: self.robust_accuracy[i]}
                for i, b in enumerate(self.budgets)]

    def curves(self) -> Dict[str, tuple]:
        """``name -> (budgets, accuracies)`` per attack and for the worst case, in increasing budget order."""
        order = sorted(range(len(self.budgets)), key=lambda i: self.budgets[i])
        xs = [self.budgets[i] for i in order]
        out = {name: (xs, [accs[i] for i in order]) for name, accs in self.per_attack.items()}
        out[WORST] = (xs, [self.robust_accuracy[i] for i in order])
        return out

    def min_norm_summary(self) -> List[Dict[str, Any]]:
        """Per minimum-norm attack: outputs measured, how many have an adversarial point, and the median and
        quartiles of its size over those found, as :func:`mmrobust.metrics.functional.size_quantile` defines
        them (the median :class:`~mmrobust.metrics.MinimalPerturbation` reports: the mean of the two middle
        values for an even count); NaN where none was found."""
        rows = []
        for name, sizes in self.min_norms.items():
            found = torch.tensor([s for s in sizes if math.isfinite(s)], dtype=torch.float64)
            q = lambda f: float(size_quantile(found, f))  # noqa: E731
            rows.append({"attack": name, "clean-correct outputs": len(sizes), "found": len(found),
                         "25%": q(0.25), "median": q(0.5), "75%": q(0.75)})
        return rows


def check_budgets(budgets: Sequence[Budget]) -> List[Budget]:
    if isinstance(budgets, (str, bytes)) or not isinstance(budgets, Iterable):
        raise TypeError(f"budgets must be a list of numbers (eps, dB levels, edge counts or fractions), "
                        f"got {type(budgets).__name__}")
    out = list(budgets)
    if not out:
        raise ValueError("budgets must hold at least one budget, e.g. budgets=[0.01, 0.03, 0.1] for L-inf eps")
    for b in out:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b):
            raise TypeError(f"every budget must be a finite number, got {b!r} in budgets={out!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"budgets must be distinct, got {out!r}")
    return out


def sweep(model: nn.Module, dataloader: Iterable, attacks: Attacks, budgets: Sequence[Budget], *,
          adapter: Optional[BatchAdapter] = None, max_batches: Optional[int] = None, progress: bool = True,
          device: Optional[Union[str, torch.device]] = None, early_stop: bool = True,
          min_norm: bool = True, checks: Union[bool, str, Sequence[str], None] = True) -> BudgetSweep:
    """Robust accuracy of ``model`` at every budget, per attack and worst case over the attacks.

    Each budget is one :func:`~mmrobust.evaluate` call (same arguments) on the attacks moved there by their
    threat model's :meth:`~mmrobust.threats.ThreatModel.with_budget`, so every number is the one ``evaluate``
    gives at that budget with the same seeds. The user's attacks are not changed.

    Args:
        attacks: as for :func:`~mmrobust.evaluate`; each must have a single threat model. Their own budget is
            replaced by each of ``budgets``.
        budgets: absolute budgets in the threat models' unit: ``eps`` for norm balls, dB for
            :class:`~mmrobust.threats.SNRBall`/:class:`~mmrobust.threats.PeakDBBall`, an ``int`` count or a
            ``float`` fraction of edges for :class:`~mmrobust.threats.EdgeFlips`.
        min_norm: also run every minimum-norm attack (FMN, FAB) once without a cap and keep the size of the
            smallest adversarial perturbation per clean-correct output (``min_norms``, the histogram of
            ``mmrobust evaluate``).
        checks: the attack-failure checks of :func:`~mmrobust.evaluate` at every budget, merged, plus whether the
            worst-case curve rises where the budget grows (``BudgetSweep.checks``); ``False``: none.
        progress: a bar over the budgets and :func:`~mmrobust.evaluate`'s own per attack and batch, on a terminal.

    Returns:
        a :class:`BudgetSweep` (``rows()`` is the table with one row per budget).
    """
    budgets = check_budgets(budgets)
    named = named_attacks(attacks, adapter)  # private copies: the user's attacks stay as they are
    first_name, first = next(iter(named.items()))
    units = {b: attack_with_budget(first, b, first_name).threat.budget_name for b in budgets}
    if len(set(units.values())) > 1:
        raise ValueError(f"budgets mix units for attacks[{first_name!r}]: {units}; give every budget in one unit "
                         "(for EdgeFlips all ints for counts of flips, or all floats for fractions: 1.0, not 1)")
    results, budget_name, stronger = [], None, True
    bar = progress_bar(progress, total=len(budgets), desc="budget sweep", unit="budget", every_step=True)
    for b in budgets:
        if bar is not None:
            bar.set_postfix_str(f"budget {b:g}")
        at_b = {name: attack_with_budget(a, b, name) for name, a in named.items()}
        if budget_name is None:
            threat = next(iter(at_b.values())).threat
            budget_name, stronger = threat.budget_name, bool(threat.larger_budget_is_stronger)
        results.append(evaluate(model, dataloader, at_b, adapter=adapter, max_batches=max_batches,
                                progress=progress, device=device, early_stop=early_stop, checks=checks))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    min_norms = {}
    if min_norm:
        for name, a in named.items():
            if is_minimum_norm(a):
                min_norms[name] = minimal_perturbations(model, dataloader, a, max_batches=max_batches,
                                                        device=device)
    robust = [r["robust_accuracy"] for r in results]
    return BudgetSweep(
        budgets=budgets, budget_name=str(budget_name), clean_accuracy=results[0]["clean_accuracy"],
        per_attack={name: [r["per_attack"][name] for r in results] for name in named},
        robust_accuracy=robust, num_examples=results[0]["num_examples"],
        attacks=results[0]["attacks"], results=results, min_norms=min_norms, larger_budget_is_stronger=stronger,
        checks=sweep_checks(budgets, results, robust, larger_is_stronger=stronger))


@contextlib.contextmanager
def _on_device(model: nn.Module, device: Optional[Union[str, torch.device]]) -> Iterator[torch.device]:
    home = model_device(model)
    target = home if device is None else torch.device(device)
    if target != home:
        model.to(target)
    try:
        yield target
    finally:
        if target != home:
            model.to(home)


def minimal_perturbations(model: nn.Module, dataloader: Iterable, attack: Attack, *,
                          max_batches: Optional[int] = None,
                          device: Optional[Union[str, torch.device]] = None) -> List[float]:
    """The size of the smallest adversarial perturbation a minimum-norm ``attack`` (FMN, FAB) finds for every
    clean-correct output, in its threat model's norm (``inf`` where it found none).

    The attack runs once, uncapped (its ``eps`` plays no part), on a private copy restarted at its seed."""
    if not is_minimum_norm(attack):
        raise TypeError(f"attack must be a minimum-norm attack (FMN, FAB, FABT), got {type(attack).__name__}")
    run = attack.private_copy()
    run.cap = False
    run.reseed()
    sizes: List[float] = []
    with _on_device(model, device) as target:
        for i, batch in enumerate(dataloader):
            if max_batches is not None and i >= max_batches:
                break
            result = run(model, move_batch(batch, target))
            size = result.output_size().detach().double()
            # only points adversarial at the returned logits count (as MinimalPerturbation and boundary_distances)
            size = torch.where(result.success.to(size.device).bool(), size, torch.full_like(size, math.inf))
            sizes += size[result.clean_correct].cpu().tolist()
    return sizes
