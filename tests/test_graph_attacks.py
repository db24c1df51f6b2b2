"""Graph attacks: PRBCD / GRBCD edge flips, feature attacks and the graph adapter on small SBM graphs."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_geometric")

from torch_geometric.data import Batch, Data  # noqa: E402
from torch_geometric.utils import is_undirected  # noqa: E402

from mmrobust.adapters.graph import GraphAdapter  # noqa: E402
from mmrobust.attacks import PGD  # noqa: E402
from mmrobust.attacks.graph_baselines import DICE, RandomFlips  # noqa: E402
from mmrobust.attacks import GRBCD, PRBCD  # noqa: E402
from mmrobust.graph.data import sbm_graph  # noqa: E402
from mmrobust.graph.models import GCN  # noqa: E402
from mmrobust.graph.training import train_node_classifier  # noqa: E402
from mmrobust.threats.graph import EdgeFlips, FeatureBall, project_capped_simplex  # noqa: E402


def pair_set(edge_index):
    r, c = edge_index
    return {(min(a, b), max(a, b)) for a, b in zip(r.tolist(), c.tolist())}


def flips(clean, adv):
    return pair_set(clean.edge_index) ^ pair_set(adv.edge_index)


def accuracy(model, data, mask):
    with torch.no_grad():
        return (model(data.x, data.edge_index).argmax(1) == data.y)[mask].float().mean().item()


@pytest.fixture(scope="module")
def sbm():
    data = sbm_graph(num_nodes=120, num_classes=3, p_in=0.15, p_out=0.01, feature_noise=1.5, seed=0)
    torch.manual_seed(0)
    model = GCN(data.num_features, 3, hidden=16)
    train_node_classifier(model, data, epochs=100, lr=0.02)
    model.eval()
    acc = accuracy(model, data, data.test_mask)
    assert acc > 0.8, f"SBM fixture model trained badly ({acc:.2f})"
    return model, data


def fast_prbcd(budget, **kw):
    kw.setdefault("adapter", GraphAdapter(mask="test"))
    kw.setdefault("seed", 0)
    return PRBCD(budget, block_size=2000, epochs=40, epochs_resampling=30, **kw)


def test_prbcd_lowers_accuracy_and_keeps_exact_budget(sbm):
    model, data = sbm
    x0, e0 = data.x.clone(), data.edge_index.clone()
    threat = EdgeFlips(0.15)
    result = fast_prbcd(threat)(model, data)
    adv = result.batch
    budget = int(0.15 * data.edge_index.shape[1] / 2)
    flipped = flips(data, adv)
    assert 0 < len(flipped) <= budget
    assert result.size["edges"].tolist() == [float(len(flipped))]
    assert {tuple(p) for p in result.inputs["flipped_edges"].t().tolist()} == flipped
    assert is_undirected(adv.edge_index) and not bool((adv.edge_index[0] == adv.edge_index[1]).any())
    clean = accuracy(model, data, data.test_mask)
    after = accuracy(model, adv, data.test_mask)
    assert after < clean - 0.2, (clean, after)
    assert result.adv_correct.float().mean().item() == pytest.approx(after)
    # the user's graph is untouched
    assert torch.equal(data.x, x0) and torch.equal(data.edge_index, e0)


def test_grbcd_lowers_accuracy_within_budget(sbm):
    model, data = sbm
    result = GRBCD(EdgeFlips(20), block_size=2000, epochs=10, adapter=GraphAdapter(mask="test"), seed=0)(model, data)
    flipped = flips(data, result.batch)
    assert len(flipped) == 20
    assert is_undirected(result.batch.edge_index)
    assert accuracy(model, result.batch, data.test_mask) < accuracy(model, data, data.test_mask) - 0.15


def test_prbcd_beats_random_and_dice(sbm):
    model, data = sbm
    adapter = GraphAdapter(mask="test")
    strong = fast_prbcd(EdgeFlips(20))(model, data).adv_correct.float().mean()
    for baseline in (RandomFlips(EdgeFlips(20), adapter=adapter, seed=0), DICE(EdgeFlips(20), adapter=adapter, seed=0)):
        result = baseline(model, data)
        assert len(flips(data, result.batch)) == 20
        assert is_undirected(result.batch.edge_index)
        assert strong < result.adv_correct.float().mean()


def test_local_attack_only_touches_target_edges(sbm):
    model, data = sbm
    targets = data.test_mask.nonzero().squeeze(1)[:3]
    adapter = GraphAdapter(mask=targets)
    result = fast_prbcd(EdgeFlips(6, local=True), adapter=adapter)(model, data)
    flipped = flips(data, result.batch)
    assert 0 < len(flipped) <= 6
    allowed = set(targets.tolist())
    assert all(a in allowed or b in allowed for a, b in flipped)
    assert result.target.shape == (3,)
    greedy = GRBCD(EdgeFlips(4, local=True), block_size=500, epochs=4, adapter=adapter, seed=0)(model, data)
    assert all(a in allowed or b in allowed for a, b in flips(data, greedy.batch))


def test_degree_limit(sbm):
    model, data = sbm
    result = fast_prbcd(EdgeFlips(30, max_flips_per_node=1))(model, data)
    touched = [n for pair in flips(data, result.batch) for n in pair]
    assert len(touched) == len(set(touched)) > 0


def test_seed_makes_attacks_deterministic(sbm):
    model, data = sbm
    a = fast_prbcd(EdgeFlips(10))(model, data).batch.edge_index
    b = fast_prbcd(EdgeFlips(10))(model, data).batch.edge_index
    assert torch.equal(a, b)


def test_bad_budgets_are_refused(sbm):
    model, data = sbm
    with pytest.raises(ValueError, match="budget"):
        EdgeFlips(-1)
    with pytest.raises(ValueError, match="budget"):
        EdgeFlips(1.5)
    with pytest.raises(TypeError, match="budget"):
        EdgeFlips("5%")
    tiny = Data(x=torch.randn(4, 2), edge_index=torch.tensor([[0, 1], [1, 0]]), y=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds the 6 candidate"):
        PRBCD(EdgeFlips(7), block_size=100, adapter=GraphAdapter(mask=None))(GCN(2, 2, hidden=4), tiny)
    with pytest.raises(ValueError, match="block_size"):
        PRBCD(EdgeFlips(10), block_size=5, adapter=GraphAdapter(mask="test"))(model, data)
    with pytest.raises(ValueError, match="mask"):
        GraphAdapter(mask="holdout")
    directed = Data(x=torch.randn(4, 2), edge_index=torch.tensor([[0, 1], [1, 2]]), y=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="directed"):
        PRBCD(EdgeFlips(1), block_size=100, adapter=GraphAdapter(mask=None))(GCN(2, 2, hidden=4), directed)


def test_feature_pgd_stays_in_budget(sbm):
    model, data = sbm
    result = PGD(FeatureBall(0.5, "linf"), steps=10, adapter=GraphAdapter(mask="test"), seed=0)(model, data)
    assert result.batch.x.shape == data.x.shape
    assert float((result.batch.x - data.x).abs().max()) <= 0.5 + 1e-6
    assert result.size["x"].shape == (1,) and float(result.size["x"]) <= 0.5 + 1e-6
    assert result.adv_correct.float().mean() < result.clean_correct.float().mean() - 0.1
    l2 = PGD(FeatureBall(2.0, "l2"), steps=5, adapter=GraphAdapter(mask="test"), seed=0)(model, data)
    assert float((l2.batch.x - data.x).norm()) <= 2.0 + 1e-4


def test_joint_edges_and_binary_features():
    data = sbm_graph(num_nodes=60, num_classes=2, p_in=0.15, p_out=0.02, binary_features=16, seed=1)
    torch.manual_seed(0)
    model = GCN(data.num_features, 2, hidden=8)
    train_node_classifier(model, data, epochs=60, lr=0.02)
    threat = {"edges": EdgeFlips(5), "x": FeatureBall(8, "bits")}
    result = PRBCD(threat, block_size=500, epochs=20, epochs_resampling=15, adapter=GraphAdapter(mask=None),
                   seed=0)(model, data)
    dx = result.batch.x - data.x
    assert set(dx.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert int(dx.abs().sum()) <= 8
    assert set(result.batch.x.unique().tolist()) <= {0.0, 1.0}
    assert len(flips(data, result.batch)) <= 5
    assert set(result.size) == {"x", "edges"}
    with pytest.raises(ValueError, match="binary"):
        PGD(FeatureBall(2, "bits"), adapter=GraphAdapter(mask=None))(model, Data(
            x=data.x * 0.5, edge_index=data.edge_index, y=data.y))


def test_graph_classification_batch_has_per_graph_budgets():
    torch.manual_seed(0)
    graphs = []
    for i in range(4):
        d = sbm_graph(num_nodes=12, num_classes=2, p_in=0.4, p_out=0.05, seed=10 + i)
        graphs.append(Data(x=d.x, edge_index=d.edge_index, y=torch.tensor([i % 2])))
    batch = Batch.from_data_list(graphs)
    model = GCN(batch.num_features, 2, hidden=8, graph_level=True).eval()
    result = PRBCD(EdgeFlips(3), block_size=200, epochs=10, epochs_resampling=5, seed=0)(model, batch)
    assert result.target.shape == (4,) and result.unit is None
    assert result.size["edges"].shape == (4,)
    assert bool((result.size["edges"] <= 3).all())
    node_graph = batch.batch
    for a, b in flips(batch, result.batch):
        assert node_graph[a] == node_graph[b]          # never across graphs
    per_graph = torch.zeros(4)
    for a, _ in flips(batch, result.batch):
        per_graph[node_graph[a]] += 1
    assert torch.equal(per_graph, result.size["edges"])
    # the spine's PGD on the dense (graphs, max_nodes, F) layout leaves padding alone
    feat = PGD(FeatureBall(0.1), steps=3, seed=0)(model, batch)
    assert feat.batch.x.shape == batch.x.shape
    assert float((feat.batch.x - batch.x).abs().max()) <= 0.1 + 1e-6


def test_projection_onto_capped_simplex():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(50, generator=g) * 2
    seg = torch.arange(50) % 2
    budget = torch.tensor([3.0, 100.0])
    p = project_capped_simplex(v, seg, budget, 2)
    assert bool(((p >= 0) & (p <= 1)).all())
    assert float(p[seg == 0].sum()) == pytest.approx(3.0, abs=1e-4)
    assert torch.allclose(p[seg == 1], v[seg == 1].clamp(0, 1))
    # closest point: no random feasible point is nearer
    for _ in range(20):
        q = torch.rand(25, generator=g)
        q = q * min(1.0, 3.0 / float(q.sum()))
        assert float((q - v[seg == 0]).norm()) >= float((p[seg == 0] - v[seg == 0]).norm()) - 1e-5


def _graph_batch(num_graphs=4):
    graphs = []
    for i in range(num_graphs):
        d = sbm_graph(num_nodes=10 + 2 * i, num_classes=2, p_in=0.4, p_out=0.05, seed=20 + i)
        graphs.append(Data(x=d.x, edge_index=d.edge_index, y=torch.tensor([i % 2])))
    return Batch.from_data_list(graphs)


def test_adversarial_training_ratio_perturbs_only_chosen_graphs():
    from mmrobust.callbacks.adversarial import AdversarialTraining

    batch = _graph_batch()
    torch.manual_seed(0)
    model = GCN(batch.num_features, 2, hidden=8, graph_level=True).eval()
    at = AdversarialTraining(PGD(FeatureBall(0.1), steps=3, seed=0), ratio=0.5, seed=0)
    adv = at.adversarial_batch(model, batch, at.attack)
    assert adv.x.shape == batch.x.shape
    changed = torch.zeros(batch.num_graphs, dtype=torch.bool).index_fill_(
        0, batch.batch[(adv.x - batch.x).abs().amax(1) > 0], True)
    assert int(changed.sum()) == 2                      # ratio 0.5 of 4 graphs, the rest untouched
    assert float((adv.x - batch.x).abs().max()) <= 0.1 + 1e-6


def test_masked_ce_is_a_registered_per_output_loss():
    from mmrobust.attacks import get_loss, masked_cross_entropy
    assert get_loss("masked_ce") is masked_cross_entropy
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.5]])
    labels = torch.tensor([0, 0, 0])                   # row 1 is already misclassified
    loss = get_loss("masked_ce")(logits, labels)
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert loss.shape == (3,) and loss[1] == 0 and torch.allclose(loss[[0, 2]], ce[[0, 2]])
    with pytest.raises(ValueError, match="untargeted"):
        masked_cross_entropy(logits, labels, torch.tensor([1, 1, 1]))
