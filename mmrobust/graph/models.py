"""Reference graph models that follow the attackable convention ``model(x, edge_index, edge_weight=None)``.

All message passing is done by PyG layers (``GCNConv``, ``GATConv``, ``APPNP``); none caches the
normalised adjacency, so perturbed graphs are always seen as given.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import check_fraction, check_int
from .similarity import edge_jaccard


class GCN(nn.Module):
    """Graph convolutional network (Kipf & Welling 2017, https://arxiv.org/abs/1609.02907, Eq. 2):

    .. math:: H^{(l+1)} = \\sigma(\\tilde D^{-1/2} \\tilde A \\tilde D^{-1/2} H^{(l)} W^{(l)})

    with :math:`\\tilde A = A + I` (weighted when ``edge_weight`` is given).  ``graph_level=True`` adds
    a global mean pool over ``batch`` for graph classification.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, layers: int = 2,
                 dropout: float = 0.5, graph_level: bool = False):
        super().__init__()
        from torch_geometric.nn import GCNConv

        check_int("layers", layers, 1)
        dims = [in_channels] + [hidden] * (layers - 1) + ([hidden] if graph_level else [out_channels])
        self.convs = nn.ModuleList(GCNConv(a, b, cached=False) for a, b in zip(dims[:-1], dims[1:]))
        self.dropout = check_fraction("dropout", dropout, open_high=True)
        self.graph_level = graph_level
        self.head = nn.Linear(hidden, out_channels) if graph_level else None

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor] = None,
                batch: Optional[Tensor] = None) -> Tensor:
        for i, conv in enumerate(self.convs):
            x = F.dropout(x, self.dropout, self.training)
            x = conv(x, edge_index, edge_weight)
            if i < len(self.convs) - 1 or self.graph_level:
                x = F.relu(x)
        if self.graph_level:
            from torch_geometric.nn import global_mean_pool
            x = self.head(global_mean_pool(x, batch))
        return x


class GAT(nn.Module):
    """Graph attention network (Veličković et al. 2018, https://arxiv.org/abs/1710.10903, Eq. 3) made
    attackable by edge flips: the relaxed edge weight enters each ``GATConv(edge_dim=1)`` as a 1-d edge
    feature (the approach of PyG's ``PRBCDAttack`` example), so its gradient reaches the attack.

    .. math:: \\alpha_{ij} = \\mathrm{softmax}_j(\\mathrm{LeakyReLU}(a^\\top[W h_i \\| W h_j \\| W_e w_{ij}]))
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 8, heads: int = 8,
                 dropout: float = 0.6):
        super().__init__()
        from torch_geometric.nn import GATConv

        self.dropout = check_fraction("dropout", dropout, open_high=True)
        self.conv1 = GATConv(in_channels, hidden, heads=heads, edge_dim=1, dropout=dropout, fill_value=1.0)
        self.conv2 = GATConv(hidden * heads, out_channels, heads=1, edge_dim=1, dropout=dropout, fill_value=1.0)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor] = None) -> Tensor:
        if edge_weight is None:
            edge_weight = torch.ones(edge_index.shape[1], dtype=x.dtype, device=x.device)
        attr = edge_weight[:, None]
        x = F.dropout(x, self.dropout, self.training)
        x = F.elu(self.conv1(x, edge_index, attr))
        x = F.dropout(x, self.dropout, self.training)
        return self.conv2(x, edge_index, attr)


class APPNPNet(nn.Module):
    """Predict then propagate (Klicpera et al. 2019, https://arxiv.org/abs/1810.05997, Eq. 3):
    an MLP followed by ``K`` steps of personalised PageRank propagation

    .. math:: Z^{(k+1)} = (1 - \\alpha) \\hat A Z^{(k)} + \\alpha H,\\quad H = \\mathrm{MLP}(X)
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, k: int = 10, alpha: float = 0.1,
                 dropout: float = 0.5):
        super().__init__()
        from torch_geometric.nn import APPNP

        self.lin1 = nn.Linear(in_channels, hidden)
        self.lin2 = nn.Linear(hidden, out_channels)
        self.prop = APPNP(check_int("k", k, 1), check_fraction("alpha", alpha), cached=False)
        self.dropout = check_fraction("dropout", dropout, open_high=True)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor] = None) -> Tensor:
        x = F.dropout(x, self.dropout, self.training)
        x = F.relu(self.lin1(x))
        x = F.dropout(x, self.dropout, self.training)
        return self.prop(self.lin2(x), edge_index, edge_weight)


class JaccardGCN(GCN):
    """GCN-Jaccard (Wu et al. 2019, https://arxiv.org/abs/1903.01610, Sec. 4.1): before convolving,
    edges between nodes whose binary features have Jaccard similarity below ``threshold`` are removed

    .. math:: J_{ij} = |x_i \\cap x_j| / |x_i \\cup x_j|,\\quad A'_{ij} = A_{ij} \\mathbb{1}[J_{ij} \\ge \\tau]

    Edges are dropped by zeroing their weight, so relaxed edge weights still pass gradients to attacks
    for the edges that survive (the adaptive-attack setting of Mujkanovic et al. 2022).  The similarities are
    counted per edge from the non-zeros of the two rows (:func:`~mmrobust.graph.similarity.edge_jaccard`), never
    as an ``edges x features`` tensor.
    """

    def __init__(self, in_channels: int, out_channels: int, threshold: float = 0.01, **kwargs):
        super().__init__(in_channels, out_channels, **kwargs)
        self.threshold = check_fraction("threshold", threshold)

    def forward(self, x, edge_index, edge_weight=None, batch=None):
        if edge_weight is None:
            edge_weight = torch.ones(edge_index.shape[1], dtype=x.dtype, device=x.device)
        jac = edge_jaccard(x, edge_index)   # sparse per-edge counts, never an edges x features tensor
        # a stored self loop is never pruned: a node is not dissimilar to itself (an empty feature row, as CiteSeer
        # has, gives it Jaccard 0; GCNConv then kept the loop at weight 0, dropped the node's own features and its
        # degree-0 normalisation made every edge-weight gradient NaN)
        keep = (jac >= self.threshold) | (edge_index[0] == edge_index[1])
        return super().forward(x, edge_index, edge_weight * keep.to(x.dtype), batch)
