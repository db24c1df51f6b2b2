"""Red team: evaluation re-counts the edge budget of every graph attack's returned graph."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_geometric")

from mmrobust import evaluate  # noqa: E402
from mmrobust.attacks import DICE, GRBCD, PRBCD, RandomFlips  # noqa: E402
from mmrobust.errors import BudgetViolation  # noqa: E402
from _checks_models import SqrtWeights  # noqa: E402
from mmrobust.graph.data import toy_graph  # noqa: E402
from mmrobust.threats import EdgeFlips, LinfBall  # noqa: E402
from mmrobust.threats.verify import run_checked  # noqa: E402


class FourTimesTheBudget(RandomFlips):
    """A buggy edge attack: its bookkeeping allows four times the flips of its threat model."""

    def edge_budget(self, graph, threat, pairs):
        return super().edge_budget(graph, threat, pairs) * 4


def test_an_edge_attack_over_its_budget_is_caught_by_the_independent_check():
    model, data = toy_graph()   # 14 undirected edges: EdgeFlips(0.1) allows 1 flip
    attack = FourTimesTheBudget(EdgeFlips(0.1), seed=0)
    assert int(attack(model, data).size["edges"].sum()) == 4
    with pytest.raises(BudgetViolation, match="flips 4 pairs > budget 1"):
        run_checked(attack, model, data)
    with pytest.raises(BudgetViolation):   # the check ran on feature threats only: 4 flips were counted
        evaluate(model, [data], attack, progress=False, checks=False)


@pytest.mark.parametrize("attack", [
    PRBCD(EdgeFlips(0.2), epochs=5, seed=0), GRBCD(EdgeFlips(0.2), seed=0), DICE(EdgeFlips(0.2), seed=0),
    PRBCD(EdgeFlips(0.3, local=True), epochs=5, seed=0), PRBCD({"edges": EdgeFlips(0.2), "x": LinfBall(0.1)}, epochs=5, seed=0),
], ids=["prbcd", "grbcd", "dice", "prbcd-local", "prbcd-edges+features"])
def test_the_library_edge_attacks_pass_the_check(attack):
    model, data = toy_graph()
    result = evaluate(model, [data], attack, progress=False, checks=False)
    assert 0 <= result["robust_accuracy"] <= result["clean_accuracy"]


def test_an_ensemble_of_edge_attacks_is_refused_with_what_to_write_instead():
    from mmrobust.attacks import Ensemble

    with pytest.raises(TypeError, match=r"cannot combine edge-flip attacks.*mmrobust.evaluate"):
        Ensemble([PRBCD(EdgeFlips(0.2), epochs=5, seed=0), GRBCD(EdgeFlips(0.2), seed=0)])  # was a KeyError later


def test_the_robust_accuracy_curve_checks_every_returned_graph():
    from mmrobust.graph.training import robust_accuracy_curve

    model, data = toy_graph()
    rows = robust_accuracy_curve(model, data, lambda b: RandomFlips(EdgeFlips(b), seed=0), [0.1, 0.2])
    assert [r["flips"] for r in rows] == [1.0, 2.0]
    with pytest.raises(BudgetViolation):   # read the attack's own result unchecked
        robust_accuracy_curve(model, data, lambda b: FourTimesTheBudget(EdgeFlips(b), seed=0), [0.1])


def test_grbcd_raises_on_non_finite_edge_gradients_instead_of_flipping_nothing():
    from mmrobust.errors import NonFiniteError

    model, data = toy_graph()

    with pytest.raises(NonFiniteError, match="edge weights"):
        # returned the clean graph (0 flips) and a robust accuracy equal to the clean one
        GRBCD(EdgeFlips(0.2), seed=0)(SqrtWeights(model).eval(), data)
