"""Soft-Median aggregation and Soft-Median GDC (Geisler et al. 2021, "Robustness of Graph Neural Networks at
Scale", https://arxiv.org/abs/2110.14038, Sec. 4, Eq. 7).

The weighted sum of a GCN layer has breakdown point 0: one inserted neighbour with a large embedding moves
the aggregate arbitrarily.  The Soft Median replaces it by a softmax-weighted sum centred on the
dimension-wise (weighted) median :math:`\\bar x_v` of the neighbourhood:

.. math:: \\mu_{SM}(v) = \\Big(\\sum_{u} a_{vu}\\Big)\\,\\sum_{u} \\frac{a_{vu}\\, s_u}{\\sum_{w} a_{vw}\\, s_w} h_u,
          \\quad s = \\mathrm{softmax}_u\\big(-\\|\\bar x_v - h_u\\|_2 / (T \\sqrt{d})\\big)

All of it runs on the edge list: memory ~ ``edges x channels``, never ``nodes^2``.  The median itself is
piecewise constant in the weights (computed without gradient, as in the reference implementation); the
gradient reaches the edge weights through :math:`a_{vu}` and the embeddings through the distances.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import check_fraction, check_int, check_positive


def weighted_dimwise_median(h: Tensor, edge_index: Tensor, weight: Tensor, num_nodes: int) -> Tensor:
    """Per target node ``v = edge_index[1]`` and channel, the weighted median of ``h[edge_index[0]]`` with
    weights ``weight`` (the lower weighted median: the first value whose cumulative weight reaches half the
    total).  Nodes without incoming edges get zeros.  No gradient flows through the choice of the median.
    """
    with torch.no_grad():
        src, dst = edge_index
        e, d = src.numel(), h.shape[1]
        if e == 0:
            return h.new_zeros(num_nodes, d)
        # one sort per channel by the key (destination, value): the value is squashed into [0, 0.5] so that
        # destinations never mix (float64 keeps ~1e-10 relative resolution of the values up to 1e6 nodes)
        vals = h.detach().t().double()[:, src]                                 # (D, E)
        lo, hi = vals.min(1, keepdim=True).values, vals.max(1, keepdim=True).values
        key = dst.double()[None, :] + 0.5 * (vals - lo) / (hi - lo).clamp_min(1e-300)
        order = torch.sort(key, dim=1).indices                                 # (D, E) edge ids
        dst_sorted = torch.sort(dst).values                                    # identical for every channel
        w = weight.detach().double().clamp_min(0)
        total = torch.zeros(num_nodes, dtype=torch.float64, device=h.device).index_add_(0, dst, w)
        offset = torch.cumsum(total, 0) - total
        within = torch.cumsum(w[order], 1) - offset[dst_sorted][None, :]
        reached = within >= 0.5 * total[dst_sorted][None, :] - 1e-12 * total.max().clamp_min(1)
        pos = torch.arange(e, device=h.device)[None, :].expand(d, e)
        first = torch.full((d, num_nodes), e, dtype=torch.long, device=h.device).scatter_reduce(
            1, dst_sorted[None, :].expand(d, e), torch.where(reached, pos, torch.full_like(pos, e)), "amin")
        has = (first < e).t()
        edge = order.gather(1, first.clamp_max(e - 1)).t()                     # (N, D) edge holding the median
    med = h[src[edge], torch.arange(d, device=h.device)[None, :].expand(num_nodes, d)]
    return med * has.to(h.dtype)


def soft_median(h: Tensor, edge_index: Tensor, weight: Tensor, num_nodes: int, temperature: float = 1.0) -> Tensor:
    """Soft-Median aggregation of messages ``h[edge_index[0]] -> edge_index[1]`` with weights ``weight``
    (Geisler et al. 2021, Eq. 7); ``temperature -> inf`` recovers the weighted sum of a GCN layer."""
    from torch_geometric.utils import softmax

    src, dst = edge_index
    med = weighted_dimwise_median(h, edge_index, weight, num_nodes)
    dist = (med[dst] - h[src]).norm(dim=1) / math.sqrt(h.shape[1])
    s = softmax(-dist / temperature, dst, num_nodes=num_nodes)
    ws = s * weight
    row_sum = torch.zeros(num_nodes, dtype=h.dtype, device=h.device)
    norm = row_sum.index_add(0, dst, ws)
    total = row_sum.index_add(0, dst, weight)
    coef = ws / norm[dst].clamp_min(torch.finfo(h.dtype).tiny) * total[dst]
    return h.new_zeros(num_nodes, h.shape[1]).index_add(0, dst, coef[:, None] * h[src])


class SoftMedianConv(nn.Module):
    """A GCN layer (Kipf & Welling 2017) whose weighted sum is the Soft Median (:func:`soft_median`):
    ``out = SoftMedian_{A_norm}(x W) + b`` with :math:`A_{norm} = \\tilde D^{-1/2}(A + I)\\tilde D^{-1/2}`
    (``normalize=True``) or the given weights as they are (``normalize=False``, e.g. a diffusion matrix)."""

    def __init__(self, in_channels: int, out_channels: int, temperature: float = 0.5, normalize: bool = True):
        super().__init__()
        self.lin = nn.Linear(in_channels, out_channels, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.temperature = check_positive("temperature", temperature)
        self.normalize = bool(normalize)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor] = None) -> Tensor:
        from torch_geometric.nn.conv.gcn_conv import gcn_norm

        n = x.shape[0]
        if edge_weight is None:
            edge_weight = torch.ones(edge_index.shape[1], dtype=x.dtype, device=x.device)
        if self.normalize:
            edge_index, edge_weight = gcn_norm(edge_index, edge_weight, n, add_self_loops=True)
        return soft_median(self.lin(x), edge_index, edge_weight, n, self.temperature) + self.bias


#: the backward of :class:`_EdgeProduct` forms the dense ``nodes x nodes`` product only where the edge list fills more
#: than 1 / this of the node pairs (and it takes at most 256 MB): a GEMM is then faster than per-edge dot products
#: (Cora with PRBCD's 100k-pair block, 34 pairs per edge: 15 vs 51 CPU s per PPR backward; clean Cora, 555 pairs per
#: edge: 7.5 vs 4.0 s; 8,000 random nodes, 1,450: 141 vs 51 s and +441 vs +218 MB)
DENSE_BACKWARD_PAIRS_PER_EDGE = 64


class _EdgeProduct(torch.autograd.Function):
    """``T @ r`` for the sparse ``T[edge_index[0], edge_index[1]] = w``; the gradient of ``w`` is
    :math:`\\partial L/\\partial w_e = \\langle G_{i_e}, r_{j_e}\\rangle` (``G`` the output gradient), computed per
    edge in chunks (memory ~ ``chunk x columns``) on sparse graphs, and as the masked dense product ``G r^T`` (what
    ``torch.sparse.mm``'s own backward always does: ``nodes x nodes``, 1.6 GB per power step at 20k nodes) only
    where that is small and faster (:data:`DENSE_BACKWARD_PAIRS_PER_EDGE`)."""

    @staticmethod
    def forward(ctx, w: Tensor, r: Tensor, edge_index: Tensor, n: int) -> Tensor:
        ctx.save_for_backward(w, r, edge_index)
        ctx.n = n
        return torch.sparse.mm(torch.sparse_coo_tensor(edge_index, w, (n, n), check_invariants=False), r)

    @staticmethod
    def backward(ctx, grad: Tensor):
        w, r, edge_index = ctx.saved_tensors
        grad_w = grad_r = None
        if ctx.needs_input_grad[1]:
            t = torch.sparse_coo_tensor(edge_index.flip(0), w, (ctx.n, ctx.n), check_invariants=False)
            grad_r = torch.sparse.mm(t, grad)
        if ctx.needs_input_grad[0]:
            src, dst = edge_index
            n = ctx.n
            if n * n <= DENSE_BACKWARD_PAIRS_PER_EDGE * src.numel() and n * n * grad.element_size() <= 1 << 28:
                return (grad @ r.t())[src, dst], grad_r, None, None
            chunk = max(1, (1 << 20) // max(1, r.shape[1]))
            grad_w = torch.cat([(grad[src[i:i + chunk]] * r[dst[i:i + chunk]]).sum(1)
                                for i in range(0, src.numel(), chunk)]) if src.numel() else torch.zeros_like(w)
        return grad_w, grad_r, None, None


def ppr_topk(edge_index: Tensor, edge_weight: Optional[Tensor], num_nodes: int, alpha: float = 0.15, k: int = 64,
             iterations: int = 20, block: int = 512) -> Tuple[Tensor, Tensor]:
    """Top-``k`` entries per row of personalised PageRank :math:`\\Pi = \\alpha(I - (1-\\alpha)T)^{-1}` with
    :math:`T = \\tilde D^{-1/2}(A + I)\\tilde D^{-1/2}` (GDC, Klicpera et al. 2019,
    https://arxiv.org/abs/1911.05485, Eq. 1 and top-k sparsification), as an edge list ``(source, row)``
    with weights.  ``iterations`` power steps per ``block`` of rows, each block under gradient checkpointing:
    memory ~ ``edges + block x nodes``; the backward, through which gradients reach ``edge_weight``, forms a dense
    ``nodes x nodes`` product only where it is below 256 MB and the edge list is dense (:class:`_EdgeProduct`).
    """
    from torch_geometric.nn.conv.gcn_conv import gcn_norm

    device = edge_index.device
    if edge_weight is None:
        edge_weight = torch.ones(edge_index.shape[1], device=device)
    ei, w = gcn_norm(edge_index, edge_weight, num_nodes, add_self_loops=True)
    k = min(k, num_nodes)

    def rows(w_: Tensor, start: int, stop: int) -> Tuple[Tensor, Tensor]:
        seed = torch.zeros(num_nodes, stop - start, dtype=w_.dtype, device=device)
        seed[torch.arange(start, stop, device=device), torch.arange(stop - start, device=device)] = alpha
        r = seed
        for _ in range(iterations):      # columns of Pi^T = rows of Pi (T is symmetric)
            r = seed + (1 - alpha) * _EdgeProduct.apply(w_, r, ei, num_nodes)
        vals, idx = torch.topk(r.t(), k, dim=1)
        return vals, idx

    srcs, dsts, vals = [], [], []
    for start in range(0, num_nodes, block):
        stop = min(num_nodes, start + block)
        if w.requires_grad and torch.is_grad_enabled():
            v, i = checkpoint(rows, w, start, stop, use_reentrant=False)
        else:
            v, i = rows(w, start, stop)
        dsts.append(torch.arange(start, stop, device=device).repeat_interleave(k))
        srcs.append(i.reshape(-1))
        vals.append(v.reshape(-1))
    v = torch.cat(vals)
    keep = v > 0
    return torch.stack([torch.cat(srcs), torch.cat(dsts)])[:, keep], v[keep]


class SoftMedianGDC(nn.Module):
    """Soft-Median GDC (Geisler et al. 2021, Sec. 4 and Table 2): a two-layer GCN whose aggregation is the
    Soft Median over the top-``k`` personalised-PageRank neighbourhood (:func:`ppr_topk`) instead of the
    adjacency.  Defaults follow the paper's Cora setup (``alpha=0.15``, ``k=64``, ``temperature=0.5``,
    hidden 64, dropout 0.5).  The diffusion is recomputed from ``(edge_index, edge_weight)`` on every call,
    so attacks see (and differentiate through) it: an adaptive attack.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, temperature: float = 0.5,
                 alpha: float = 0.15, k: int = 64, dropout: float = 0.5, ppr_iterations: int = 10,
                 block: int = 512):
        super().__init__()
        self.conv1 = SoftMedianConv(in_channels, hidden, temperature, normalize=False)
        self.conv2 = SoftMedianConv(hidden, out_channels, temperature, normalize=False)
        self.alpha = check_fraction("alpha", alpha, open_low=True, open_high=True)
        self.k = check_int("k", k, 1)
        self.dropout = check_fraction("dropout", dropout, open_high=True)
        self.ppr_iterations = check_int("ppr_iterations", ppr_iterations, 1)
        self.block = check_int("block", block, 1)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor] = None) -> Tensor:
        n = x.shape[0]
        if edge_weight is None:
            edge_weight = torch.ones(edge_index.shape[1], dtype=x.dtype, device=x.device)
        ei, w = ppr_topk(edge_index, edge_weight, n, self.alpha, self.k, self.ppr_iterations, self.block)
        h = F.dropout(x, self.dropout, self.training)
        h = F.relu(self.conv1(h, ei, w))
        h = F.dropout(h, self.dropout, self.training)
        return self.conv2(h, ei, w)


class SoftMedianGCN(nn.Module):
    """A two-layer GCN with Soft-Median aggregation on the (normalised, self-looped) adjacency itself."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, temperature: float = 0.5,
                 dropout: float = 0.5):
        super().__init__()
        self.conv1 = SoftMedianConv(in_channels, hidden, temperature)
        self.conv2 = SoftMedianConv(hidden, out_channels, temperature)
        self.dropout = check_fraction("dropout", dropout, open_high=True)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor] = None) -> Tensor:
        h = F.dropout(x, self.dropout, self.training)
        h = F.relu(self.conv1(h, edge_index, edge_weight))
        h = F.dropout(h, self.dropout, self.training)
        return self.conv2(h, edge_index, edge_weight)
