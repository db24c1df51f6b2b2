"""LocalGreedy on a graph with ``edge_attr``: the returned graph is whole (every per-edge attribute row follows
its edge, added edges get ``added_edge_values``), the model reading ``data.edge_attr`` sees those rows during
the attack, and the user's graph is unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("torch_geometric")

from torch_geometric.nn import GCNConv  # noqa: E402

from mmrobust.attacks import LocalGreedy  # noqa: E402
from mmrobust.graph.data import toy_graph  # noqa: E402


class AttrGCN(nn.Module):
    """A ``forward(data)`` GCN whose edge weights are gated by ``data.edge_attr`` (as an edge-feature model)."""

    def __init__(self, features: int):
        super().__init__()
        torch.manual_seed(0)
        self.conv = GCNConv(features, 2)

    def forward(self, data):
        w = data.edge_weight if getattr(data, "edge_weight", None) is not None \
            else torch.ones(data.edge_index.shape[1], dtype=data.x.dtype)
        return self.conv(data.x, data.edge_index, w * torch.sigmoid(data.edge_attr.sum(1)))


def attributed_toy(weighted: bool):
    _, data = toy_graph()
    r, c = data.edge_index
    lo, hi = torch.minimum(r, c).float(), torch.maximum(r, c).float()
    data.edge_attr = torch.stack([lo, hi, (lo - hi) / 10], 1)   # each row names its edge (undirected)
    if weighted:
        data.edge_weight = 0.5 + 0.1 * ((r * c) % 3).float()
    return AttrGCN(data.num_features).eval(), data


def pairs(edge_index):
    return {(min(a, b), max(a, b)) for a, b in zip(*edge_index.tolist())}


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("fill", ["zeros", {"edge_attr": torch.tensor([1.0, 2.0, 3.0])}])
def test_local_greedy_returns_aligned_edge_attr(weighted, fill):
    model, data = attributed_toy(weighted)
    before = {k: v.clone() for k, v in data.items() if torch.is_tensor(v)}
    res = LocalGreedy(unnoticeable=False, added_edge_values=fill)(model, data, target=0, budget=4)
    g = res.graph
    assert len(res.flips) == 4
    assert torch.equal(g.edge_index, res.edge_index) and res.edge_attr is g.edge_attr
    assert res.edge_attr.shape == (res.edge_index.shape[1], 3)
    added_row = torch.zeros(3) if fill == "zeros" else fill["edge_attr"]
    clean = pairs(data.edge_index)
    assert pairs(res.edge_index) ^ clean == set(res.flips)          # the flips, counted independently
    for (a, b), row in zip(res.edge_index.t().tolist(), res.edge_attr):
        lo, hi = min(a, b), max(a, b)
        expected = torch.tensor([lo, hi, (lo - hi) / 10]) if (lo, hi) in clean else added_row
        assert torch.allclose(row, expected), ((a, b), row)
    if weighted:
        assert res.edge_weight is g.edge_weight and res.edge_weight.shape == (res.edge_index.shape[1],)
    # the attack saw the rows it returns: its last margin is the model's on the returned graph
    with torch.no_grad():
        out = model(g)[0]
    assert res.margins[-1] == pytest.approx(float(LocalGreedy.margin(out, int(data.y[0]))), abs=1e-5)
    for k, v in before.items():
        assert torch.equal(data[k], v), k                          # the user's graph is unchanged


def test_local_greedy_refuse_names_the_argument():
    model, data = attributed_toy(False)
    with pytest.raises(ValueError, match=r"edge_attr.*LocalGreedy\(added_edge_values="):
        LocalGreedy(unnoticeable=False, added_edge_values="refuse")(model, data, target=0, budget=2)
    with pytest.raises(ValueError, match="added_edge_values"):
        LocalGreedy(added_edge_values="ones")
