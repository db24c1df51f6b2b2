"""Red team: sparse smoothing deletes every undirected edge with probability p_minus, however it is stored."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_geometric")

from mmrobust.graph.certify import SparseSmoothing  # noqa: E402


@pytest.mark.parametrize("edge_index", [
    [[0, 1, 0, 1], [1, 0, 1, 0]],     # a duplicated edge: kept w.p. 1 - p_minus^2 = 0.75 before
    [[1], [0]],                       # stored as 1 -> 0 only: never present before
    [[0, 1, 1], [1, 0, 1]],           # with a self loop
])
def test_every_existing_pair_survives_with_probability_one_minus_p_minus(edge_index):
    smoothing = SparseSmoothing(torch.nn.Linear(2, 2), p_plus=0.0, p_minus=0.5)
    gen = torch.Generator().manual_seed(0)
    x, edge_index, trials = torch.zeros(3, 2), torch.tensor(edge_index), 2000
    kept = 0
    for _ in range(trials):
        _, e = smoothing.sample_graph(x, edge_index, 3, gen)
        assert e.shape[1] in (0, 2) and bool((e[0] != e[1]).all())     # the pair once, both directions
        kept += int(((e[0] == 0) & (e[1] == 1)).any())
    assert kept / trials == pytest.approx(0.5, abs=0.04)


class _NaNWhereNegative(torch.nn.Module):
    def forward(self, x, edge_index=None):
        return torch.log(x[:, :2])          # NaN for negative inputs


def test_nan_logits_are_refused_not_counted_as_votes():
    # argmax reads NaN as the largest logit: a model returning NaN under noise got class 0 certified (radius 0.75)
    from mmrobust import SmoothedClassifier
    from mmrobust.errors import NonFiniteError

    smoothed = SmoothedClassifier(_NaNWhereNegative(), 0.5, num_classes=2, n0=10, n=100, generator=0)
    with pytest.raises(NonFiniteError, match="NaN/Inf"):
        smoothed.certify(torch.tensor([[-3.0, 5.0]]))
    x = -torch.ones(4, 2)
    from torch_geometric.data import Data

    data = Data(x=x, edge_index=torch.tensor([[0, 1], [1, 0]]), num_nodes=4)
    with pytest.raises(NonFiniteError, match="NaN/Inf"):
        SparseSmoothing(_NaNWhereNegative(), p_plus=0.1, p_minus=0.3, n0=2, n=5).certify(data)
