"""Per-edge feature similarities (dot product, cosine, Jaccard) without an ``edges x features`` tensor.

The feature-similarity defences (:class:`~mmrobust.graph.models.JaccardGCN`, Wu et al. 2019;
:class:`~mmrobust.graph.defenses.GNNGuard`, Zhang & Zitnik 2020) score every edge ``(u, v)`` by a similarity of
``x_u`` and ``x_v``.  Gathering both endpoint rows for every edge costs ``edges x features`` memory; under an
attack such as PRBCD the edge list also carries the sampled block (~200k directed pairs on Cora), i.e. ~1.3 GB
per gather at 1,433 features.  Here:

- **sparse rows, no gradient needed** (bag-of-words features; Cora is 1.3 % dense): per edge, only the
  non-zeros of the endpoint with fewer of them are visited, and the other endpoint's entries at those features
  are read: work and memory ~ ``sum over edges of min(nnz_u, nnz_v)``, in chunks of at most ``chunk_elements``
  pairs.
- **otherwise** (dense rows, or a gradient w.r.t. the features is needed, e.g. a feature attack): the two rows
  are gathered ``chunk_elements // features`` edges at a time; with a gradient every chunk runs under
  activation checkpointing, so the backward pass does not keep the gathered rows either.

PyG (2.8) has no per-edge similarity utility; ``torch.sparse.sampled_addmm`` needs a coalesced CSR pattern,
which attacked edge lists (duplicates, block pairs) are not.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK = 2 ** 22   # elements per chunk: 16 MB in float32 per gathered tensor
SPARSE_BELOW = 0.25       # density under which rows are treated as sparse


def _gathered_dot(h: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    return (h[src] * h[dst]).sum(1)


def _dense_edge_dot(h: Tensor, src: Tensor, dst: Tensor, chunk_elements: int) -> Tensor:
    step = max(1, chunk_elements // max(1, h.shape[1]))
    if src.numel() <= step:
        return _gathered_dot(h, src, dst)
    grad = h.requires_grad and torch.is_grad_enabled()
    parts = [checkpoint(_gathered_dot, h, src[s:s + step], dst[s:s + step], use_reentrant=False) if grad
             else _gathered_dot(h, src[s:s + step], dst[s:s + step]) for s in range(0, src.numel(), step)]
    return torch.cat(parts)


@torch.no_grad()
def _sparse_edge_dot(h: Tensor, src: Tensor, dst: Tensor, chunk_elements: int) -> Tensor:
    n = h.shape[0]
    out = h.new_zeros(src.numel())
    node, feat = h.nonzero(as_tuple=True)          # row-major: each node's non-zeros are contiguous
    if node.numel() == 0 or src.numel() == 0:
        return out
    val = h[node, feat]
    count = torch.bincount(node, minlength=n)
    ptr = torch.cumsum(count, 0) - count
    fewer = count[src] <= count[dst]
    a, b = torch.where(fewer, src, dst), torch.where(fewer, dst, src)   # walk a's non-zeros, read b's entries
    length = count[a]
    end = torch.cumsum(length, 0)
    flat = h.reshape(-1)
    start = 0
    while start < src.numel():
        stop = int(torch.searchsorted(end, end[start] - length[start] + chunk_elements, right=True))
        stop = max(stop, start + 1)
        ln = length[start:stop]
        m = int(ln.sum())
        # pair i of edge e: a's non-zero number ptr[a_e] + (i - first pair of e), read at b_e's row
        pos = torch.arange(m, device=h.device) + torch.repeat_interleave(
            ptr[a[start:stop]] - (torch.cumsum(ln, 0) - ln), ln, output_size=m)
        other = flat[torch.repeat_interleave(b[start:stop] * h.shape[1], ln, output_size=m) + feat[pos]]
        edge = torch.repeat_interleave(torch.arange(stop - start, device=h.device), ln, output_size=m)
        out[start:stop] = out.new_zeros(stop - start).index_add_(0, edge, val[pos] * other)
        start = stop
    return out


def edge_dot(h: Tensor, edge_index: Tensor, chunk_elements: int = DEFAULT_CHUNK) -> Tensor:
    """Per edge ``(u, v) = edge_index[:, e]``: :math:`\\langle h_u, h_v\\rangle`, equal to
    ``(h[u] * h[v]).sum(1)`` (up to the order of summation) without gathering all rows at once (see the module
    docstring).  Differentiable w.r.t. ``h`` when it requires grad."""
    src, dst = edge_index
    if h.dim() != 2:
        raise ValueError(f"h must be a (nodes, features) matrix, got shape {tuple(h.shape)}")
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be >= 1, got {chunk_elements}")
    needs_grad = h.requires_grad and torch.is_grad_enabled()
    if not needs_grad and h.numel() and torch.count_nonzero(h).item() <= SPARSE_BELOW * h.numel():
        return _sparse_edge_dot(h, src, dst, chunk_elements)
    return _dense_edge_dot(h, src, dst, chunk_elements)


def edge_cosine(h: Tensor, edge_index: Tensor, eps: float = 1e-8, chunk_elements: int = DEFAULT_CHUNK) -> Tensor:
    """Per edge: ``F.cosine_similarity(h[u], h[v], dim=1, eps=eps)``, i.e.
    :math:`h_u^\\top h_v / (\\max(\\|h_u\\|, \\epsilon)\\max(\\|h_v\\|, \\epsilon))`, with rows normalised once per
    node instead of once per edge."""
    hn = h / torch.linalg.vector_norm(h, dim=1, keepdim=True).clamp_min(eps)
    return edge_dot(hn, edge_index, chunk_elements)


def edge_jaccard(x: Tensor, edge_index: Tensor, chunk_elements: int = DEFAULT_CHUNK) -> Tensor:
    """Per edge: the Jaccard similarity :math:`|x_u \\cap x_v| / |x_u \\cup x_v|` of the binarised features
    ``x > 0`` (0 when both rows are empty), in ``x.dtype``; no gradient (a comparison of the features)."""
    xb = (x.detach() > 0).to(x.dtype)
    src, dst = edge_index
    inter = edge_dot(xb, edge_index, chunk_elements)
    count = xb.sum(1)
    return inter / (count[src] + count[dst] - inter).clamp_min(1)
