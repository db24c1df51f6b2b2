"""The sections ``mmrobust evaluate`` writes: accuracy under attack at one budget, or the budget sweep (table,
accuracy-vs-budget plot, minimal-perturbation histogram)."""

from __future__ import annotations

from typing import Any, Dict

from ..budget_sweep import WORST
from .report import Report


def accuracy_section(report: Report, result: Dict[str, Any], split: str) -> None:
    """Clean accuracy, each attack's robust accuracy and the worst case (an :func:`mmrobust.evaluate` result)."""
    report.section("Accuracy under attack")
    rows = [{"attack": "none (clean)", "accuracy": result["clean_accuracy"]}]
    rows += [{"attack": name, "accuracy": acc} for name, acc in result["per_attack"].items()]
    rows.append({"attack": "worst case over all attacks", "accuracy": result["robust_accuracy"]})
    report.table("Accuracy", rows, note=f"{result['num_examples']} examples from the {split} split")


def sweep_sections(report: Report, sweep: Any, split: str) -> None:
    """A :class:`~mmrobust.budget_sweep.BudgetSweep` as a table with one row per budget, the accuracy-vs-budget
    curve of every attack and of the worst case (PNG, accuracy axis from 0), and, when a minimum-norm attack
    ran, the histogram of minimal perturbations with the budgets marked."""
    report.section("Accuracy vs budget")
    report.table("Robust accuracy vs budget", sweep.rows(), key=["budget"],
                 note=f"budget: {sweep.budget_name}; {sweep.num_examples} examples from the {split} split; "
                      "each row is one evaluate call at that budget (worst case: over all attacks, per example)")
    curves = sweep.curves()
    xs = next(iter(curves.values()))[0]
    report.curve("Accuracy vs budget", {"clean": (xs, [sweep.clean_accuracy] * len(xs)), **curves},
                 xlabel=sweep.budget_name, ylabel="accuracy", emphasis=[WORST],
                 caption="Robust accuracy of each attack and the worst case over all attacks at every budget, "
                         "as measured (a curve rising with the budget points to a failing attack).")
    if sweep.min_norms:
        report.section("Minimal perturbations")
        report.histogram("Minimal adversarial perturbation per example", sweep.min_norms,
                         xlabel=f"size of the smallest adversarial perturbation ({sweep.budget_name})",
                         marks=sweep.budgets,
                         caption="Per clean-correct example, the smallest adversarial perturbation the minimum-norm "
                                 "attack found (one uncapped run); dashed lines: the budgets of the sweep.")
        report.table("Minimal perturbation quantiles", sweep.min_norm_summary(),
                     note="quantiles over the examples where an adversarial point was found")
