"""Candidate node pairs for edge attacks, without materialising ``nodes^2`` of them.

A pair is stored by its *key* ``row * N + col`` (``row < col``, global node indices).  The candidates an
:class:`~mmrobust.threats.graph.EdgeFlips` threat allows are enumerated by their linear index among the
upper-triangular pairs of each graph (or among the pairs incident to a target for local attacks), so a
random block of them is drawn in ``O(block)`` (:class:`CandidatePairs`).  :class:`EdgeLookup` matches keys
to the clean edges once per block, and :class:`EdgeBlock` turns relaxed flip weights on a block into the
weighted perturbed edge list (Geisler et al. 2021, Eq. 2) or flips a discrete subset of it.  The
selection helpers (:func:`rank_within_unit`, :func:`greedy_flips`, :func:`limit_node_flips`) pick flips per
graph within the budget and the per-node limit.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

#: relaxed weights are kept in ``[EPS, 1 - EPS]``; entries at ``EPS`` count as "not flipped"
EPS = 1e-7


def _triu_decode(lin: Tensor, n: Tensor) -> Tuple[Tensor, Tensor]:
    """Row and column (row < col) of the ``lin``-th upper-triangular pair of an ``n``-node graph.

    Inverse of :math:`k(i, j) = i n - i(i+1)/2 + j - i - 1` (the encoding PyG's ``PRBCDAttack`` uses).
    """
    lf, nf = lin.double(), n.double()
    row = (nf - 2 - torch.floor(torch.sqrt(-8 * lf + 4 * nf * (nf - 1) - 7) / 2 - 0.5)).long()
    col = lin + row + 1 - n * (n - 1) // 2 + (n - row) * ((n - row) - 1) // 2
    return row, col


class CandidatePairs:
    """The node pairs an :class:`EdgeFlips` threat lets flip, enumerated without materialising them.

    Global: all pairs of distinct nodes inside each graph.  Local: all pairs ``(t, v)``, ``v != t``,
    for the target nodes ``t`` (pairs of two targets are merged when decoded).
    """

    def __init__(self, graph: GraphStructure, local: bool):
        device = graph.edge_index.device
        sizes = graph.ptr[1:] - graph.ptr[:-1]
        self.num_nodes = graph.num_nodes
        self.local = local
        if local:
            if graph.targets is None:
                raise ValueError("local edge flips need target nodes (node classification with a mask)")
            self.anchor = graph.targets
            self.seg_unit = graph.node_unit[graph.targets]
            self.seg_n = sizes[self.seg_unit]
            counts = self.seg_n - 1
        else:
            self.seg_unit = torch.arange(sizes.numel(), device=device)
            self.seg_n = sizes
            counts = sizes * (sizes - 1) // 2
        self.seg_offset = graph.ptr[:-1][self.seg_unit]
        self.cum = torch.cumsum(counts, 0)
        self.total = int(self.cum[-1]) if self.cum.numel() else 0
        self.per_unit = torch.zeros(sizes.numel(), dtype=torch.long, device=device).index_add_(
            0, self.seg_unit, counts)
        self.node_unit = graph.node_unit

    def sample(self, k: int, generator: Optional[torch.Generator], device, unique: bool = True) -> Tensor:
        """``k`` random candidates as pair keys ``row * N + col`` (row < col), sorted and unique if ``unique``."""
        if generator is not None and generator.device != torch.device(device):
            lin = torch.randint(self.total, (k,), generator=generator).to(device)
        else:
            lin = torch.randint(self.total, (k,), generator=generator, device=device)
        seg = torch.searchsorted(self.cum, lin, right=True)
        start = torch.where(seg > 0, self.cum[(seg - 1).clamp_min(0)], torch.zeros_like(seg))
        off = lin - start
        base = self.seg_offset[seg]
        if self.local:
            a = self.anchor[seg]
            local_a = a - base
            v = base + off + (off >= local_a).long()
            row, col = torch.minimum(a, v), torch.maximum(a, v)
        else:
            r, c = _triu_decode(off, self.seg_n[seg])
            row, col = base + r, base + c
        keys = row * self.num_nodes + col
        return torch.unique(keys) if unique else keys

    def decode(self, keys: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        row, col = keys // self.num_nodes, keys % self.num_nodes
        return row, col, self.node_unit[row]


class EdgeLookup:
    """Matches candidate pair keys to the (both-direction) positions of clean edges."""

    def __init__(self, edge_index: Tensor, num_nodes: int):
        row, col = edge_index
        keys = torch.minimum(row, col) * num_nodes + torch.maximum(row, col)
        keys = torch.where(row == col, torch.full_like(keys, -1), keys)  # self loops never match
        self.sorted, self.perm = torch.sort(keys)

    def match(self, keys: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``exists`` per key and the edge positions ``(key_idx, edge_pos)`` of every matching direction."""
        lo = torch.searchsorted(self.sorted, keys, side="left")
        hi = torch.searchsorted(self.sorted, keys, side="right")
        count = hi - lo
        key_idx = torch.arange(keys.numel(), device=keys.device).repeat_interleave(count)
        within = torch.arange(key_idx.numel(), device=keys.device) - torch.repeat_interleave(
            torch.cumsum(count, 0) - count, count)
        edge_pos = self.perm[lo[key_idx] + within]
        return count > 0, key_idx, edge_pos


class EdgeBlock:
    """A block of candidate pairs with relaxed flip weights, and the perturbed weighted graph."""

    def __init__(self, keys: Tensor, weights: Tensor, pairs: CandidatePairs, lookup: EdgeLookup):
        self.keys = keys
        self.weights = weights
        self.row, self.col, self.unit = pairs.decode(keys)
        self.exists, self.key_idx, self.edge_pos = lookup.match(keys)

    def perturbed(self, edge_index: Tensor, edge_weight: Tensor, p: Tensor) -> Tuple[Tensor, Tensor]:
        """``A + (1 - 2A) * P`` as an edge list (Geisler et al. 2021, Eq. 2)."""
        mod = torch.zeros_like(edge_weight).index_add(0, self.edge_pos, p[self.key_idx])
        new = ~self.exists
        r, c, pn = self.row[new], self.col[new], p[new]
        ei = torch.cat([edge_index, torch.stack([r, c]), torch.stack([c, r])], 1)
        return ei, torch.cat([edge_weight * (1 - mod), pn, pn])

    def flip(self, edge_index: Tensor, edge_weight: Tensor, chosen: Tensor) -> Tuple[Tensor, Tensor]:
        """The discrete graph with the block entries ``chosen`` (bool) flipped."""
        drop = torch.zeros(edge_index.shape[1], dtype=torch.bool, device=edge_index.device)
        drop[self.edge_pos[chosen[self.key_idx]]] = True
        add = chosen & ~self.exists
        r, c = self.row[add], self.col[add]
        ei = torch.cat([edge_index[:, ~drop], torch.stack([r, c]), torch.stack([c, r])], 1)
        ones = torch.ones(2 * r.numel(), dtype=edge_weight.dtype, device=edge_weight.device)
        return ei, torch.cat([edge_weight[~drop], ones])


def rank_within_unit(score: Tensor, unit: Tensor, num_units: int) -> Tensor:
    """Rank (0 = largest ``score``) of every entry among the entries of its unit."""
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(unit[order], stable=True)]
    counts = torch.bincount(unit, minlength=num_units)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device) - starts[unit[order]]
    return rank


def limit_node_flips(chosen: Tensor, score: Tensor, row: Tensor, col: Tensor, limit: int,
                     used_before: Optional[Tensor] = None) -> Tensor:
    """Greedily keep the highest-score chosen flips such that no node takes part in more than ``limit``
    (counting ``used_before[node]`` earlier flips)."""
    idx = chosen.nonzero().squeeze(1)
    order = idx[torch.argsort(score[idx], descending=True)]
    used = None if used_before is None else used_before.clone()
    num_nodes = int(torch.cat([row, col]).max()) + 1 if row.numel() else 0
    return greedy_flips(order, row, col, torch.zeros_like(row), torch.tensor([idx.numel()]), limit, used,
                        num_nodes=num_nodes)


def greedy_flips(order: Tensor, row: Tensor, col: Tensor, unit: Tensor, quota: Tensor, limit: Optional[int],
                 used: Optional[Tensor] = None, num_nodes: Optional[int] = None) -> Tensor:
    """Walk the candidates in ``order`` and take each one whose unit has taken fewer than ``quota[unit]`` and
    whose two nodes take part in fewer than ``limit`` flips (``used[node]`` counts earlier ones and is
    updated in place).  Returns the taken candidates as a mask over ``row``."""
    if used is None:
        used = torch.zeros(int(num_nodes), dtype=torch.long)
    left = quota.tolist()
    taken = [0] * len(left)
    keep = torch.zeros(row.numel(), dtype=torch.bool)
    u_list = used.tolist() if limit is not None else None
    remaining = sum(max(q, 0) for q in left)
    for i, r, c, g in zip(order.tolist(), row[order].tolist(), col[order].tolist(), unit[order].tolist()):
        if remaining == 0:
            break
        if taken[g] >= left[g]:
            continue
        if u_list is not None:
            if u_list[r] >= limit or u_list[c] >= limit:
                continue
            u_list[r] += 1
            u_list[c] += 1
        taken[g] += 1
        remaining -= 1
        keep[i] = True
    if u_list is not None:
        used.copy_(torch.tensor(u_list, dtype=used.dtype))
    return keep.to(row.device)
