"""Red team: a poisoned graph is re-counted against the poisoning threat model, independently of the attack."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_geometric")

from mmrobust.attacks.prbcd import PRBCD  # noqa: E402
from mmrobust.errors import BudgetViolation  # noqa: E402
from mmrobust.graph.data import sbm_graph  # noqa: E402
from mmrobust.graph.poisoning import transfer_poison  # noqa: E402
from mmrobust.threats.graph import EdgeFlips, undirected_pairs  # noqa: E402


def test_transfer_poison_refuses_a_graph_outside_its_threat_model():
    data = sbm_graph(num_nodes=30, num_classes=2, seed=0)
    e0 = data.edge_index.clone()
    # an attack factory that ignores the threat it is given (a copy-paste slip): 12 flips for a budget of 4
    sloppy = lambda threat, adapter: PRBCD(EdgeFlips(12), adapter=adapter, epochs=5, seed=0,  # noqa: E731
                                          spend_budget="always", progress=False)
    # was returned as is: result.budget == 4, result.unspent == "" and 12 flips in result.data
    with pytest.raises(BudgetViolation, match=r"flips 12 pairs > budget 4"):
        transfer_poison(data, EdgeFlips(4), clean_epochs=20, attack=sloppy)
    assert torch.equal(data.edge_index, e0)
    ok = transfer_poison(data, EdgeFlips(4), clean_epochs=20)
    flipped = {tuple(p) for p in undirected_pairs(e0).t().tolist()} ^ \
        {tuple(p) for p in undirected_pairs(ok.data.edge_index).t().tolist()}
    assert len(flipped) == 4 == ok.budget
