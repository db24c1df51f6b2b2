"""sbm_graph / sbm_edges: sparse sampling per block pair, same distribution as one Bernoulli per node pair."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_geometric")

from torch_geometric.utils import is_undirected  # noqa: E402

from mmrobust.graph.data import SBM_DENSE_MAX_NODES, sbm_edges, sbm_graph  # noqa: E402


def _check_simple(edge_index, num_nodes):
    keys = edge_index[0] * num_nodes + edge_index[1]
    assert is_undirected(edge_index, num_nodes=num_nodes) and not bool((edge_index[0] == edge_index[1]).any())
    assert keys.unique().numel() == keys.numel() and int(edge_index.max()) < num_nodes


def test_sbm_edges_has_the_per_pair_edge_probabilities():
    """Frequency of every node pair over 600 graphs: p_in inside a block, p_out across (5 sigma), on blocks of
    unequal size, including the dense regime (p_in = 0.6: more than a quarter of a block's pairs)."""
    sizes, p_in, p_out, runs = [6, 4, 3], 0.6, 0.1, 600
    n = sum(sizes)
    freq = torch.zeros(n, n)
    gen = torch.Generator().manual_seed(0)
    for _ in range(runs):
        ei = sbm_edges(sizes, p_in, p_out, gen)
        _check_simple(ei, n)
        freq[ei[0], ei[1]] += 1 / runs
    block = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    expected = torch.where(block[:, None] == block[None, :], p_in, p_out).fill_diagonal_(0)
    sigma = (expected * (1 - expected) / runs).sqrt()
    assert bool(((freq - expected).abs() <= 5 * sigma + 1e-6).all())


def test_large_sbm_graph_is_sampled_sparsely_and_deterministically():
    """300,000 nodes: ~4.5e10 node pairs, far beyond dense sampling; the per-block sampling builds it in memory
    ~ edges, with the expected number of edges, deterministically and without touching the global random state."""
    n = 300_000
    state = torch.random.get_rng_state()
    data = sbm_graph(n, 3, p_in=2e-5, p_out=1e-6, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    _check_simple(data.edge_index, n)
    m_in, m_out = 3 * (n // 3) * (n // 3 - 1) / 2, 3 * (n // 3) ** 2
    mean = m_in * 2e-5 + m_out * 1e-6
    assert abs(data.edge_index.shape[1] / 2 - mean) < 5 * mean ** 0.5
    same = sbm_graph(n, 3, p_in=2e-5, p_out=1e-6, seed=0)
    assert torch.equal(same.edge_index, data.edge_index)
    assert not torch.equal(sbm_graph(n, 3, p_in=2e-5, p_out=1e-6, seed=1).edge_index, data.edge_index)
    # homophily as asked: within-block edges are ~ m_in * p_in / mean of all
    y = data.y
    inside = float((y[data.edge_index[0]] == y[data.edge_index[1]]).float().mean())
    assert inside == pytest.approx(m_in * 2e-5 / mean, abs=0.02)


def test_small_graphs_keep_their_seeded_edges():
    """Up to SBM_DENSE_MAX_NODES nodes the graphs are PyG's per-pair Bernoulli draws (the seeded graphs of earlier
    versions, which tests and recorded results use): the default 120-node graph is unchanged."""
    from torch_geometric.utils import stochastic_blockmodel_graph

    data = sbm_graph(seed=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        expected = stochastic_blockmodel_graph([40, 40, 40], torch.tensor([[0.1, 0.01, 0.01], [0.01, 0.1, 0.01],
                                                                          [0.01, 0.01, 0.1]]), directed=False)
    assert torch.equal(data.edge_index, expected)
    big = sbm_graph(SBM_DENSE_MAX_NODES + 1, 2, p_in=0.01, p_out=0.001, seed=0)     # the sparse path
    _check_simple(big.edge_index, SBM_DENSE_MAX_NODES + 1)
