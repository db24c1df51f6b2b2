"""Robust GNNs (GNNGuard, RGCN, GCN-SVD, Soft-Median GCN / GDC): their defence mechanisms, and that every graph
attack runs through them (relaxed edge weights behave like edges, gradients reach them)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_geometric")

from torch_geometric.utils import to_dense_adj  # noqa: E402

from mmrobust.adapters.graph import GraphAdapter  # noqa: E402
from mmrobust.attacks import GRBCD, PRBCD  # noqa: E402
from mmrobust.graph.data import sbm_graph  # noqa: E402
from mmrobust.graph.defenses import GCNSVD, RGCN, GNNGuard  # noqa: E402
from mmrobust.graph.soft_median import (SoftMedianGCN, SoftMedianGDC, ppr_topk, soft_median,  # noqa: E402
                                        weighted_dimwise_median)
from mmrobust.graph.training import node_accuracy, train_node_classifier  # noqa: E402
from mmrobust.threats.graph import EdgeFlips  # noqa: E402

MODELS = {"gnnguard": lambda f, c: GNNGuard(f, c, hidden=16), "rgcn": lambda f, c: RGCN(f, c, hidden=16),
          "gcnsvd": lambda f, c: GCNSVD(f, c, hidden=16, rank=10),
          "softmedian_gcn": lambda f, c: SoftMedianGCN(f, c, hidden=16, temperature=2.0),
          "softmedian_gdc": lambda f, c: SoftMedianGDC(f, c, hidden=16, temperature=2.0, k=16, block=60)}


@pytest.fixture(scope="module")
def graph():
    return sbm_graph(num_nodes=120, num_classes=3, p_in=0.15, p_out=0.01, feature_noise=1.0, seed=0)


@pytest.fixture(scope="module")
def trained(graph):
    out = {}
    for name, make in MODELS.items():
        torch.manual_seed(0)
        model = make(graph.num_features, 3)
        train_node_classifier(model, graph, epochs=100, lr=0.02)
        out[name] = model.eval()
    return out


def test_weighted_dimwise_median_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    n, e, d = 25, 160, 4
    ei = torch.randint(0, n, (2, e), generator=g)
    w = torch.rand(e, generator=g)
    h = torch.randn(n, d, generator=g)
    med = weighted_dimwise_median(h, ei, w, n)
    for v in range(n):
        sel = ei[1] == v
        if not bool(sel.any()):
            assert bool((med[v] == 0).all())
            continue
        for c in range(d):
            vals, ww = h[ei[0][sel], c], w[sel]
            order = vals.argsort()
            cum = ww[order].cumsum(0)
            k = int((cum >= 0.5 * ww.sum() - 1e-9).nonzero()[0])
            assert med[v, c] == vals[order][k]


def test_soft_median_limits_and_breakdown():
    h = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]], dtype=torch.float64)
    ei = torch.tensor([[0, 1, 2], [0, 0, 0]])
    w = torch.ones(3, dtype=torch.float64)
    # T -> inf: the weighted sum of a GCN layer; T -> 0: the neighbour closest to the median, times the weight sum
    assert torch.allclose(soft_median(h, ei, w, 3, 1e8)[0], h.sum(0))
    assert torch.allclose(soft_median(h, ei, w, 3, 1e-3)[0], 3 * h[1])
    # one adversarial neighbour with a huge embedding barely moves the soft median, but moves the sum
    h_out = torch.cat([h, torch.tensor([[1e4, -1e4]], dtype=torch.float64)])
    ei_out = torch.tensor([[0, 1, 2, 3], [0, 0, 0, 0]])
    sm = soft_median(h_out, ei_out, torch.ones(4, dtype=torch.float64), 4, 0.5)[0] / 4
    assert bool((sm >= h.min(0).values - 1e-3).all() and (sm <= h.max(0).values + 1e-3).all())
    assert (h_out.mean(0) - h[1]).abs().max() > 1000


def test_ppr_topk_matches_dense_personalised_pagerank(graph):
    n, alpha, k = graph.num_nodes, 0.15, 8
    ei, w = ppr_topk(graph.edge_index, None, n, alpha=alpha, k=k, iterations=200, block=32)
    a = to_dense_adj(graph.edge_index, max_num_nodes=n)[0] + torch.eye(n)
    dinv = a.sum(1).rsqrt()
    t = dinv[:, None] * a * dinv[None, :]
    ppr = alpha * torch.linalg.inv(torch.eye(n) - (1 - alpha) * t)
    top = torch.topk(ppr, k, dim=1)
    got = torch.zeros(n, n).index_put_((ei[1], ei[0]), w)
    want = torch.zeros(n, n).scatter_(1, top.indices, top.values)
    assert torch.allclose(got, want, atol=1e-5)


def test_gcnsvd_low_rank_is_the_truncated_eigendecomposition(graph):
    n = graph.num_nodes
    model = GCNSVD(3, 3, rank=6, iterations=60).double()
    w = torch.ones(graph.edge_index.shape[1], dtype=torch.float64)
    q, m = model.low_rank(graph.edge_index, w, n, torch.float64)
    approx = q @ m @ q.t()
    a = to_dense_adj(graph.edge_index, max_num_nodes=n)[0].double()
    vals, vecs = torch.linalg.eigh(a)
    top = vals.abs().argsort(descending=True)[:6]
    best = vecs[:, top] @ torch.diag(vals[top]) @ vecs[:, top].t()
    err_best = torch.linalg.norm(a - best)
    assert torch.linalg.norm(a - approx) <= err_best * 1.02 + 1e-6


def test_gnnguard_prunes_edges_between_dissimilar_nodes(graph, trained):
    model = trained["gnnguard"]
    x = graph.x.clone()
    x[0], x[1] = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])   # cosine similarity 0
    extra = torch.tensor([[0, 1], [1, 0]])
    ei = torch.cat([graph.edge_index, extra], 1)
    with torch.no_grad():
        assert torch.allclose(model(x, ei), model(x, graph.edge_index), atol=1e-6)


@pytest.mark.parametrize("name", list(MODELS))
def test_zero_weight_edge_is_no_edge_and_gradients_reach_weights(graph, trained, name):
    """PRBCD's relaxation relies on it: an inserted pair with weight 0 is the clean graph."""
    model = trained[name]
    g = torch.Generator().manual_seed(1)
    extra = torch.randint(0, graph.num_nodes, (2, 30), generator=g)
    extra = extra[:, extra[0] != extra[1]]
    ei = torch.cat([graph.edge_index, extra, extra.flip(0)], 1)
    w = torch.cat([torch.ones(graph.edge_index.shape[1]), torch.zeros(2 * extra.shape[1])]).requires_grad_(True)
    out = model(graph.x, ei, w)
    with torch.no_grad():
        clean = model(graph.x, graph.edge_index)
    assert torch.allclose(out, clean, atol=1e-5)
    out[graph.test_mask].logsumexp(1).sum().backward()
    assert bool(torch.isfinite(w.grad).all()) and float(w.grad.abs().sum()) > 0


@pytest.mark.parametrize("name", list(MODELS))
def test_defences_train_and_every_edge_attack_runs_through_them(graph, trained, name):
    model = trained[name]
    clean = node_accuracy(model, graph)
    assert clean > 0.6, f"{name} trained badly ({clean:.2f})"   # chance is 1/3; GNNGuard prunes on 3-d features
    e0, state = graph.edge_index.clone(), {k: v.clone() for k, v in model.state_dict().items()}
    prbcd = PRBCD(EdgeFlips(0.1), block_size=2000, epochs=20, epochs_resampling=15,
                  adapter=GraphAdapter(mask="test"), seed=0)(model, graph)
    grbcd = GRBCD(EdgeFlips(10), block_size=2000, epochs=5, adapter=GraphAdapter(mask="test"), seed=0)(model, graph)
    budget = int(0.1 * graph.edge_index.shape[1] / 2)
    assert 0 < float(prbcd.size["edges"]) <= budget and float(grbcd.size["edges"]) == 10
    for result in (prbcd, grbcd):
        acc = node_accuracy(model, result.batch)
        assert acc <= clean and result.adv_correct.float().mean().item() == pytest.approx(acc)
    assert torch.equal(graph.edge_index, e0) and not model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", list(MODELS))
def test_defences_in_float64(graph, name):
    torch.manual_seed(0)
    model = MODELS[name](graph.num_features, 3).double().eval()
    w = torch.ones(graph.edge_index.shape[1], dtype=torch.float64, requires_grad=True)
    out = model(graph.x.double(), graph.edge_index, w)
    assert out.dtype == torch.float64 and out.shape == (graph.num_nodes, 3)
    out.sum().backward()
    assert w.grad.dtype == torch.float64


def test_rgcn_samples_only_in_training(graph):
    torch.manual_seed(0)
    model = RGCN(3, 3, hidden=8)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(graph.x, graph.edge_index), model(graph.x, graph.edge_index))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(graph.x, graph.edge_index), model(graph.x, graph.edge_index))


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="rank"):
        GCNSVD(3, 3, rank=0)
    with pytest.raises(ValueError, match="temperature"):
        SoftMedianGCN(3, 3, temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        SoftMedianGDC(3, 3, alpha=1.0)


def test_gcnsvd_normalisation_stays_bounded_where_low_rank_degrees_are_negative():
    # rank 2 of this graph gives 7 nodes a low-rank degree + 1 <= 0 (row sums of A_k can be negative); the old
    # normalisation clamped deg + 1 at 1e-6 and scaled those nodes by 1000 (logits ~1e5 instead of ~1)
    data = sbm_graph(num_nodes=60, num_classes=3, p_in=0.15, p_out=0.03, seed=5)
    torch.manual_seed(0)
    model = GCNSVD(3, 3, hidden=16, rank=2).eval()
    q, m = model.low_rank(data.edge_index, torch.ones(data.edge_index.shape[1]), data.num_nodes, torch.float32)
    assert float((q @ (m @ q.sum(0))).min()) < -1                    # the case exists
    with torch.no_grad():
        out = model(data.x, data.edge_index)
    assert bool(torch.isfinite(out).all()) and float(out.abs().max()) < 50


def _dense_gcn_reference(model: GCNSVD, x, edge_index, w, n):
    """GCN-SVD's formula with the exact adjacency (what A_k is when A has at most ``rank`` singular values)."""
    a = torch.zeros(n, n, dtype=x.dtype).index_put((edge_index[1], edge_index[0]), w, accumulate=True)
    dinv = (a.sum(1).clamp_min(0) + 1).rsqrt()[:, None]
    prop = lambda h: dinv * (a @ (dinv * h) + dinv * h)  # noqa: E731
    return prop(model.lin2(torch.relu(prop(model.lin1(x)))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rank", [9, 10, 50])
def test_gcnsvd_gradients_where_the_graph_has_at_most_rank_singular_values(rank, dtype):
    """A 10-node graph with two isolated nodes (adjacency of rank 8; like a small graph or a Batch of them at the
    default rank 50): the QR steps were singular and the gradients NaN or ~1e38 (PRBCD: NonFiniteError or an attack on
    garbage).  Since A_k = A there, outputs and gradients are those of the exact adjacency."""
    ei = torch.tensor([[0, 1, 1, 2, 2, 3, 4, 5, 6, 7], [1, 0, 2, 1, 3, 2, 5, 4, 7, 6]])
    torch.manual_seed(0)
    model = GCNSVD(4, 3, hidden=8, rank=rank).to(dtype).eval()
    x = torch.randn(10, 4, dtype=dtype)
    for zero_pairs in (False, True):   # PRBCD's relaxed block: pairs at weight ~0 make A nearly, not exactly, singular
        extra = torch.tensor([[0, 8, 3], [9, 9, 6]]) if zero_pairs else torch.zeros(2, 0, dtype=torch.long)
        e = torch.cat([ei, extra, extra.flip(0)], 1)
        w = torch.cat([torch.ones(ei.shape[1], dtype=dtype), torch.full((2 * extra.shape[1],), 1e-7, dtype=dtype)])
        w.requires_grad_(True)
        if rank >= 10:
            with pytest.warns(UserWarning, match=r"rank=\d+ >= the graph's 10 nodes.*rank in \[1, 9\]"):
                out = model(x, e, w)
        else:
            out = model(x, e, w)
        (grad,) = torch.autograd.grad(out.logsumexp(1).sum(), w)
        ref = _dense_gcn_reference(model, x, e, w, 10)
        (want,) = torch.autograd.grad(ref.logsumexp(1).sum(), w)
        assert bool(torch.isfinite(grad).all())
        assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(grad, want, atol=1e-4)


def test_gcnsvd_degenerate_subspace_that_is_not_the_adjacency_asks_for_a_lower_rank():
    # singular values 1, 1 and 80 x 2e-4: rank 4 cuts inside the tiny cluster (float32 QR condition ~2e-4), and
    # dropping the other 76 tiny ones is not A itself (residual above 0.1 % of ||A||)
    pairs = torch.tensor([[0, 1]] + [[2 + 2 * i, 3 + 2 * i] for i in range(40)]).t()
    ei = torch.cat([pairs, pairs.flip(0)], 1)
    w = torch.cat([torch.ones(1), torch.full((40,), 2e-4)]).repeat(2)
    model = GCNSVD(4, 2, rank=4).eval()
    with pytest.raises(ValueError, match=r"lower rank \(it must lie in \[1, 81\]"):
        model(torch.randn(82, 4), ei, w)
    assert torch.isfinite(model.double()(torch.randn(82, 4, dtype=torch.float64), ei, w.double())).all()


def test_prbcd_on_gcnsvd_batch_of_small_graphs_at_the_default_rank():
    """A Batch of three 12-node graphs (36 nodes) against GCN-SVD's default rank 50: runs on finite gradients."""
    from torch_geometric.data import Batch

    graphs = [sbm_graph(num_nodes=12, num_classes=2, p_in=0.3, p_out=0.05, seed=s) for s in range(3)]
    batch = Batch.from_data_list(graphs)
    torch.manual_seed(0)
    model = GCNSVD(batch.num_features, 2, hidden=8).eval()
    with pytest.warns(UserWarning, match="rank=50"):
        result = PRBCD(EdgeFlips(2), block_size=60, epochs=6, progress=False, seed=0)(model, batch)
    assert result.size["edges"].tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("dense_backward", [True, False])
def test_ppr_topk_gradients_match_a_dense_reference(graph, dense_backward, monkeypatch):
    import mmrobust.graph.soft_median as sm

    monkeypatch.setattr(sm, "DENSE_BACKWARD_PAIRS_PER_EDGE", 10 ** 9 if dense_backward else 0)
    n, alpha, k, steps = graph.num_nodes, 0.15, 8, 12
    w = torch.rand(graph.edge_index.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = ((w + w[_reverse(graph.edge_index)]) / 2).requires_grad_(True)      # symmetric weights, as PRBCD's
    ei, v = ppr_topk(graph.edge_index, w, n, alpha=alpha, k=k, iterations=steps, block=32)
    (got,) = torch.autograd.grad(v.square().sum(), w)
    from torch_geometric.nn.conv.gcn_conv import gcn_norm
    e, nw = gcn_norm(graph.edge_index, w, n, add_self_loops=True)
    t = torch.zeros(n, n, dtype=torch.float64).index_put((e[0], e[1]), nw, accumulate=True)
    r = seed = alpha * torch.eye(n, dtype=torch.float64)
    for _ in range(steps):
        r = seed + (1 - alpha) * t @ r
    (want,) = torch.autograd.grad(r[ei[0], ei[1]].square().sum(), w)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)


def _reverse(edge_index):
    """Position of the reverse of every edge of an undirected edge list."""
    n = int(edge_index.max()) + 1
    keys = edge_index[0] * n + edge_index[1]
    order = torch.argsort(keys)
    return order[torch.searchsorted(keys[order], edge_index[1] * n + edge_index[0])]


def test_ppr_topk_backward_never_forms_a_nodes_by_nodes_tensor():
    """torch.sparse.mm's backward w.r.t. the edge values multiplied dense nodes x block by block x nodes: 1.6 GB per
    power step on a PubMed-sized graph (20k nodes).  The edge-wise backward keeps every dense tensor far smaller."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                    Largest.largest = max(Largest.largest, t.numel())
            return out

    data = sbm_graph(num_nodes=600, num_classes=3, p_in=0.02, p_out=0.002, seed=0)
    w = torch.ones(data.edge_index.shape[1], requires_grad=True)
    with Largest():
        _, v = ppr_topk(data.edge_index, w, 600, k=8, iterations=4, block=8)
        v.sum().backward()
    assert bool(torch.isfinite(w.grad).all()) and float(w.grad.abs().sum()) > 0
    assert Largest.largest < 600 * 600 // 4, Largest.largest
