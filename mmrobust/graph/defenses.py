"""Robust GNNs to compare against: GNNGuard, RGCN and GCN-SVD (beside :class:`~mmrobust.graph.models.JaccardGCN`
and the Soft-Median models of :mod:`mmrobust.graph.soft_median`).

Every model follows the attackable convention ``model(x, edge_index, edge_weight=None)`` and recomputes its
defence from the given (possibly relaxed) edge weights on every call, so any graph attack -- PRBCD, GRBCD,
DICE, poisoning -- runs *through* the defence (the adaptive setting of Mujkanovic et al. 2022,
https://arxiv.org/abs/2301.00117); a transfer attack is an attack on a plain GCN whose graph is then fed to
the defence.  All of them work on the edge list (memory ~ ``edges x channels``; GCN-SVD ~ ``nodes x rank``;
GNNGuard's similarities in chunks, :mod:`mmrobust.graph.similarity`), never on a dense ``nodes x nodes`` matrix.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import check_finite_nonneg, check_fraction, check_int
from .similarity import edge_cosine


def _ones(edge_index: Tensor, x: Tensor) -> Tensor:
    return torch.ones(edge_index.shape[1], dtype=x.dtype, device=x.device)


def _scatter_sum(values: Tensor, index: Tensor, n: int) -> Tensor:
    return values.new_zeros(n).index_add(0, index, values)


class GNNGuard(nn.Module):
    """GNNGuard (Zhang & Zitnik 2020, https://arxiv.org/abs/2006.08149, Eqs. 2-6) on a two-layer GCN.

    Before each layer, every edge ``(u, v)`` gets the cosine similarity :math:`s_{uv}` of the current node
    representations; edges with :math:`s_{uv} < 0.1` (``threshold``) are pruned, the rest are normalised
    per node, :math:`\\alpha_{uv} = s_{uv} / \\sum_{w} s_{wv}`, a self loop of weight
    :math:`1 / (1 + \\deg_v)` is added, and the layer convolves with weights :math:`\\exp(\\alpha)`.
    The second layer blends its coefficients with the first's (layer-wise memory,
    :math:`\\beta \\alpha^{(1)} + (1 - \\beta)\\alpha^{(2)}`, learnable :math:`\\beta`).

    As in the adaptive GNNGuard of Mujkanovic et al. 2022, the given edge weight multiplies the similarity
    (and the final coefficient), so a relaxed weight :math:`p \\to 0` removes the edge and gradients reach
    :math:`p`; at discrete weights this is the original model.  The learnable pruning ("drop") variant of
    the reference code is off there by default and not included.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, dropout: float = 0.5,
                 threshold: float = 0.1):
        super().__init__()
        from torch_geometric.nn import GCNConv

        self.conv1 = GCNConv(in_channels, hidden, add_self_loops=False)
        self.conv2 = GCNConv(hidden, out_channels, add_self_loops=False)
        self.beta = nn.Parameter(torch.tensor(0.5))
        self.dropout = check_fraction("dropout", dropout, open_high=True)
        self.threshold = check_fraction("threshold", threshold)

    def coefficients(self, h: Tensor, edge_index: Tensor, edge_weight: Tensor,
                     alive: Optional[Tensor] = None) -> Tensor:
        """Per edge: the normalised, pruned similarity :math:`\\alpha_{uv}` (zero for pruned edges and self
        loops); ``alive`` (bool) restricts it to edges an earlier layer kept."""
        src, dst = edge_index
        n = h.shape[0]
        sim = edge_cosine(h, edge_index, eps=1e-8)   # chunked / sparse: never edges x channels at once
        keep = (sim >= self.threshold) & (src != dst)
        if alive is not None:
            keep &= alive
        s = torch.where(keep, sim, torch.zeros_like(sim)) * edge_weight
        return s / _scatter_sum(s, dst, n)[dst].clamp_min(1e-12)

    def _graph(self, alpha: Tensor, edge_index: Tensor, edge_weight: Tensor, n: int) -> Tuple[Tensor, Tensor]:
        kept = (alpha > 0).to(alpha.dtype) * edge_weight
        degree = _scatter_sum(kept, edge_index[1], n)
        loops = torch.arange(n, device=edge_index.device)
        w = torch.where(alpha > 0, torch.exp(alpha) * edge_weight, torch.zeros_like(alpha))
        self_w = torch.exp(1.0 / (1.0 + degree))
        return torch.cat([edge_index, torch.stack([loops, loops])], 1), torch.cat([w, self_w])

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor] = None) -> Tensor:
        n = x.shape[0]
        w = _ones(edge_index, x) if edge_weight is None else edge_weight
        a1 = self.coefficients(x, edge_index, w)
        ei, w1 = self._graph(a1, edge_index, w, n)
        h = F.dropout(x, self.dropout, self.training)
        h = F.relu(self.conv1(h, ei, w1))
        a2 = self.coefficients(h, edge_index, w, alive=a1 > 0)   # pruned edges stay pruned
        beta = self.beta.clamp(0, 1)
        _, w2 = self._graph(beta * a1 + (1 - beta) * a2, edge_index, w, n)
        h = F.dropout(h, self.dropout, self.training)
        return self.conv2(h, ei, w2)


class RGCN(nn.Module):
    """Robust GCN with Gaussian-based graph convolutions (Zhu et al. 2019, https://dl.acm.org/doi/10.1145/3292500.3330851,
    Eqs. 5-8): every node is a Gaussian :math:`N(\\mu, \\mathrm{diag}(\\sigma^2))`; variance-based attention
    :math:`\\mathrm{att} = \\exp(-\\gamma \\sigma^2)` down-weights uncertain neighbours,

    .. math:: \\mu^{(l+1)} = \\rho(\\hat A_{-1/2} (\\mu^{(l)} \\odot \\mathrm{att}) W_\\mu),\\quad
              \\sigma^{2\\,(l+1)} = \\rho(\\hat A_{-1} (\\sigma^{2\\,(l)} \\odot \\mathrm{att}^2) W_\\sigma)

    with :math:`\\hat A_{-1/2} = \\tilde D^{-1/2}\\tilde A\\tilde D^{-1/2}` and
    :math:`\\hat A_{-1} = \\tilde D^{-1}\\tilde A\\tilde D^{-1}`.  The output is :math:`\\mu + \\epsilon \\sigma`,
    :math:`\\epsilon \\sim N(0, I)`, while training and :math:`\\mu` in eval mode (deterministic, so an attack
    sees one function).  The KL regulariser of Eq. 9 (weight 5e-4 in the paper) is not added: training
    uses the plain cross-entropy of :func:`~mmrobust.graph.training.train_node_classifier`.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 32, gamma: float = 1.0,
                 dropout: float = 0.6):
        super().__init__()
        self.mean1, self.var1 = nn.Linear(in_channels, hidden), nn.Linear(in_channels, hidden)
        self.mean2, self.var2 = nn.Linear(hidden, out_channels), nn.Linear(hidden, out_channels)
        self.gamma = check_finite_nonneg("gamma", gamma)
        self.dropout = check_fraction("dropout", dropout, open_high=True)

    @staticmethod
    def _propagate(h: Tensor, edge_index: Tensor, w: Tensor, dinv: Tensor, power: float) -> Tensor:
        src, dst = edge_index
        coef = w * dinv[src].pow(power) * dinv[dst].pow(power)
        return h.new_zeros(h.shape).index_add(0, dst, coef[:, None] * h[src])

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor] = None) -> Tensor:
        from torch_geometric.utils import add_remaining_self_loops

        n = x.shape[0]
        w = _ones(edge_index, x) if edge_weight is None else edge_weight
        ei, w = add_remaining_self_loops(edge_index, w, fill_value=1.0, num_nodes=n)
        dinv = 1.0 / _scatter_sum(w, ei[1], n).clamp_min(1e-12)
        h = F.dropout(x, self.dropout, self.training)
        mean, var = F.elu(self.mean1(h)), F.relu(self.var1(h))
        for layer, (lin_m, lin_v) in enumerate([(None, None), (self.mean2, self.var2)]):
            if layer == 1:
                mean = F.dropout(mean, self.dropout, self.training)
                var = F.dropout(var, self.dropout, self.training)
                mean, var = F.elu(lin_m(mean)), F.relu(lin_v(var))
            att = torch.exp(-self.gamma * var)
            mean = self._propagate(mean * att, ei, w, dinv, 0.5)
            var = self._propagate(var * att * att, ei, w, dinv, 1.0)
        if self.training:
            return mean + torch.randn_like(var) * (var + 1e-8).sqrt()
        return mean


class GCNSVD(nn.Module):
    """GCN-SVD (Entezari et al. 2020, "All you need is low (rank)", WSDM,
    https://dl.acm.org/doi/10.1145/3336191.3371789, Sec. 4): a two-layer GCN on the rank-``rank`` approximation
    :math:`A_k` of the adjacency, which filters the high-rank perturbations Nettack inserts.

    :math:`A_k = Q (Q^\\top A Q) Q^\\top` with :math:`Q` the top-``rank`` invariant subspace of the symmetric
    :math:`A`, found by randomized subspace iteration (Halko et al. 2011, https://arxiv.org/abs/0909.4061,
    Alg. 4.4; ``iterations`` sparse products, fixed seed so every call is the same function).  For a symmetric
    matrix this is the truncated SVD up to the iteration's accuracy.  :math:`A_k` is never formed: each layer
    applies :math:`\\tilde D^{-1/2}(A_k + I)\\tilde D^{-1/2}` in factored form (memory ~ ``nodes x rank``), with
    :math:`\\tilde D = \\mathrm{diag}(\\max(A_k \\mathbf 1, 0) + 1)` (a row of :math:`A_k` can sum below 0).
    Gradients reach ``edge_weight`` through the QR factorisations (no SVD backward, which is unstable at
    repeated singular values).

    Where the adjacency has (numerically) at most ``rank`` non-zero singular values -- ``rank >= nodes``, or a
    small graph, a ``Batch`` of small graphs, many isolated nodes -- the QR factors are singular and their
    backward gives NaN or ~1e38 gradients.  There the rank-``rank`` approximation *is* the adjacency
    (:math:`A_k = A`), so the model propagates with :math:`A` itself (exact values and gradients: a GCN with
    self loops); ``rank >= nodes`` also warns, since the defence then filters nothing.  A degenerate subspace
    that is not the whole adjacency raises a ``ValueError`` asking for a lower ``rank``.

    On a ``Batch`` the approximation is of the whole block-diagonal adjacency: ``rank`` is shared by all graphs,
    and the few subspace iterations leave small entries between graphs, so a graph's outputs depend (slightly) on
    the other graphs of the batch (two 30-node SBM graphs, rank 5: up to 0.4 in the logits of one when the
    other's features change).  Attack or evaluate one graph per call for per-graph results.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, rank: int = 50,
                 iterations: int = 6, dropout: float = 0.5, seed: int = 0):
        super().__init__()
        self.lin1 = nn.Linear(in_channels, hidden)
        self.lin2 = nn.Linear(hidden, out_channels)
        self.rank = check_int("rank", rank, 1)
        self.iterations = check_int("iterations", iterations, 1)
        self.dropout = check_fraction("dropout", dropout, open_high=True)
        self.seed = int(seed)

    def low_rank(self, edge_index: Tensor, w: Tensor, n: int, dtype) -> Tuple[Tensor, Tensor]:
        """``(Q, M)`` with :math:`A_k = Q M Q^\\top`."""
        q, m, _ = self._subspace(edge_index, w, n, dtype)
        return q, m

    def _subspace(self, edge_index: Tensor, w: Tensor, n: int, dtype) -> Tuple[Tensor, Tensor, float]:
        """``(Q, M, c)``: :meth:`low_rank` and ``c``, the smallest ratio of the smallest to the largest singular
        value of the matrices the QR steps factor (near 0: their backward is unreliable)."""
        src, dst = edge_index
        k = min(self.rank, n)

        def apply(m: Tensor) -> Tensor:
            return m.new_zeros(n, m.shape[1]).index_add(0, dst, w[:, None] * m[src])

        g = torch.Generator().manual_seed(self.seed)
        q = torch.randn(n, k, generator=g, dtype=dtype).to(edge_index.device)
        conditioning = 1.0
        for _ in range(self.iterations):
            q, r = torch.linalg.qr(apply(q))
            s = torch.linalg.svdvals(r.detach())
            conditioning = min(conditioning, float(s[-1] / s[0]) if float(s[0]) > 0 else 0.0)
        m = q.t() @ apply(q)
        return q, (m + m.t()) / 2, conditioning

    def _adjacency(self, edge_index: Tensor, w: Tensor, n: int, dtype):
        """The propagation matrix as a function ``h -> A_k h``: factored, or ``A`` itself where ``A_k = A``."""
        if self.rank >= n:
            warnings.warn(f"GCNSVD: rank={self.rank} >= the graph's {n} nodes, so the rank-{self.rank} approximation "
                          f"is the adjacency itself and GCN-SVD acts as a plain GCN; use rank in [1, {n - 1}] "
                          "(the paper: 10-50 on Cora-sized graphs)", stacklevel=3)
            return self._exact(edge_index, w, n)
        q, m, conditioning = self._subspace(edge_index, w, n, dtype)
        if conditioning > math.sqrt(torch.finfo(dtype).eps):
            return lambda h: q @ (m @ (q.t() @ h))
        # singular QR steps: A has (numerically) at most `rank` non-zero singular values, or a degenerate subspace.
        # ||A - A_k||_F^2 = ||A||_F^2 - ||M||_F^2 (A_k is A's orthogonal projection) tells them apart, in float64
        with torch.no_grad():
            w64 = w.detach().double()
            _, m64, _ = self._subspace(edge_index, w64, n, torch.float64)
            total = float(w64.pow(2).sum())
            residual = math.sqrt(max(total - float(m64.pow(2).sum()), 0.0))
        if residual <= 1e-3 * math.sqrt(total):
            return self._exact(edge_index, w, n)    # A_k = A (within 0.1 %): propagate with A, exact gradients
        raise ValueError(f"GCNSVD: the rank-{self.rank} subspace of this graph's adjacency is numerically degenerate "
                         f"(singular-value ratio {conditioning:.1e} in {dtype}), so gradients through it are "
                         f"unreliable; lower rank (it must lie in [1, {n - 1}]; e.g. rank={max(1, self.rank // 2)}) "
                         "or run the model in float64")

    @staticmethod
    def _exact(edge_index: Tensor, w: Tensor, n: int):
        src, dst = edge_index
        return lambda h: h.new_zeros(n, h.shape[1]).index_add(0, dst, w[:, None] * h[src])

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor] = None) -> Tensor:
        n = x.shape[0]
        w = _ones(edge_index, x) if edge_weight is None else edge_weight
        keep = edge_index[0] != edge_index[1]
        a_k = self._adjacency(edge_index[:, keep], w[keep], n, x.dtype)
        ones = torch.ones(n, 1, dtype=x.dtype, device=x.device)
        # row sums of A_k can be negative: clamp them at 0 before counting the self loop, so that every node's
        # normalisation is at most 1 (clamping deg + 1 at 1e-6 gave nodes with low-rank degree <= -1 a factor
        # 1000; the Cora LCC has 19 nodes with deg + 1 <= 0.1 at rank 50)
        deg = a_k(ones).squeeze(1).clamp_min(0) + 1
        dinv = deg.rsqrt()[:, None]

        def propagate(h: Tensor) -> Tensor:
            g = dinv * h
            return dinv * (a_k(g) + g)

        h = F.dropout(x, self.dropout, self.training)
        h = F.relu(propagate(self.lin1(h)))
        h = F.dropout(h, self.dropout, self.training)
        return propagate(self.lin2(h))
