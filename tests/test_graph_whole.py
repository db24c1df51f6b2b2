"""Perturbed graphs are whole graphs: per-edge attributes follow their edges, a perturbed PyG ``Batch`` is a
valid batch, graph batches can be split by unit, and edge baselines honour ``max_flips_per_node``."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_geometric")

from torch_geometric.data import Batch, Data  # noqa: E402

from mmrobust import evaluate  # noqa: E402
from mmrobust.adapters.graph import GraphAdapter  # noqa: E402
from mmrobust.attacks import DICE, GRBCD, PGD, PRBCD, RandomFlips  # noqa: E402
from mmrobust.graph.data import sbm_graph  # noqa: E402
from mmrobust.graph.models import GCN  # noqa: E402
from mmrobust.graph.training import train_node_classifier  # noqa: E402
from mmrobust.threats.graph import EdgeFlips, FeatureBall  # noqa: E402


def with_edge_ids(data):
    """``edge_attr`` rows that name their own directed edge: ``(row * N + col, 7)``."""
    row, col = data.edge_index
    ids = (row * data.num_nodes + col).float()
    data.edge_attr = torch.stack([ids, torch.full_like(ids, 7.0)], 1)
    return data


def assert_rows_follow_edges(clean, adv, added_row=(0.0, 0.0)):
    n = clean.num_nodes
    assert adv.edge_attr.shape == (adv.edge_index.shape[1], 2)
    ids = adv.edge_index[0] * n + adv.edge_index[1]
    clean_ids = set((clean.edge_index[0] * n + clean.edge_index[1]).tolist())
    kept = torch.tensor([i in clean_ids for i in ids.tolist()], dtype=torch.bool)
    assert torch.equal(adv.edge_attr[kept, 0], ids[kept].float())     # each kept edge keeps its own row
    assert bool((adv.edge_attr[kept, 1] == 7).all())
    assert bool((~kept).any()), "the attack added no edge; the test needs one"
    assert torch.equal(adv.edge_attr[~kept], torch.tensor(added_row).expand(int((~kept).sum()), 2))


@pytest.fixture(scope="module")
def node_graph():
    data = with_edge_ids(sbm_graph(num_nodes=120, num_classes=3, p_in=0.15, p_out=0.01, feature_noise=1.5, seed=0))
    torch.manual_seed(0)
    model = GCN(data.num_features, 3, hidden=16)
    train_node_classifier(model, data, epochs=60, lr=0.02)
    return model.eval(), data


ATTACKS = {
    "prbcd": lambda t: PRBCD(t, block_size=2000, epochs=20, seed=0),
    "grbcd": lambda t: GRBCD(t, block_size=2000, epochs=5, seed=0),
    "dice": lambda t: DICE(t, seed=0),
    "random_flips": lambda t: RandomFlips(t, seed=0),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_edge_attr_rows_belong_to_their_edges(node_graph, name):
    model, data = node_graph
    attr0 = data.edge_attr.clone()
    result = ATTACKS[name](EdgeFlips(30))(model, data)
    assert_rows_follow_edges(data, result.batch)
    assert torch.equal(data.edge_attr, attr0)                      # the user's graph is untouched


def test_added_edge_values_are_the_users_choice(node_graph):
    model, data = node_graph
    adapter = GraphAdapter(mask="test", added_edge_values={"edge_attr": torch.tensor([-1.0, 3.0])})
    adv = RandomFlips(EdgeFlips(30), seed=0, adapter=adapter)(model, data).batch
    assert_rows_follow_edges(data, adv, added_row=(-1.0, 3.0))
    refuse = GraphAdapter(mask="test", added_edge_values="refuse")
    with pytest.raises(ValueError, match="edge_attr"):
        RandomFlips(EdgeFlips(30), seed=0, adapter=refuse)(model, data)
    with pytest.raises(ValueError, match="added_edge_values"):
        GraphAdapter(added_edge_values="ones")


def test_weighted_graph_keeps_its_weights(node_graph):
    model, data = node_graph
    weighted = data.clone()
    weighted.edge_weight = torch.rand(data.edge_index.shape[1]) + 0.5
    adv = DICE(EdgeFlips(30), seed=0)(model, weighted).batch
    n = data.num_nodes
    weight_of = dict(zip((data.edge_index[0] * n + data.edge_index[1]).tolist(), weighted.edge_weight.tolist()))
    for key, w in zip((adv.edge_index[0] * n + adv.edge_index[1]).tolist(), adv.edge_weight.tolist()):
        assert w == pytest.approx(weight_of.get(key, 1.0))


def graph_batch(num_graphs=4):
    graphs = []
    for i in range(num_graphs):
        d = sbm_graph(num_nodes=10 + 2 * i, num_classes=2, p_in=0.4, p_out=0.05, seed=20 + i)
        graphs.append(with_edge_ids(Data(x=d.x, edge_index=d.edge_index, y=torch.tensor([i % 2]))))
    return graphs, Batch.from_data_list(graphs)


@pytest.mark.parametrize("name", ["prbcd", "random_flips"])
def test_perturbed_batch_splits_into_whole_graphs(name):
    graphs, batch = graph_batch()
    torch.manual_seed(0)
    model = GCN(batch.num_features, 2, hidden=8, graph_level=True).eval()
    result = ATTACKS[name](EdgeFlips(3))(model, batch)
    adv = result.batch
    parts = adv.to_data_list()
    assert sum(p.edge_index.shape[1] for p in parts) == adv.edge_index.shape[1]
    flipped = {tuple(p) for p in result.inputs["flipped_edges"].t().tolist()}
    offsets = batch.ptr.tolist()
    for g, (clean, part) in enumerate(zip(graphs, parts)):
        assert part.num_nodes == clean.num_nodes
        assert int(part.edge_index.max()) < part.num_nodes and int(part.edge_index.min()) >= 0
        assert part.edge_attr.shape[0] == part.edge_index.shape[1]
        assert_rows_follow_edges(clean, part)
        # the graph holds exactly its clean edges with its own flips applied
        pairs = lambda ei: {(min(a, b), max(a, b)) for a, b in ei.t().tolist()}  # noqa: E731
        own = {(a - offsets[g], b - offsets[g]) for a, b in flipped if offsets[g] <= a < offsets[g + 1]}
        assert pairs(part.edge_index) == pairs(clean.edge_index) ^ own
    again = Batch.from_data_list(parts)
    assert torch.equal(again.edge_index, adv.edge_index) and torch.equal(again.edge_attr, adv.edge_attr)


def test_victim_select_on_graph_batch():
    _, batch = graph_batch()
    torch.manual_seed(0)
    model = GCN(batch.num_features, 2, hidden=8, graph_level=True).eval()
    victim = GraphAdapter().victim(model, batch)
    assert victim.select is not None
    index = torch.tensor([1, 3])
    sub = victim.select(index)
    assert sub.inputs["x"].shape == (2,) + tuple(victim.inputs["x"].shape[1:])   # same dense layout
    assert torch.equal(sub.inputs["x"], victim.inputs["x"][index])
    assert torch.equal(sub.target, victim.target[index])
    with torch.no_grad():
        assert torch.allclose(sub.forward(sub.inputs), victim.forward(victim.inputs)[index], atol=1e-6)
    rebuilt = sub.rebuild(sub.inputs)
    assert rebuilt.num_graphs == 2
    # a selected sub-batch read again keeps the layout (AdversarialTraining(ratio < 1) writes it back by unit)
    assert GraphAdapter().victim(model, rebuilt).inputs["x"].shape == sub.inputs["x"].shape
    # early stopping (which drops broken graphs through select) gives the same numbers as without it
    attack = PGD(FeatureBall(1.0), steps=10, seed=0)
    early = evaluate(model, [batch], attack, progress=False)
    full = evaluate(model, [batch], attack, early_stop=False, progress=False)
    assert early["robust_accuracy"] == full["robust_accuracy"]


@pytest.mark.parametrize("cls", [RandomFlips, DICE])
def test_baselines_honour_max_flips_per_node(node_graph, cls):
    model, data = node_graph
    result = cls(EdgeFlips(20, max_flips_per_node=1), seed=0)(model, data)
    flipped = result.inputs["flipped_edges"]
    assert flipped.shape[1] == 20                                  # the whole budget, spent
    assert int(torch.bincount(flipped.reshape(-1), minlength=data.num_nodes).max()) <= 1


def test_prbcd_epochs_resampling_follows_epochs(node_graph):
    model, data = node_graph
    attack = PRBCD(EdgeFlips(5), epochs=5, block_size=500, seed=0)
    assert attack.epochs_resampling == 4
    assert int(attack(model, data).size["edges"].sum()) <= 5
    with pytest.raises(ValueError, match=r"epochs_resampling.*0\.8 x epochs"):
        PRBCD(EdgeFlips(5), epochs=5, epochs_resampling=6)


@pytest.mark.parametrize("threat", [EdgeFlips(0.25), EdgeFlips(30, max_flips_per_node=1)], ids=["fraction", "limit"])
def test_default_prbcd_spends_its_whole_budget(node_graph, threat):
    model, data = node_graph
    attack = PRBCD(threat, block_size=2000, epochs=20, seed=0)   # the default loss, samples and fill-up
    assert attack.loss_name == "prob_margin"
    result = attack(model, data)
    budget = int(threat.flips_allowed(torch.tensor(data.edge_index.shape[1] // 2)))
    flipped = result.inputs["flipped_edges"]
    assert flipped.shape[1] == budget == int(result.size["edges"].sum())
    if threat.max_flips_per_node is not None:
        assert int(torch.bincount(flipped.reshape(-1)).max()) <= threat.max_flips_per_node


class ReadsEdgeAttr(torch.nn.Module):
    """A ``forward(data)`` model that reads ``data.edge_attr`` and records whether every row it was given
    belongs to its edge (rows of added edges are marked -1 by ``added_edge_values``)."""

    def __init__(self, gcn):
        super().__init__()
        self.gcn, self.rows_matched = gcn, []

    def forward(self, data):
        ei, attr = data.edge_index, data.edge_attr
        ok = attr.shape[0] == ei.shape[1]
        if ok:
            ids = (ei[0] * data.num_nodes + ei[1]).float()
            own = attr[:, 0] >= 0
            ok = bool(torch.equal(attr[own, 0], ids[own])) and bool((attr[:, 1] == 7).all())
        self.rows_matched.append(ok)
        return self.gcn(data.x, ei, getattr(data, "edge_weight", None))


@pytest.mark.parametrize("name", ["prbcd", "dice"])
def test_data_models_read_edge_attr_of_the_perturbed_edges_while_attacked(node_graph, name):
    """During the attack (not only in the returned graph) a ``forward(data)`` model sees one ``edge_attr`` row
    per edge of the perturbed ``edge_index``, each its own edge's row."""
    gcn, data = node_graph
    model = ReadsEdgeAttr(gcn)
    adapter = GraphAdapter(added_edge_values={"edge_attr": [-1.0, 7.0]})
    attack = PRBCD(EdgeFlips(0.1), block_size=2000, epochs=20, seed=0, adapter=adapter) if name == "prbcd" \
        else DICE(EdgeFlips(0.1), seed=0, adapter=adapter)
    result = attack(model, data.clone())
    assert model.rows_matched and all(model.rows_matched), model.rows_matched.count(False)
    assert result.batch.edge_attr.shape[0] == result.batch.edge_index.shape[1]
