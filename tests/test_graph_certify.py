"""Sparse randomized smoothing certificates for graphs (Bojchevski et al. 2020) and their metric."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

pytest.importorskip("torch_geometric")

from mmrobust.graph.certify import (SparseSmoothing, max_certified_radius,  # noqa: E402
                                    worst_case_top_probability)
from mmrobust.graph.data import sbm_graph  # noqa: E402
from mmrobust.graph.models import GCN  # noqa: E402
from mmrobust.graph.training import train_node_classifier  # noqa: E402
from mmrobust.metrics.certified_graph import SparseCertifiedAccuracy  # noqa: E402


def brute_force_worst_case(p_lower, r_add, r_del, p_plus, p_minus, others=2):
    """Neyman-Pearson over every binary vector z of the touched entries plus ``others`` untouched ones."""
    d = r_add + r_del + others
    x = [0] * r_add + [1] * r_del + [0, 1][:others] + [0] * max(0, others - 2)
    xt = [1] * r_add + [0] * r_del + x[r_add + r_del:]

    def prob(z, base):
        p = 1.0
        for zi, bi in zip(z, base):
            on = p_plus if bi == 0 else 1 - p_minus
            p *= on if zi else 1 - on
        return p

    zs = list(itertools.product([0, 1], repeat=d))
    mass = [(prob(z, xt) / prob(z, x), prob(z, x), prob(z, xt)) for z in zs]
    mass.sort(key=lambda t: t[0])
    left, worst = p_lower, 0.0
    for _, m, mt in mass:
        take = min(1.0, left / m) if m > 0 else 0.0
        worst += take * mt
        left -= take * m
        if left <= 0:
            break
    return worst


@pytest.mark.parametrize("r_add,r_del", [(1, 0), (0, 1), (2, 1), (1, 3)])
@pytest.mark.parametrize("p_lower", [0.6, 0.9, 0.99])
def test_region_certificate_matches_brute_force_neyman_pearson(p_lower, r_add, r_del):
    p_plus, p_minus = 0.1, 0.4
    got = worst_case_top_probability(p_lower, r_add, r_del, p_plus, p_minus)
    want = brute_force_worst_case(p_lower, r_add, r_del, p_plus, p_minus)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_certificate_is_monotone_and_trivial_at_radius_zero():
    assert worst_case_top_probability(0.7, 0, 0, 0.01, 0.4) == 0.7
    values = [worst_case_top_probability(0.95, 0, r, 0.001, 0.4) for r in range(6)]
    assert all(a >= b - 1e-12 for a, b in zip(values, values[1:]))
    # additions are much harder to certify than deletions when p_plus << p_minus (the paper's observation)
    assert max_certified_radius(0.99, 0.001, 0.4, deletions=True) > max_certified_radius(0.99, 0.001, 0.4)
    assert max_certified_radius(0.4, 0.001, 0.4) == -1


@pytest.fixture(scope="module")
def trained():
    data = sbm_graph(num_nodes=90, num_classes=3, p_in=0.2, p_out=0.01, feature_noise=0.8, seed=1)
    torch.manual_seed(0)
    model = GCN(3, 3, hidden=16)
    train_node_classifier(model, data, epochs=100, lr=0.02)
    return model.eval(), data


def test_sparse_smoothing_samples_stay_undirected_and_near_the_flip_rates(trained):
    model, data = trained
    smooth = SparseSmoothing(model, p_plus=0.01, p_minus=0.3)
    gen = torch.Generator().manual_seed(0)
    n = data.num_nodes
    clean = {(a, b) for a, b in data.edge_index.t().tolist() if a < b}
    kept, added = 0, 0
    for _ in range(30):
        _, ei = smooth.sample_graph(data.x, data.edge_index, n, gen)
        pairs = {(a, b) for a, b in ei.t().tolist()}
        assert all((b, a) in pairs for a, b in pairs) and all(a != b for a, b in pairs)
        upper = {(a, b) for a, b in pairs if a < b}
        kept += len(upper & clean)
        added += len(upper - clean)
    assert kept / (30 * len(clean)) == pytest.approx(0.7, abs=0.05)
    non_edges = n * (n - 1) // 2 - len(clean)
    assert added / (30 * non_edges) == pytest.approx(0.01, rel=0.2)


def test_certify_and_metric_on_a_trained_gcn(trained):
    model, data = trained
    was = model.training
    cert = SparseSmoothing(model, p_plus=0.001, p_minus=0.2, n0=20, n=200, alpha=0.01, seed=0).certify(data)
    again = SparseSmoothing(model, p_plus=0.001, p_minus=0.2, n0=20, n=200, alpha=0.01, seed=0).certify(data)
    assert torch.equal(cert.prediction, again.prediction) and model.training == was
    assert bool(((cert.prediction == -1) == (cert.p_lower <= 0.5)).all())
    metric = SparseCertifiedAccuracy(radii=[(0, 0), (0, 1), (0, 3), (1, 0)])
    metric.update(cert, data.y, data.test_mask)
    ca = metric.compute()
    smoothed_acc = ((cert.prediction == data.y) & data.test_mask).sum() / data.test_mask.sum()
    assert float(ca[0]) == pytest.approx(float(smoothed_acc)) and float(ca[0]) > 0.6
    assert float(ca[1]) <= float(ca[0]) and float(ca[2]) <= float(ca[1])
    # one certified deletion needs the bound to beat the worst case
    k = int(cert.p_lower.argmax())
    assert bool(cert.certified(0, 1)[k]) == (worst_case_top_probability(
        float(cert.p_lower[k]), 0, 1, 0.001, 0.2) > 0.5)


def test_noise_augmented_training_draws_a_smoothed_graph_every_epoch(trained):
    _, data = trained
    smooth = SparseSmoothing(GCN(3, 3), p_plus=0.01, p_minus=0.3, seed=0)
    e0, x0 = data.edge_index.clone(), data.x.clone()
    seen = []

    def augment(d):
        assert d is data                                   # drawn from the clean graph, not the last noisy one
        g = smooth.noisy_graph(d)
        assert torch.equal(g.y, data.y) and torch.equal(g.train_mask, data.train_mask)
        seen.append(g.edge_index)
        return g

    torch.manual_seed(0)
    model = GCN(3, 3, hidden=16)
    losses = train_node_classifier(model, data, epochs=5, augment=augment)
    assert len(seen) == len(losses) == 5 and not torch.equal(seen[0], seen[1])
    assert not any(torch.equal(s, data.edge_index) for s in seen)
    assert torch.equal(data.edge_index, e0) and torch.equal(data.x, x0)
    # the stream is the smoothing's own, seeded: a second smoothing object with the same seed repeats it
    again = SparseSmoothing(GCN(3, 3), p_plus=0.01, p_minus=0.3, seed=0).noisy_graph(data)
    assert torch.equal(again.edge_index, seen[0])
    with pytest.raises(ValueError, match="not both"):
        train_node_classifier(model, data, epochs=1, augment=augment, attack=object())


def test_bad_arguments():
    with pytest.raises(ValueError, match="nothing is smoothed"):
        SparseSmoothing(torch.nn.Identity(), p_plus=0.0, p_minus=0.0)
    with pytest.raises(ValueError, match="p_minus"):
        SparseSmoothing(torch.nn.Identity(), p_minus=1.0)
    with pytest.raises(ValueError, match="radii"):
        SparseCertifiedAccuracy(radii=[])
    assert math.isfinite(worst_case_top_probability(0.999, 5, 5, 0.001, 0.4))
