"""Red team follow-up: SparseSmoothing refuses weighted graphs instead of certifying them as unweighted.

Bojchevski et al. 2020 smooth and certify binary graphs (their sampler keeps edge indices only, weight 1).
A model that reads ``edge_weight`` was called on the samples without it, so the certificate was for another
model than the user's.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_geometric")
from torch_geometric.data import Data  # noqa: E402

from mmrobust.graph.certify import SparseSmoothing  # noqa: E402


class _WeightedDegree(torch.nn.Module):
    """Class 1 where the weighted degree exceeds 1.5, else class 0 (needs the weights)."""

    def forward(self, x, edge_index, edge_weight=None):
        w = torch.ones(edge_index.shape[1]) if edge_weight is None else edge_weight
        degree = torch.zeros(x.shape[0]).index_add_(0, edge_index[0], w)
        return torch.stack([1.5 - degree, degree - 1.5], 1)


def _graph(**extra):
    edge_index = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
    return Data(x=torch.ones(4, 2), edge_index=edge_index, **extra)


def _smoothing():
    return SparseSmoothing(_WeightedDegree(), p_plus=0.0, p_minus=0.05, n0=10, n=50, seed=0)


def test_weighted_graph_is_refused_naming_the_argument():
    data = _graph(edge_weight=torch.full((6,), 0.1))     # the user's model predicts class 0 everywhere
    before = data.edge_weight.clone()
    with pytest.raises(ValueError, match=r"data\.edge_weight.*binary|binary.*data\.edge_weight"):
        _smoothing().certify(data)                         # certified class 1 for nodes 1, 2 before
    with pytest.raises(ValueError, match="data.edge_weight"):
        _smoothing().noisy_graph(data)
    assert torch.equal(data.edge_weight, before)


def test_edge_attr_is_refused():
    with pytest.raises(ValueError, match="edge_attr"):
        _smoothing().certify(_graph(edge_attr=torch.randn(6, 3)))
    with pytest.raises(ValueError, match="edge_attr"):
        _smoothing().noisy_graph(_graph(edge_attr=torch.randn(6, 3)))


def test_unit_weights_are_the_unweighted_graph():
    plain = _smoothing().certify(_graph())
    unit = _smoothing().certify(_graph(edge_weight=torch.ones(6)))
    assert torch.equal(plain.prediction, unit.prediction) and torch.equal(plain.counts, unit.counts)
    assert plain.prediction.tolist()[1:3] == [1, 1]
    assert "edge_weight" not in _smoothing().noisy_graph(_graph(edge_weight=torch.ones(6)))
