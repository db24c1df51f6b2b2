"""GRBCD with ``max_flips_per_node``: a pair blocked by the limit hands its slot to the next admissible pair
(it used to be dropped, leaving flips unused on graphs with plenty of admissible pairs), and a budget the limit
really cannot fill is reported in ``result.extras["edges/unspent"]`` with a warning."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("torch_geometric")

from torch_geometric.data import Data  # noqa: E402

from mmrobust.attacks import GRBCD  # noqa: E402
from mmrobust.graph.data import toy_graph  # noqa: E402
from mmrobust.graph.models import GCN  # noqa: E402
from mmrobust.threats import EdgeFlips  # noqa: E402
from mmrobust.threats.verify import violations  # noqa: E402
from mmrobust.attacks.base import victim_for  # noqa: E402


def pair_set(edge_index):
    return {(min(a, b), max(a, b)) for a, b in zip(*edge_index.tolist())}


@pytest.mark.parametrize("epochs", [1, 2, 4])
def test_grbcd_spends_the_whole_budget_when_admissible_pairs_exist(epochs):
    model, data = toy_graph()   # 20 nodes: with at most one flip per node, 10 disjoint flips fit; 4 are asked
    clean_ei = data.edge_index.clone()
    threat = EdgeFlips(4, max_flips_per_node=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)   # no "unspent" warning: nothing blocks the budget
        result = GRBCD(threat, block_size=1000, epochs=epochs, seed=0)(model, data)
    flipped = pair_set(clean_ei) ^ pair_set(result.batch.edge_index)   # counted on the graph, independently
    nodes = [v for pair in flipped for v in pair]
    assert len(flipped) == 4 and len(nodes) == len(set(nodes))
    assert "edges/unspent" not in result.extras
    assert not violations(victim_for(model, data), result.inputs, {"edges": threat})
    assert torch.equal(data.edge_index, clean_ei)


def test_grbcd_reports_a_budget_the_node_limit_cannot_fill():
    # 3 nodes, one per-node flip each: any flip touches two of them, so a second flip is never admissible
    data = Data(x=torch.randn(3, 2, generator=torch.Generator().manual_seed(0)),
                edge_index=torch.tensor([[0, 1], [1, 0]]), y=torch.tensor([0, 1, 0]),
                test_mask=torch.ones(3, dtype=torch.bool))
    torch.manual_seed(0)
    model = GCN(2, 2, hidden=4)
    with pytest.warns(UserWarning, match="1 of 2 flips unused.*max_flips_per_node=1"):
        result = GRBCD(EdgeFlips(2, max_flips_per_node=1), block_size=10, epochs=2, seed=0)(model, data)
    assert int(result.size["edges"].sum()) == 1
    assert "max_flips_per_node=1" in result.extras["edges/unspent"]


def test_the_unused_budget_check_quotes_grbcd_and_counts_the_same_flips():
    """``edge_budget_unused`` and GRBCD's own note on unused flips speak of the same numbers, and the check's
    evidence quotes the note (why the flips stayed unused: the per-node limit here)."""
    import re

    from mmrobust import evaluate
    from mmrobust.adapters import GraphAdapter

    model, data = toy_graph()   # 20 nodes: at most one flip per node fits 10 flips; 14 are asked
    attack = GRBCD(EdgeFlips(14, max_flips_per_node=1), block_size=1000, epochs=2, seed=0,
                   adapter=GraphAdapter(mask="test"))
    with pytest.warns(UserWarning, match="flips unused"):
        note = attack(model, data).extras["edges/unspent"]
        out = evaluate(model, [data], attack, progress=False, checks=["edge_budget_unused"])
    unused, budget = map(int, re.match(r"(\d+) of (\d+) flips unused", note).groups())
    check = next(c for c in out["checks"] if c["name"] == "edge_budget_unused")
    assert check["ran"] and check["fired"]
    assert (check["values"]["allowed"], check["values"]["allowed"] - check["values"]["used"]) == (budget, unused)
    assert f"GRBCD: {note}" in check["evidence"] and "max_flips_per_node=1" in check["evidence"]
