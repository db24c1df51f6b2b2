"""Red team: the sparse smoothing sampler draws exactly the distribution its certificate is computed for."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_geometric")

from mmrobust.graph.certify import SparseSmoothing  # noqa: E402


def test_every_missing_pair_is_added_with_probability_p_plus():
    # Bojchevski et al.'s certificate assumes each missing pair appears independently with probability p_plus; on a
    # small graph, drawing the additions with replacement (and dropping i == j) added pairs at ~0.23 instead of 0.3
    smoothing = SparseSmoothing(torch.nn.Linear(2, 2), p_plus=0.3, p_minus=0.4)
    n, trials = 8, 2000
    x, edges = torch.zeros(n, 2), torch.tensor([[0, 1], [1, 0]])
    gen = torch.Generator().manual_seed(0)
    present = torch.zeros(n, n)
    for _ in range(trials):
        _, e = smoothing.sample_graph(x, edges, n, gen)
        assert bool((e[0] != e[1]).all())
        a = torch.zeros(n, n)
        a[e[0], e[1]] = 1
        assert torch.equal(a, a.t()) and int(a.sum()) == e.shape[1]   # symmetric, no duplicate edges
        present += a
    rate = present / trials
    missing = ~torch.eye(n, dtype=torch.bool)
    missing[0, 1] = missing[1, 0] = False
    assert float(rate[missing].mean()) == pytest.approx(0.3, abs=0.01)
    assert float(rate[0, 1]) == pytest.approx(0.6, abs=0.05)            # the edge survives w.p. 1 - p_minus
