"""Red team: LocalGreedy on graphs users really have (edge weights, other forward signatures)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_geometric")

from torch_geometric.nn import GCNConv  # noqa: E402

from mmrobust.attacks import LocalGreedy  # noqa: E402
from _checks_models import SqrtWeights  # noqa: E402
from mmrobust.graph.data import toy_graph  # noqa: E402


def weighted_toy():
    model, data = toy_graph()
    r, c = data.edge_index
    # symmetric weights far from 1, so a graph read without them gives another margin
    data.edge_weight = 0.1 + 0.05 * ((r * c) % 3).float()
    return model, data


def margin(model, data, edge_index, edge_weight, t):
    with torch.no_grad():
        out = model(data.x, edge_index, edge_weight)[t]
    return float(LocalGreedy.margin(out, int(data.y[t])))


def test_local_attack_reads_the_graphs_edge_weights():
    model, data = weighted_toy()
    ei0, w0 = data.edge_index.clone(), data.edge_weight.clone()
    res = LocalGreedy(unnoticeable=False)(model, data, target=0, budget=3)
    # the clean margin is the model's on the user's (weighted) graph, not on a graph with all weights 1
    assert res.margins[0] == pytest.approx(margin(model, data, ei0, w0, 0), abs=1e-5)
    # the returned graph carries its weights: the last margin is the one of the returned graph
    assert res.edge_weight is not None and res.edge_weight.shape == (res.edge_index.shape[1],)
    assert res.margins[-1] == pytest.approx(margin(model, data, res.edge_index, res.edge_weight, 0), abs=1e-5)
    # kept edges keep their weight, added ones weigh 1; graph symmetric, no self-loops, within the budget
    clean = {(a, b): w for (a, b), w in zip(ei0.t().tolist(), w0.tolist())}
    for (a, b), w in zip(res.edge_index.t().tolist(), res.edge_weight.tolist()):
        assert w == pytest.approx(clean.get((a, b), 1.0))
    pairs = set(map(tuple, res.edge_index.t().tolist()))
    assert all((b, a) in pairs and a != b for a, b in pairs)
    assert len(res.flips) <= res.budget == 3
    assert torch.equal(data.edge_index, ei0) and torch.equal(data.edge_weight, w0)


def test_local_attack_calls_the_model_as_its_forward_is_written():
    model, data = toy_graph()

    class Unweighted(torch.nn.Module):  # the PyG tutorial signature: cannot take relaxed edge weights
        def __init__(self):
            super().__init__()
            self.conv = GCNConv(data.num_features, 2)

        def forward(self, x, edge_index):
            return self.conv(x, edge_index)

    with pytest.raises(TypeError, match="edge_weight"):
        LocalGreedy(unnoticeable=False)(Unweighted(), data, target=0, budget=2)

    class DataModel(torch.nn.Module):  # forward(data) reading data.edge_weight
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, d):
            return self.inner(d.x, d.edge_index, d.edge_weight)

    a = LocalGreedy(unnoticeable=False)(DataModel().eval(), data, target=0, budget=3)
    b = LocalGreedy(unnoticeable=False)(model, data, target=0, budget=3)
    assert a.flips == b.flips and a.margins == pytest.approx(b.margins, abs=1e-5)


def test_local_attack_on_a_batch_flips_only_pairs_inside_the_targets_graph():
    from torch_geometric.data import Batch

    model, data = toy_graph()
    batch = Batch.from_data_list([data, data])  # node classification on two graphs at once
    n0 = data.num_nodes
    for target in (0, n0 + 3):
        res = LocalGreedy(unnoticeable=False)(model, batch, target=target, budget=5)
        assert res.flips and all((a < n0) == (b < n0) == (target < n0) for a, b in res.flips)
    single = LocalGreedy(unnoticeable=False)(model, data, target=3, budget=5)
    shifted = LocalGreedy(unnoticeable=False)(model, batch, target=n0 + 3, budget=5)
    assert [(a + n0, b + n0) for a, b in single.flips] == shifted.flips   # the same attack as on the graph alone
    graph_level = batch.clone()
    graph_level.y = torch.tensor([0, 1])  # graph classification labels: not a node attack
    with pytest.raises(ValueError, match="one label per node"):
        LocalGreedy(unnoticeable=False)(model, graph_level, target=0, budget=2)


def test_local_attack_raises_on_non_finite_gradients_instead_of_stopping():
    from mmrobust.errors import NonFiniteError

    model, data = toy_graph()

    with pytest.raises(NonFiniteError, match="relaxed flips"):
        # stopped after 0 flips and reported the target as not misclassified
        LocalGreedy(unnoticeable=False)(SqrtWeights(model).eval(), data, target=0, budget=3)
