"""Local (targeted) greedy edge attacks with Nettack's degree-distribution unnoticeability test."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("torch_geometric")

from mmrobust.attacks.local import LocalGreedy, cooccurrence_allowed, degree_test_statistic  # noqa: E402
from mmrobust.graph.data import sbm_graph  # noqa: E402
from mmrobust.graph.models import GCN  # noqa: E402
from mmrobust.graph.training import train_node_classifier  # noqa: E402


def direct_statistic(d0, d1, d_min=2):
    def ll(ds):
        ds = [d for d in ds if d >= d_min]
        n, s = len(ds), sum(math.log(d) for d in ds)
        a = 1 + n / (s - n * math.log(d_min - 0.5))
        return n * math.log(a) + n * a * math.log(d_min) - (a + 1) * s
    return -2 * ll(d0 + d1) + 2 * (ll(d0) + ll(d1))


def test_degree_statistic_matches_direct_formula():
    g = torch.Generator().manual_seed(0)
    d0 = torch.randint(1, 12, (60,), generator=g).double()
    cur = d0.clone()
    cur[3] += 1
    cur[5] -= 1
    nodes = torch.tensor([[7, 1], [9, 2]])
    delta = torch.tensor([1.0, -1.0], dtype=torch.float64)
    stat = degree_test_statistic(d0, cur, nodes, delta)
    for k in range(2):
        new = cur.clone()
        new[nodes[:, k]] += delta[k]
        assert float(stat[k]) == pytest.approx(direct_statistic(d0.tolist(), new.tolist()), rel=1e-9, abs=1e-9)


def test_degree_statistic_is_exact_for_float32_degrees_of_a_large_graph():
    # float32 degrees (the features' dtype) of 20k nodes: a float32 statistic was off by ~0.03, more than the
    # test's threshold 0.004, so flips were accepted or refused by rounding
    g = torch.Generator().manual_seed(0)
    d0 = (torch.rand(20000, generator=g) ** -1.5).floor().clamp(1, 200)
    cur = d0.clone()
    cur[:40] += 1
    nodes = torch.tensor([[0, 50], [7, 60]])
    delta = torch.tensor([1.0, -1.0])
    stat = degree_test_statistic(d0.float(), cur.float(), nodes, delta)
    for k in range(2):
        new = cur.clone()
        new[nodes[:, k]] += delta[k]
        assert float(stat[k]) == pytest.approx(direct_statistic(d0.tolist(), new.tolist()), abs=1e-7)


@pytest.fixture(scope="module")
def trained():
    data = sbm_graph(num_nodes=120, num_classes=3, p_in=0.15, p_out=0.01, feature_noise=1.0, seed=0)
    torch.manual_seed(0)
    model = GCN(3, 3, hidden=16)
    train_node_classifier(model, data, epochs=100, lr=0.02)
    return model.eval(), data


def test_local_attack_flips_only_target_pairs_within_budget(trained):
    model, data = trained
    e0 = data.edge_index.clone()
    nodes = data.test_mask.nonzero().squeeze(1)[:6].tolist()
    fooled = 0
    for t in nodes:
        res = LocalGreedy(2.0, unnoticeable=False)(model, data, t)
        deg = int((data.edge_index[0] == t).sum())
        assert res.budget == max(1, 2 * deg) and len(res.flips) <= res.budget
        assert all(t in pair for pair in res.flips) and len(set(res.flips)) == len(res.flips)
        clean = {(min(a, b), max(a, b)) for a, b in data.edge_index.t().tolist()}
        after = {(min(a, b), max(a, b)) for a, b in res.edge_index.t().tolist()}
        assert clean ^ after == set(res.flips)
        with torch.no_grad():
            out = model(data.x, res.edge_index)[t]
        assert float(LocalGreedy.margin(out, int(data.y[t]))) == pytest.approx(res.margins[-1], abs=1e-5)
        assert res.margins[-1] <= res.margins[0]
        fooled += res.margins[-1] < 0
    assert fooled >= 3
    assert torch.equal(data.edge_index, e0) and not model.training


def test_unnoticeable_flips_pass_the_degree_test(trained):
    model, data = trained
    t = int(data.test_mask.nonzero()[0])
    res = LocalGreedy(3.0, unnoticeable=True)(model, data, t)
    n = data.num_nodes
    deg0 = torch.zeros(n, dtype=torch.float64).index_add_(0, data.edge_index[0], torch.ones(data.edge_index.shape[1],
                                                                                          dtype=torch.float64))
    deg = deg0.clone()
    for a, b in res.flips:      # replay: every accepted flip passes against the clean sequence
        exists = bool(((data.edge_index[0] == a) & (data.edge_index[1] == b)).any())
        delta = -1.0 if exists else 1.0
        stat = degree_test_statistic(deg0, deg, torch.tensor([[a], [b]]), torch.tensor([delta], dtype=torch.float64))
        assert float(stat[0]) < 0.004
        deg[a] += delta
        deg[b] += delta


def nettack_cooccurrence(x, t):
    """The authors' formulation: the full F x F co-occurrence graph, its degrees, the target's scores."""
    xb = (x != 0).double()
    words = (xb.t() @ xb) > 0
    words.fill_diagonal_(False)
    inv = 1 / (words.sum(0).double() + 1e-8)
    s = xb[t].bool()
    score = (words[:, s].double() * inv[s]).sum(1)
    return score > 0.5 * inv[s].sum()


def test_cooccurrence_test_matches_the_full_matrix_formulation():
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(50, 30, generator=g) < 0.1).float()
    for t in range(10):
        assert torch.equal(cooccurrence_allowed(x, t), nettack_cooccurrence(x, t))


class EdgesAndFeatures(torch.nn.Module):
    """A GCN layer plus a strong feature-only path, so that both kinds of flip win some steps."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gcn, self.lin = GCN(24, 3, hidden=8), torch.nn.Linear(24, 3)

    def forward(self, x, edge_index, edge_weight=None):
        return self.gcn(x, edge_index, edge_weight) + 5 * self.lin(x)


@pytest.fixture(scope="module")
def binary():
    data = sbm_graph(num_nodes=120, num_classes=3, p_in=0.15, p_out=0.01, binary_features=24, seed=0)
    return EdgesAndFeatures().eval(), data


@pytest.mark.parametrize("unnoticeable", [False, True])
def test_feature_flips_stay_at_the_target_within_one_budget(binary, unnoticeable):
    model, data = binary
    used_edges = 0
    x0, e0 = data.x.clone(), data.edge_index.clone()
    used_features = 0
    for t in data.test_mask.nonzero().squeeze(1)[:5].tolist():
        res = LocalGreedy(1.0, unnoticeable=unnoticeable, features=True)(model, data, t)
        changed = (res.x != data.x).nonzero()
        assert set(map(tuple, changed.tolist())) == set(res.feature_flips)
        assert bool((changed[:, 0] == t).all()) and bool(((res.x == 0) | (res.x == 1)).all())
        assert len(res.flips) + len(res.feature_flips) <= res.budget and len(res.kinds) == len(res.margins) - 1
        if unnoticeable:        # every added feature passes the co-occurrence test of the clean features
            added = [j for _, j in res.feature_flips if data.x[t, j] == 0]
            assert bool(nettack_cooccurrence(data.x, t)[added].all())
        edges, feats = res.prefix(len(res.kinds))
        assert edges == res.flips and feats == res.feature_flips
        with torch.no_grad():
            out = model(res.x, res.edge_index)[t]
        assert float(LocalGreedy.margin(out, int(data.y[t]))) == pytest.approx(res.margins[-1], abs=1e-5)
        used_features += len(res.feature_flips)
        used_edges += len(res.flips)
    assert used_features > 0 and used_edges > 0
    assert torch.equal(data.x, x0) and torch.equal(data.edge_index, e0)


def test_feature_flips_need_binary_features(trained):
    model, data = trained
    with pytest.raises(ValueError, match="features=True"):
        LocalGreedy(features=True)(model, data, 0)


def test_bad_arguments(trained):
    model, data = trained
    with pytest.raises(ValueError, match="target"):
        LocalGreedy()(model, data, data.num_nodes)
    with pytest.raises(ValueError, match="budget_per_degree"):
        LocalGreedy(0.0)


def _degrees_along(data, flips):
    """Replay ``flips`` on ``data``'s undirected graph; the smallest degree either endpoint has after each flip."""
    n = data.num_nodes
    edges = {tuple(e) for e in data.edge_index.t().tolist() if e[0] != e[1]}
    deg = [0] * n
    for a, _ in edges:
        deg[a] += 1
    after = []
    for a, b in flips:
        step = -1 if (a, b) in edges else 1
        edges ^= {(a, b), (b, a)}
        deg[a] += step
        deg[b] += step
        after.append(min(deg[a], deg[b]))
    return after


@pytest.mark.parametrize("unnoticeable", [False, True])
def test_local_attack_never_removes_a_nodes_last_edge(unnoticeable):
    """Nettack's singleton filter (the authors' and DeepRobust's ``filter_singletons``): on the toy graph the greedy
    attack on nodes 9, 10 and 13 used to remove the last edge of a neighbour (e.g. (8, 9): node 8 left isolated)."""
    from mmrobust.graph.data import toy_graph

    model, data = toy_graph()
    e0 = data.edge_index.clone()
    flipped = 0
    for t in (9, 10, 13):
        result = LocalGreedy(unnoticeable=unnoticeable)(model, data, target=t, budget=3)
        assert min(_degrees_along(data, result.flips), default=1) >= 1, (t, result.flips)
        flipped += len(result.flips)
    assert flipped > 0
    allowed = LocalGreedy(unnoticeable=False, filter_singletons=False)(model, data, target=9, budget=3)
    assert min(_degrees_along(data, allowed.flips)) == 0   # the case exists; the option turns the filter off
    assert torch.equal(data.edge_index, e0)


def test_local_attack_refuses_a_directed_graph():
    """It flips undirected pairs (adds both directions, drops both); on a one-way edge list it used to return a graph
    that mixed one-way and two-way edges, degrees counted from out-edges only.  PRBCD/GRBCD refuse such a graph."""
    from mmrobust.graph.data import toy_graph

    model, data = toy_graph()
    one_way = data.clone()
    one_way.edge_index = data.edge_index[:, data.edge_index[0] < data.edge_index[1]]
    with pytest.raises(ValueError, match=r"directed.*ToUndirected"):
        LocalGreedy(unnoticeable=False)(model, one_way, target=0, budget=2)
