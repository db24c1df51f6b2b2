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


def test_smoothing_calls_the_model_as_written_and_refuses_attribute_flips_of_continuous_features():
    from mmrobust.graph.data import toy_graph

    model, data = toy_graph()   # continuous CSBM features

    class DataModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, d):
            return self.inner(d.x, d.edge_index)

    kwargs = dict(p_plus=0.01, p_minus=0.3, n0=5, n=30, seed=0)
    a = SparseSmoothing(DataModel().eval(), **kwargs).certify(data)   # forward(data): was a bare TypeError
    b = SparseSmoothing(model, **kwargs).certify(data)
    assert torch.equal(a.counts, b.counts)
    with pytest.raises(ValueError, match="binary node attributes"):   # x was silently binarised
        SparseSmoothing(model, p_plus=0, p_minus=0, attr_p_plus=0.1, attr_p_minus=0.1, n0=5, n=5).certify(data)
