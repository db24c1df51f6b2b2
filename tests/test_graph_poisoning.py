"""Graph poisoning: MetaPRBCD (meta-gradients through unrolled training) and transfer poisoning."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("torch_geometric")

from torch_geometric.utils import is_undirected  # noqa: E402

from mmrobust.graph.poisoning import MetaPRBCD, poison, transfer_poison  # noqa: E402
from mmrobust.attacks.prbcd import PRBCD  # noqa: E402
from mmrobust.attacks.edge_candidates import CandidatePairs, EdgeBlock, EdgeLookup  # noqa: E402
from mmrobust.adapters.graph import GraphAdapter  # noqa: E402
from mmrobust.graph.data import sbm_graph  # noqa: E402
from mmrobust.graph.models import GCN  # noqa: E402
from mmrobust.graph.training import node_accuracy, train_node_classifier  # noqa: E402
from mmrobust.threats.graph import EdgeFlips  # noqa: E402

FAST = dict(inner_steps=20, epochs=12, epochs_resampling=8, block_size=3000, clean_epochs=80, final_samples=3)


@pytest.fixture(scope="module")
def graph():
    return sbm_graph(num_nodes=150, num_classes=3, p_in=0.12, p_out=0.01, feature_noise=1.0, train_fraction=0.2,
                     seed=0)


def pairs_of(edge_index):
    return {(min(a, b), max(a, b)) for a, b in edge_index.t().tolist() if a != b}


def trained_accuracy(data, seeds=(0, 1)):
    accs = []
    for s in seeds:
        torch.manual_seed(s)
        model = GCN(data.num_features, 3, hidden=16)
        train_node_classifier(model, data, epochs=100, lr=0.02)
        accs.append(node_accuracy(model, data))
    return sum(accs) / len(accs)


def test_meta_gradient_matches_finite_differences(graph):
    """The gradient of the unrolled training w.r.t. a flip weight is the derivative of the trained model's loss."""
    data = graph.clone()
    data.x = data.x.double()
    attack = MetaPRBCD(EdgeFlips(5), inner_steps=5, inner_lr=0.1)
    torch.manual_seed(0)
    model = GCN(3, 3, hidden=4, dropout=0.0).double().eval()
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    struct = GraphAdapter(mask=None).victim(model, data).meta["graph"]
    pairs = CandidatePairs(struct, local=False)
    block = EdgeBlock(pairs.sample(40, torch.Generator().manual_seed(0), "cpu"), None, pairs,
                      EdgeLookup(data.edge_index, data.num_nodes))
    base = torch.ones(data.edge_index.shape[1], dtype=torch.float64)
    p0 = torch.full((block.keys.numel(),), 0.3, dtype=torch.float64)

    def loss(p, differentiable):
        ei, ew = block.perturbed(data.edge_index, base, p)
        return attack._inner(model, init, data, data.y, ei, ew, differentiable)

    p = p0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(p, True), [p])
    h = 1e-5
    for i in (0, 7, 21):
        e = torch.zeros_like(p0)
        e[i] = h
        fd = (loss(p0 + e, False) - loss(p0 - e, False)) / (2 * h)
        assert float(fd.detach()) == pytest.approx(float(grad[i]), rel=1e-4, abs=1e-8)


def test_meta_poisoning_stays_in_budget_and_hurts_training(graph):
    data = graph
    e0, x0 = data.edge_index.clone(), data.x.clone()
    result = poison(data, EdgeFlips(0.2), method="meta", **FAST)
    budget = int(0.2 * data.edge_index.shape[1] / 2)
    flipped = pairs_of(data.edge_index) ^ pairs_of(result.data.edge_index)
    assert result.budget == budget and len(flipped) == budget
    assert flipped == {tuple(p) for p in result.flipped_edges.t().tolist()}
    assert is_undirected(result.data.edge_index) and not bool((result.data.edge_index[0] ==
                                                               result.data.edge_index[1]).any())
    assert torch.equal(data.edge_index, e0) and torch.equal(data.x, x0)
    clean, poisoned = trained_accuracy(data), trained_accuracy(result.data)
    assert poisoned < clean - 0.1, (clean, poisoned)


def test_meta_poisoning_spends_the_whole_budget(graph):
    """A block barely larger than the budget leaves fewer than ``budget`` weights above eps after the projected
    steps; the returned graph still flips exactly the budget (the remaining flips by meta-gradient)."""
    e0 = graph.edge_index.clone()
    result = MetaPRBCD(EdgeFlips(20), **{**FAST, "epochs": 4, "epochs_resampling": 0, "block_size": 25})(graph)
    flipped = pairs_of(graph.edge_index) ^ pairs_of(result.data.edge_index)
    assert len(flipped) == 20 == result.budget == result.flipped_edges.shape[1]
    assert flipped == {tuple(p) for p in result.flipped_edges.t().tolist()}
    assert torch.equal(graph.edge_index, e0)


def test_transfer_poisoning_stays_in_budget_and_keeps_labels(graph):
    result = transfer_poison(graph, EdgeFlips(10), clean_epochs=60, attack=lambda threat, adapter: PRBCD(
        threat, adapter=adapter, block_size=2000, epochs=20, epochs_resampling=15, seed=0))
    flipped = pairs_of(graph.edge_index) ^ pairs_of(result.data.edge_index)
    assert len(flipped) == 10 == result.budget and result.unspent == ""
    assert torch.equal(result.data.y, graph.y)


def test_transfer_poisoning_spends_the_whole_budget():
    """Evasion PRBCD leaves a flip unused here (filling it lowers the surrogate's evasion score); transfer
    poisoning, judged by a retrained model, spends it (``spend_budget="always"``, its default), and says why when
    an attack it is given does not."""
    data = sbm_graph(num_nodes=80, num_classes=3, p_in=0.15, p_out=0.02, feature_noise=1.0, train_fraction=0.2,
                     seed=2)
    e0 = data.edge_index.clone()
    out = {}
    for spend in ("if_not_worse", "always"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out[spend] = transfer_poison(data, EdgeFlips(0.25), seed=1, clean_epochs=100, attack=lambda t, a: PRBCD(
                t, adapter=a, epochs=40, seed=1, spend_budget=spend))
        out[spend].warned = [str(w.message) for w in caught if "transfer_poison" in str(w.message)]
    short, full = out["if_not_worse"], out["always"]
    assert short.budget == full.budget == 46
    assert len(pairs_of(e0) ^ pairs_of(short.data.edge_index)) == 45
    assert "1 of 46 flips unused" in short.unspent and "spend_budget='always'" in short.unspent and short.warned
    flipped = pairs_of(e0) ^ pairs_of(full.data.edge_index)
    assert len(flipped) == 46 and flipped == {tuple(p) for p in full.flipped_edges.t().tolist()}
    assert full.unspent == "" and not full.warned
    assert is_undirected(full.data.edge_index) and not bool((full.data.edge_index[0] == full.data.edge_index[1]).any())
    assert torch.equal(data.edge_index, e0)


def test_transfer_poisoning_default_attack_spends_the_budget_and_explains_a_node_limit():
    data = sbm_graph(num_nodes=30, num_classes=2, seed=0)
    result = transfer_poison(data, EdgeFlips(6), clean_epochs=30)
    assert "spend_budget=always" in result.attack and result.budget == 6
    assert len(pairs_of(data.edge_index) ^ pairs_of(result.data.edge_index)) == 6
    # one flip per node: a 15-pair block cannot hold 14 node-disjoint pairs of large gradient -> said, not hidden
    with pytest.warns(UserWarning, match="max_flips_per_node"):
        limited = transfer_poison(data, EdgeFlips(14, max_flips_per_node=1), clean_epochs=30,
                                  attack=lambda t, a: PRBCD(t, adapter=a, block_size=15, epochs=5, seed=0,
                                                            spend_budget="always"))
    used = limited.flipped_edges.shape[1]
    assert used < 14 and f"{14 - used} of 14 flips unused" in limited.unspent
    assert limited.flipped_edges.flatten().unique().numel() == 2 * used      # each node flipped at most once


def test_poisoning_keeps_edge_weights_and_float64(graph):
    data = graph.clone()
    data.x = data.x.double()
    data.edge_weight = torch.full((data.edge_index.shape[1],), 0.5, dtype=torch.float64)
    result = MetaPRBCD(EdgeFlips(4), surrogate=lambda f, c: GCN(f, c, hidden=8, dropout=0.0),
                       **{**FAST, "epochs": 3, "epochs_resampling": 2})(data)
    out = result.data
    assert out.edge_weight.dtype == torch.float64 and out.edge_weight.shape[0] == out.edge_index.shape[1]
    kept = {tuple(p) for p in out.edge_index.t().tolist()} & {tuple(p) for p in data.edge_index.t().tolist()}
    assert kept and len(pairs_of(data.edge_index) ^ pairs_of(out.edge_index)) <= 4


def test_default_unrolls_metattacks_100_training_steps(graph):
    """Metattack (Zügner & Günnemann 2019) differentiates through 100 training iterations; the default unrolls as
    many (50 cut the surrogate's training short and left MetaPRBCD weaker than Metattack on Cora at 10/20 %)."""
    calls = []

    class Counting(GCN):
        def forward(self, *args, **kwargs):
            calls.append(1)
            return super().forward(*args, **kwargs)

    attack = MetaPRBCD(EdgeFlips(5))
    torch.manual_seed(0)
    model = Counting(3, 3, hidden=4, dropout=0.0).eval()
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    w = torch.ones(graph.edge_index.shape[1])
    attack._inner(model, init, graph, graph.y, graph.edge_index, w, False)
    assert attack.inner_steps == 100 and len(calls) == 100 + 1        # 100 training steps, then the scored pass


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        poison(None, EdgeFlips(1), method="greedy")
    with pytest.raises(TypeError, match="global EdgeFlips"):
        MetaPRBCD(EdgeFlips(1, local=True))
    with pytest.raises(ValueError, match="max_flips_per_node"):   # not enforced by the meta attack: refused
        MetaPRBCD(EdgeFlips(5, max_flips_per_node=1))
    with pytest.raises(ValueError, match="inner_steps"):
        MetaPRBCD(EdgeFlips(1), inner_steps=0)
    with pytest.raises(ValueError, match="loss must be one of"):
        MetaPRBCD(EdgeFlips(1), loss="hinge")


def test_attack_loss_is_the_named_loss_of_the_unrolled_model(graph):
    """``loss`` scores the unrolled model: the default is the probability margin (in [-1, 1]), ``"ce"`` Metattack's
    cross-entropy (positive, unbounded)."""
    ce, pm = MetaPRBCD(EdgeFlips(5), inner_steps=3, loss="ce"), MetaPRBCD(EdgeFlips(5), inner_steps=3)
    torch.manual_seed(0)
    model = GCN(3, 3, hidden=4, dropout=0.0).eval()
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    w = torch.ones(graph.edge_index.shape[1])
    a = ce._inner(model, init, graph, graph.y, graph.edge_index, w, False)
    b = pm._inner(model, init, graph, graph.y, graph.edge_index, w, False)
    assert -1 <= float(b) <= 1 and float(a) > 0 and float(a) != pytest.approx(float(b))


def test_sparse_bag_of_words_path_gives_the_dense_result(graph):
    data = graph.clone()
    data.x = (torch.rand(data.num_nodes, 60, generator=torch.Generator().manual_seed(0)) < 0.05).float()
    data.x[torch.arange(data.num_nodes), data.y] = 1.0
    kw = {**FAST, "epochs": 3, "epochs_resampling": 2, "final_samples": 1}
    sparse = MetaPRBCD(EdgeFlips(5), **kw)(data)                       # default surrogate: sparse features
    dense = MetaPRBCD(EdgeFlips(5), surrogate=lambda f, c: GCN(f, c, hidden=16, dropout=0.0), **kw)(data)
    assert sparse.loss == pytest.approx(dense.loss, rel=1e-4)
    assert torch.equal(sparse.flipped_edges, dense.flipped_edges)
