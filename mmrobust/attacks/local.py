"""Local (targeted) structure attacks on single nodes with Nettack's unnoticeability constraint.

:class:`LocalGreedy` flips, one at a time, the pair ``(t, v)`` incident to the target ``t`` whose relaxed flip
weight has the largest gradient of the target's margin loss (a local GRBCD, Geisler et al. 2021,
https://arxiv.org/abs/2110.14038, Algorithm 2, with a block of all ``N - 1`` pairs of the target), within a
per-node budget ``int(degree * budget_per_degree)`` (at least 1), as in the literature's "budget = degree" setting.

As in Nettack (the authors' ``filter_singletons``, also DeepRobust's), a flip that would remove a node's last edge
(leave the target or its neighbour with degree 0) is never taken (``filter_singletons=True``, the default; such
candidates are skipped, not counted as ``rejected``).

With ``unnoticeable=True`` a flip is only taken if the perturbed graph's degree sequence still passes
Zügner et al. 2018's (Nettack, https://arxiv.org/abs/1805.07984, Sec. 4.1, Eqs. 6-8) power-law likelihood-ratio
test against the clean one, :math:`\\Lambda < \\tau = 0.004`:

.. math:: \\alpha_G = 1 + n \\Big[\\sum_{d_i \\ge d_{min}} \\log d_i - n \\log(d_{min} - \\tfrac12)\\Big]^{-1},\\quad
          l(D, \\alpha) = n \\log\\alpha + n\\alpha \\log d_{min} - (\\alpha + 1)\\sum_{d_i\\ge d_{min}} \\log d_i,

:math:`\\Lambda = -2\\, l(D_{G^0} \\cup D_{G'}, \\alpha_{comb}) + 2\\,(l(D_{G^0}, \\alpha_{G^0}) + l(D_{G'}, \\alpha_{G'}))`,
evaluated for every candidate flip at once (only two degrees change per flip).

With ``features=True`` the attack may also flip the target's binary features (Nettack's direct attack on
structure and features, one shared budget); each step takes the structure or feature flip with the largest
gradient.  With ``unnoticeable=True`` a feature may then only be *added* if it passes Nettack's co-occurrence
test (Sec. 4.1, Eq. 9, as in the authors' code): with :math:`S_t` the target's clean features, :math:`E` the
clean co-occurrence graph of features (two features co-occur if some node has both) and :math:`d_j` the degree
of feature :math:`j` in it, feature :math:`i` is allowed iff

.. math:: \\sum_{j \\in S_t} E_{ij} / d_j > \\tfrac12 \\sum_{j \\in S_t} 1 / d_j ;

removing a feature is always allowed.  Memory ~ ``edges + nodes + features x |S_t|``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..adapters.calls import graph_call
from ..adapters.graph_edges import (AddedEdgeValues, check_added_edge_values, edge_attribute_keys,
                                    perturbed_graph)
from ..errors import NonFiniteError, check_finite_nonneg, check_int, check_positive
from .base import attack_mode


def _powerlaw_stats(log_sum: Tensor, n: Tensor, d_min: float):
    alpha = 1 + n / (log_sum - n * math.log(d_min - 0.5))
    ll = n * torch.log(alpha) + n * alpha * math.log(d_min) - (alpha + 1) * log_sum
    return alpha, ll


def degree_test_statistic(clean_degree: Tensor, degree: Tensor, nodes: Tensor, delta: Tensor,
                          d_min: int = 2) -> Tensor:
    """Nettack's likelihood-ratio statistic :math:`\\Lambda` (Eqs. 6-8) of the degree sequence ``degree`` after
    changing ``degree[nodes[:, k]]`` by ``delta[k]`` (``nodes``: ``(2, K)`` endpoints of ``K`` candidate flips),
    against ``clean_degree``; one value per candidate, in float64 whatever the inputs' dtype: the statistic is a
    difference of log-likelihoods of size ~ ``n log n``, so float32 rounding (~1e-3 relative to 1e4 on Cora) would
    be larger than the test's threshold 0.004."""
    clean_degree, degree, delta = clean_degree.double(), degree.double(), delta.double()

    def contrib(d: Tensor):
        keep = d >= d_min
        return torch.where(keep, torch.log(d.clamp_min(1)), torch.zeros_like(d)), keep.to(d.dtype)

    c_log, c_n = contrib(clean_degree)
    s0, n0 = c_log.sum(), c_n.sum()
    cur_log, cur_n = contrib(degree)
    s, n = cur_log.sum(), cur_n.sum()
    for end in (nodes[0], nodes[1]):
        old_log, old_n = contrib(degree[end])
        new_log, new_n = contrib(degree[end] + delta)
        s = s - old_log + new_log
        n = n - old_n + new_n
    _, ll0 = _powerlaw_stats(s0, n0, d_min)
    _, ll_new = _powerlaw_stats(s, n, d_min)
    _, ll_comb = _powerlaw_stats(s0 + s, n0 + n, d_min)
    return -2 * ll_comb + 2 * (ll0 + ll_new)


def cooccurrence_allowed(x: Tensor, target: int) -> Tensor:
    """Nettack's co-occurrence test (module docstring): which features may be added to node ``target``, from the
    clean binary features ``x``; a ``(F,)`` bool tensor.  Only the columns of the target's features are formed
    (``F x |S_t|``), not the ``F x F`` co-occurrence matrix."""
    xb = (x != 0).double()
    s = xb[target].nonzero().squeeze(1)
    co = (xb.t() @ xb[:, s]) > 0                                     # E[:, S_t]: feature i co-occurs with j
    co[s, torch.arange(s.numel(), device=s.device)] = False          # no self co-occurrence
    inv = 1.0 / (co.sum(0).double() + 1e-8)                          # 1 / d_j (E is symmetric)
    return (co.double() * inv).sum(1) > 0.5 * inv.sum()


@dataclass
class LocalResult:
    """``edge_index``: the perturbed graph; ``flips``: flipped pairs in order; ``budget``: allowed flips;
    ``margins``: the target's classification margin before and after each flip (negative = misclassified);
    ``rejected``: candidates refused by the unnoticeability tests; with ``features=True``: ``x`` the perturbed
    features (else ``None``: unchanged), ``feature_flips`` the flipped ``(target, feature)`` in order and
    ``kinds`` the order of all flips (``"e"`` edge, ``"f"`` feature); ``edge_weight``: the weights of
    ``edge_index`` when the graph has ``data.edge_weight`` (kept edges keep theirs, added edges weigh 1);
    ``graph``: the perturbed graph itself, a shallow copy of the user's ``Data``/``Batch`` whose every per-edge
    attribute follows ``edge_index`` (kept edges keep their rows, added edges get ``added_edge_values``, as
    in :class:`~mmrobust.adapters.graph.GraphAdapter`) and whose ``x`` is the perturbed one with
    ``features=True``; ``edge_attr``: ``graph.edge_attr`` (``None`` when the graph has none).

    Example:
        >>> from mmrobust.attacks import LocalGreedy
        >>> import torch
        >>> from mmrobust.graph.data import toy_graph
        >>> model, data = toy_graph()  # a one-layer GCN on 20 nodes with 14 undirected edges
        >>> result = LocalGreedy(unnoticeable=False)(model, data, target=0, budget=3)
        >>> min(k for k in range(4) if result.misclassified_after(k))  # flips needed to misclassify node 0
        2
        >>> edges, features = result.prefix(2)
        >>> len(edges), features, result.kinds, result.edge_index.shape
        (2, [], 'eee', torch.Size([2, 34]))
        >>> torch.equal(result.graph.edge_index, result.edge_index)  # the whole perturbed graph
        True
    """

    edge_index: Tensor
    flips: List[tuple]
    budget: int
    margins: List[float]
    rejected: int
    x: Optional[Tensor] = None
    feature_flips: List[tuple] = field(default_factory=list)
    kinds: str = ""
    edge_weight: Optional[Tensor] = None
    graph: Any = None

    @property
    def edge_attr(self) -> Optional[Tensor]:
        """The rows of the graph's ``edge_attr`` for ``edge_index`` (``None`` when it has none)."""
        return getattr(self.graph, "edge_attr", None)

    def misclassified_after(self, k: int) -> bool:
        """Whether the target was misclassified after the first ``k`` flips."""
        return self.margins[min(k, len(self.margins) - 1)] < 0

    def prefix(self, k: int) -> Tuple[List[tuple], List[tuple]]:
        """The edge flips and feature flips among the first ``k`` flips."""
        kinds = self.kinds or "e" * len(self.flips)
        e = kinds[:k].count("e")
        return self.flips[:e], self.feature_flips[:min(k, len(kinds)) - e]


class LocalGreedy:
    """Greedy local edge-flip attack on one target node (see the module docstring).

    Args:
        budget_per_degree: flips allowed per unit of the target's degree (``int(deg * x)``, at least 1).
        unnoticeable: enforce Nettack's degree-distribution test (``threshold``, ``d_min``) and, with
            ``features``, its feature co-occurrence test.
        candidates: how many top-gradient candidates to try per step before giving up on the tests.
        features: also flip the target's (binary) features, within the same budget.
        filter_singletons: never remove an edge that is the last one of the target or of its neighbour
            (Nettack's singleton filter); ``False`` allows it.
        added_edge_values: what an added edge holds in the graph's other per-edge attributes (``edge_attr``,
            ``edge_type``, ...), while the attack runs (for a ``forward(data)`` model, which reads them) and in
            the returned ``result.graph``: ``"zeros"`` (default), a mapping ``{name: value}`` or ``"refuse"``
            (raise if the attack added an edge), as :class:`~mmrobust.adapters.graph.GraphAdapter`'s.

    Example:
        >>> from mmrobust.attacks import LocalGreedy
        >>> import torch
        >>> from mmrobust.graph.data import toy_graph
        >>> model, data = toy_graph()  # a one-layer GCN on 20 nodes with 14 undirected edges
        >>> attack = LocalGreedy(unnoticeable=False)  # True: only flips passing Nettack's degree test
        >>> result = attack(model, data, target=0, budget=3)
        >>> result.flips, result.misclassified_after(0), result.misclassified_after(3)
        ([(0, 6), (0, 11), (0, 15)], False, True)
    """

    def __init__(self, budget_per_degree: float = 1.0, *, unnoticeable: bool = True, threshold: float = 0.004,
                 d_min: int = 2, candidates: int = 64, features: bool = False, filter_singletons: bool = True,
                 added_edge_values: AddedEdgeValues = "zeros"):
        self.budget_per_degree = check_positive("budget_per_degree", budget_per_degree)
        self.unnoticeable = bool(unnoticeable)
        self.threshold = check_finite_nonneg("threshold", threshold)
        self.d_min = check_int("d_min", d_min, 1)
        self.candidates = check_int("candidates", candidates, 1)
        self.features = bool(features)
        self.filter_singletons = bool(filter_singletons)
        self.added_edge_values = check_added_edge_values(added_edge_values)

    @staticmethod
    def margin(logits: Tensor, label: int) -> Tensor:
        other = logits.clone()
        other[label] = -math.inf
        return logits[label] - other.max()

    def __call__(self, model: nn.Module, data, target: int, budget: int = None) -> LocalResult:
        n = data.num_nodes
        if not 0 <= int(target) < n:
            raise ValueError(f"target must be a node index in [0, {n - 1}], got {target}")
        t = int(target)
        ei = data.edge_index
        x = data.x
        call = graph_call(model)  # the model's own signature; data.edge_weight weighs the clean edges
        edge_keys = edge_attribute_keys(data)    # edge_attr & co. follow the edges, in the call and the result
        call.edge_keys = [k for k in edge_keys if k != "edge_weight"]
        if self.added_edge_values != "refuse":
            call.forward_edge_values = self.added_edge_values
        clean_w = getattr(data, "edge_weight", None)
        ew = torch.ones(ei.shape[1], dtype=x.dtype, device=x.device) if clean_w is None else clean_w.to(x.dtype)
        if self.features and not bool(((x == 0) | (x == 1)).all()):
            raise ValueError("features=True flips binary features, but data.x has values other than 0 and 1; "
                             "use features=False (structure only) for continuous features")
        if data.y is None or data.y.shape[0] != n:
            raise ValueError(f"LocalGreedy attacks node classification: data.y needs one label per node ({n}), got "
                             f"{None if data.y is None else tuple(data.y.shape)}")
        from torch_geometric.utils import is_undirected

        if not is_undirected(ei, num_nodes=n):   # flips are undirected: a one-way edge would be half-flipped
            raise ValueError("LocalGreedy flips undirected pairs, but data.edge_index is directed; store both "
                             "directions (e.g. torch_geometric.transforms.ToUndirected()) before attacking")
        label = int(data.y[t])
        clean_deg = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(
            0, ei[0], (ei[0] != ei[1]).to(x.dtype))
        if budget is None:
            budget = max(1, int(float(clean_deg[t]) * self.budget_per_degree))
        budget = check_int("budget", budget, 0)
        # candidates: every other node of the target's graph (a Batch holds several; no pair across graphs)
        batch = getattr(data, "batch", None)
        same = torch.ones(n, dtype=torch.bool, device=ei.device) if batch is None else batch.to(ei.device) == batch[t]
        same[t] = False
        others = same.nonzero().squeeze(1)
        adj = torch.zeros(n, dtype=torch.bool, device=ei.device)       # the target's current neighbours
        adj[ei[1][ei[0] == t]] = True
        deg = clean_deg.clone()
        num_f = x.shape[1] if self.features else 0
        if self.features:
            x_t = x[t].clone()                                           # the target's current features
            may_add = cooccurrence_allowed(x, t) if self.unnoticeable else torch.ones_like(x_t, dtype=torch.bool)
        flips, feature_flips, kinds, margins, rejected = [], [], "", [], 0
        with attack_mode(model):
            for step in range(budget + 1):
                p = torch.zeros(others.numel() + num_f, dtype=x.dtype, device=x.device, requires_grad=True)
                exists = adj[others]
                # relaxed flip of every pair (t, v): existing edges lose weight p, missing ones gain weight p
                sign = torch.where(exists, -1.0, 1.0).to(x.dtype)
                w_out, w_in = _pair_weights(ei, ew, t, n, others)  # removing (t, v) takes its own weight away
                row = torch.cat([ei[0], torch.full_like(others, t), others])
                col = torch.cat([ei[1], others, torch.full_like(others, t)])
                pe = p[: others.numel()]
                w = torch.cat([ew, sign * pe * w_out, sign * pe * w_in])
                x_in = x
                if self.features:                                        # relaxed flip of each target feature
                    x_in = x.index_copy(0, torch.tensor([t], device=x.device), (x_t + (1 - 2 * x_t) * p[-num_f:])[None])
                m = self.margin(call(data, x_in, torch.stack([row, col]), w, None)[t], label)
                margins.append(float(m.detach()))
                if step == budget:
                    break
                (score,) = torch.autograd.grad(-m, [p])
                if not bool(torch.isfinite(score).all()):  # NaN would rank last: no flip, a silent failure
                    raise NonFiniteError("NaN/Inf in the gradient of the relaxed flips; the model overflows or its "
                                         "backward is undefined at these edge weights")
                done = torch.zeros_like(score, dtype=torch.bool)
                for a, b in flips:
                    done[: others.numel()] |= others == (b if a == t else a)
                for _, j in feature_flips:
                    done[others.numel() + j] = True
                if self.filter_singletons:                               # Nettack: no removal of a last edge
                    done[: others.numel()] |= exists & ((deg[others] <= 1) | (deg[t] <= 1))
                score[done] = -math.inf                                  # never flip anything back
                order = torch.argsort(score, descending=True)[: self.candidates]
                order = order[torch.isfinite(score[order])]
                if self.unnoticeable:
                    ok = torch.ones_like(order, dtype=torch.bool)
                    is_edge = order < others.numel()
                    e = order[is_edge]
                    delta = torch.where(exists[e], -1.0, 1.0).to(x.dtype)
                    nodes = torch.stack([torch.full_like(others[e], t), others[e]])
                    ok[is_edge] = degree_test_statistic(clean_deg, deg, nodes, delta, self.d_min) < self.threshold
                    if self.features:
                        f = order[~is_edge] - others.numel()
                        ok[~is_edge] = (x_t[f] != 0) | may_add[f]           # removals always pass
                    rejected += int(ok.nonzero()[0, 0]) if bool(ok.any()) else int(order.numel())
                    order = order[ok]
                if order.numel() == 0:
                    break
                k = int(order[0])
                if k >= others.numel():
                    j = k - others.numel()
                    x_t[j] = 1 - x_t[j]
                    feature_flips.append((t, j))
                    kinds += "f"
                    continue
                v = int(others[k])
                d = -1.0 if bool(exists[k]) else 1.0
                deg[t] += d
                deg[v] += d
                adj[v] = not bool(exists[k])
                ei, ew = _flip(ei, ew, t, v, add=d > 0)
                flips.append((min(t, v), max(t, v)))
                kinds += "e"
        x_out = x.index_copy(0, torch.tensor([t], device=x.device), x_t[None]) if self.features else None
        graph = perturbed_graph(data, ei, None if clean_w is None else ew.to(clean_w.dtype),
                                added_edge_values=self.added_edge_values, edge_keys=edge_keys, owner="LocalGreedy")
        if x_out is not None:
            graph.x = x_out
        # a Batch's edges are regrouped by graph: edge_index and edge_weight are the graph's, in its order
        return LocalResult(graph.edge_index, flips, budget, margins, rejected, x_out, feature_flips, kinds,
                           getattr(graph, "edge_weight", None) if clean_w is not None else None, graph)


def _pair_weights(edge_index: Tensor, weight: Tensor, t: int, n: int, others: Tensor) -> Tuple[Tensor, Tensor]:
    """Weights of the edges ``(t, v)`` and ``(v, t)`` for every ``v`` in ``others`` (1 where there is none)."""
    r, c = edge_index
    w_out = torch.ones(n, dtype=weight.dtype, device=weight.device)
    w_in = torch.ones(n, dtype=weight.dtype, device=weight.device)
    w_out[c[r == t]] = weight[r == t]
    w_in[r[c == t]] = weight[c == t]
    return w_out[others], w_in[others]


def _flip(edge_index: Tensor, weight: Tensor, a: int, b: int, add: bool) -> Tuple[Tensor, Tensor]:
    if add:
        extra = torch.tensor([[a, b], [b, a]], dtype=edge_index.dtype, device=edge_index.device)
        return torch.cat([edge_index, extra], 1), torch.cat([weight, weight.new_ones(2)])
    r, c = edge_index
    drop = ((r == a) & (c == b)) | ((r == b) & (c == a))
    return edge_index[:, ~drop], weight[~drop]


__all__ = ["LocalGreedy", "LocalResult", "cooccurrence_allowed", "degree_test_statistic"]
