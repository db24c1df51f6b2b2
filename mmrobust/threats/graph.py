"""Threat models for graphs: edge flips (structure) and feature balls (node features).

Edge perturbations are flips of undirected node pairs: adding a missing edge or deleting an existing
one both count as one flip.  Attacks optimise a *relaxed* flip probability ``p`` in ``[0, 1]`` per
candidate pair (Geisler et al. 2021, https://arxiv.org/abs/2110.14038, Sec. 3) whose admissible set is

.. math:: \\mathcal{P} = \\{p \\in [0, 1]^B : \\textstyle\\sum_b p_b \\le \\Delta\\}

per unit (graph), and sample a discrete set of at most :math:`\\Delta` flips at the end.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Optional

import torch
from torch import Tensor

from ..errors import check_finite_nonneg, check_fraction, check_int
from .base import ThreatModel, check_scale
from .norms import L1Ball, L2Ball, LinfBall

_BISECTION_STEPS = 60
_BISECTION_TOL = 1e-7   # on the shift mu; the returned point is always feasible (hi side)


def project_capped_simplex(values: Tensor, segment: Tensor, budget: Tensor, num_segments: int) -> Tensor:
    """Project ``values`` onto ``{0 <= p <= 1, sum_{b in segment s} p_b <= budget_s}`` per segment.

    Geisler et al. 2021, Eq. 5: :math:`\\Pi(v) = \\mathrm{clip}_{[0,1]}(v - \\mu)` with
    :math:`\\mu = 0` if the clipped mass fits the budget, else the root of
    :math:`\\sum_b \\mathrm{clip}_{[0,1]}(v_b - \\mu) = \\Delta`, found by bisection (monotone in
    :math:`\\mu`).  ``segment`` maps each entry to its unit; ``budget`` is per unit.
    """
    budget = budget.to(values.dtype)
    clipped = values.clamp(0, 1)
    mass = torch.zeros(num_segments, dtype=values.dtype, device=values.device).index_add(0, segment, clipped)
    over = mass > budget
    if not bool(over.any()):
        return clipped
    v = values.double()
    b = budget.double()
    single = num_segments == 1  # plain reductions are much faster than scatters for one graph
    if single:
        lo, hi = (v.min() - 1).clamp_max(0).reshape(1), v.max().clamp_min(0).reshape(1)
    else:
        lo = torch.full((num_segments,), float("inf"), dtype=v.dtype, device=v.device).scatter_reduce(
            0, segment, v, reduce="amin", include_self=True)
        hi = torch.full((num_segments,), float("-inf"), dtype=v.dtype, device=v.device).scatter_reduce(
            0, segment, v, reduce="amax", include_self=True)
        lo, hi = (lo - 1).clamp_max(0), hi.clamp_min(0)   # lo: everything at 1 (infeasible), hi: all zero
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        if single:
            s = (v - mid).clamp(0, 1).sum().reshape(1)
        else:
            s = torch.zeros_like(mid).index_add(0, segment, (v - mid[segment]).clamp(0, 1))
        feasible = s <= b
        hi = torch.where(feasible, mid, hi)
        lo = torch.where(feasible, lo, mid)
        if bool(((hi - lo) < _BISECTION_TOL).all()):
            break
    mu = torch.where(over, hi, torch.zeros_like(hi))
    return (v - mu[segment]).clamp(0, 1).to(values.dtype)


class EdgeFlips(ThreatModel):
    """Flip at most ``budget`` undirected node pairs per graph (add or delete edges).

    Zügner et al. 2018 (Nettack, https://arxiv.org/abs/1805.07984) and Geisler et al. 2021
    (https://arxiv.org/abs/2110.14038): :math:`\\|A' - A\\|_0 / 2 \\le \\Delta` for a symmetric
    adjacency :math:`A`; graphs stay undirected and never gain self loops.

    Args:
        budget: an ``int`` is an absolute number of flipped undirected pairs per graph; a ``float`` in
            ``[0, 1]`` is a fraction of the graph's undirected edges, ``int(budget * num_edges / 2)`` for a
            graph whose ``edge_index`` holds both directions (the convention of PyG's ``PRBCDAttack``).
            For local attacks the fraction is taken of the targets' summed degree instead.
        local: only pairs incident to a target node (the scored nodes, e.g. ``mask="test"`` or the
            adapter's ``target_nodes``) may flip (a local / targeted attack); otherwise any pair of
            nodes in the same graph (a global attack).
        max_flips_per_node: optional limit on flips incident to any one node (degree-change limit, as
            Zügner et al.'s unnoticeability constraints); enforced when the discrete flips are chosen.

    The relaxed operations (``random_init``/``step``/``project``/``size``) act on a dense
    ``(units, candidates)`` flip-probability tensor; attacks use the segmented
    :func:`project_capped_simplex` on the sparse block of candidate pairs.

    Example:
        >>> import torch
        >>> from mmrobust.threats import EdgeFlips
        >>> threat = EdgeFlips(0.1)                       # 10 % of each graph's undirected edges
        >>> threat, threat.flips_allowed(torch.tensor([25, 9]))
        (EdgeFlips(10% of edges), tensor([2, 0]))
        >>> EdgeFlips(3, local=True).scaled(0.5)          # floor(0.5 * 3) flips next to the targets
        EdgeFlips(3, scale=0.5, local)
    """

    norm = "edge_flips"

    def __init__(self, budget, *, local: bool = False, max_flips_per_node: Optional[int] = None):
        if isinstance(budget, bool) or not isinstance(budget, Real):
            raise TypeError(f"budget must be an int (number of flipped pairs) or a float in [0, 1] (fraction of "
                            f"edges), got {type(budget).__name__} ({budget!r})")
        super().__init__(None)
        #: an absolute number of flips per graph, or ``None`` for a fractional budget
        self.count: Optional[int] = None
        #: a fraction of each graph's undirected edges (or the targets' degree), or ``None``
        self.fraction: Optional[float] = None
        if isinstance(budget, Integral):
            self.count = check_int("budget", int(budget), 0)
        else:
            self.fraction = check_fraction("budget", float(budget))
        #: the factor :meth:`scaled` applied: ``floor(scale * count)`` or ``floor(scale * fraction * edges)`` flips
        self.scale = 1.0
        self.local = bool(local)
        self.max_flips_per_node = (None if max_flips_per_node is None
                                   else check_int("max_flips_per_node", max_flips_per_node, 1))

    @property
    def eps(self):
        raise AttributeError("EdgeFlips has no `eps`: its budget is `count` (flips per graph) or `fraction` (of the "
                             "graph's edges), times `scale`; use flips_allowed(edges) for the number of flips and "
                             ".scaled(f) for f times the budget")

    def with_eps(self, eps):
        raise TypeError("EdgeFlips has no radius `eps`; build EdgeFlips(count or fraction, ...) for another budget "
                        "or use .scaled(f) for f times this one")

    def with_budget(self, budget) -> "EdgeFlips":
        """The same constraints (``local``, ``max_flips_per_node``) at another budget: an ``int`` count or a
        ``float`` fraction of edges, unscaled (budget sweeps)."""
        return EdgeFlips(budget, local=self.local, max_flips_per_node=self.max_flips_per_node)

    @property
    def budget_name(self) -> str:
        return "edge flips per graph" if self.count is not None else "edge budget (fraction of edges)"

    def scaled(self, factor: float) -> "EdgeFlips":
        """``factor`` times the budget: ``floor(factor * count)`` flips, or ``floor(factor * fraction * edges)``."""
        return self._copy(scale=self.scale * check_scale(factor))

    def flips_allowed(self, num_undirected_edges: Tensor) -> Tensor:
        """Per-unit number of allowed flips given each unit's number of distinct undirected edges (or the
        targets' degree for local attacks): ``floor(scale * count)`` or ``floor(scale * fraction * edges)``."""
        m = torch.as_tensor(num_undirected_edges)
        if self.count is not None:
            return torch.full_like(m, _floor(self.count * self.scale), dtype=torch.long)
        # the small tolerance keeps e.g. 0.05 * 5278 = 263.9 -> 263 exact like int(...) in PyG
        return torch.floor(m.double() * (self.fraction * self.scale) * (1 + 1e-12) + 1e-9).long()

    def check_input(self, x, name="edges"):  # structure has no value box
        return None

    # -- relaxed operations on a dense (units, candidates) layout ----------------------------------
    def radius(self, x: Tensor) -> Tensor:
        if self.count is None:
            raise ValueError("a fractional edge budget needs the graph's edge count; use flips_allowed()")
        return torch.full((x.shape[0],), float(_floor(self.count * self.scale)), dtype=x.dtype, device=x.device)

    def random_init(self, x, generator=None):
        return torch.zeros_like(x)

    def step(self, delta, grad, step_size):
        return delta + step_size.reshape(-1, *([1] * (delta.dim() - 1))) * grad

    def project(self, delta, x, radius=None):
        r = self.radius(x) if radius is None else radius
        flat = delta.reshape(delta.shape[0], -1)
        seg = torch.arange(flat.shape[0], device=delta.device).repeat_interleave(flat.shape[1])
        return project_capped_simplex(flat.reshape(-1), seg, r, flat.shape[0]).reshape(delta.shape)

    def size(self, delta, x):
        return delta.reshape(delta.shape[0], -1).abs().sum(1)

    def describe(self) -> str:
        b = f"{self.count}" if self.count is not None else f"{self.fraction:.0%} of edges"
        extra = f", scale={self.scale:g}" if self.scale != 1.0 else ""
        extra += ", local" if self.local else ""
        extra += f", max_flips_per_node={self.max_flips_per_node}" if self.max_flips_per_node else ""
        return f"EdgeFlips({b}{extra})"

    __repr__ = describe


def _floor(value: float) -> int:
    """``floor`` that keeps products such as ``10 * 0.7 = 7.000000000000001`` or ``0.3 * 10`` at the count meant."""
    return int(math.floor(value * (1 + 1e-12) + 1e-9))


def undirected_pairs(edge_index: Tensor) -> Tensor:
    """The distinct undirected non-loop pairs of ``edge_index`` as a ``(2, P)`` tensor with row < col.

    Duplicate edges and both directions of an edge count once: this is the edge count fractional
    :class:`EdgeFlips` budgets are taken of, and the set flips are measured against.
    """
    row, col = edge_index
    keep = row != col
    lo, hi = torch.minimum(row[keep], col[keep]), torch.maximum(row[keep], col[keep])
    return torch.unique(torch.stack([lo, hi]), dim=1)


def count_undirected_edges(edge_index: Tensor, node_unit: Tensor, num_units: int) -> Tensor:
    """Per unit (graph), the number of distinct undirected non-loop edges."""
    pairs = undirected_pairs(edge_index)
    return torch.zeros(num_units, dtype=torch.long, device=edge_index.device).index_add_(
        0, node_unit[pairs[0]], torch.ones(pairs.shape[1], dtype=torch.long, device=edge_index.device))


class BinaryFeatureFlips(L1Ball):
    """Flip at most ``eps`` entries of binary (bag-of-words) node features per unit.

    Relaxation as in Xu et al. 2019 (https://arxiv.org/abs/1906.04214) and Zügner et al. 2018: with
    :math:`x \\in \\{0,1\\}^d`, the set :math:`\\{\\delta : x + \\delta \\in [0,1]^d, \\|\\delta\\|_1 \\le k\\}`
    is the convex hull of the flips of at most :math:`k` bits, so the exact L1-ball-in-box projection of
    :class:`~mmrobust.threats.L1Ball` is the exact projection of the relaxed problem.  Gradient attacks
    optimise the relaxation; :meth:`discretize` rounds it to at most :math:`k` real bit flips (the
    largest relaxed flips above 1/2).

    Example:
        >>> import torch
        >>> from mmrobust.threats import BinaryFeatureFlips
        >>> threat = BinaryFeatureFlips(2)                # at most two bit flips per unit
        >>> x = torch.tensor([[0., 1., 0., 1., 1.]])
        >>> relaxed = torch.tensor([[0.9, -0.6, 0.3, 0.0, -0.2]])
        >>> x + threat.discretize(relaxed, x)             # the two largest relaxed flips (>= 1/2) become real ones
        tensor([[1., 0., 0., 1., 1.]])
    """

    norm = "bit_flips"

    def __init__(self, eps, *, sparsity: float = 0.05):
        super().__init__(eps, lower=0.0, upper=1.0, sparsity=sparsity)

    def check_input(self, x, name="x"):
        super().check_input(x, name)
        if not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(f"{name} must be binary (0/1) for BinaryFeatureFlips; use FeatureBall(norm='linf' "
                             "or 'l2') for real-valued features")

    def discretize(self, delta: Tensor, x: Tensor) -> Tensor:
        """At most ``eps`` whole bit flips per unit: the largest relaxed flips with magnitude >= 1/2."""
        flat = delta.reshape(delta.shape[0], -1).abs()
        k = min(int(math.floor(self.eps + 1e-9)), flat.shape[1])
        keep = torch.zeros_like(flat, dtype=torch.bool)
        if k > 0:
            top = flat.topk(k, dim=1)
            keep.scatter_(1, top.indices, top.values >= 0.5)
        xf = x.reshape(x.shape[0], -1)
        return torch.where(keep, 1 - 2 * xf, torch.zeros_like(xf)).reshape(x.shape)


def feature_ball(eps: float, norm: str = "linf", *, lower: Optional[float] = None,
                 upper: Optional[float] = None) -> ThreatModel:
    """Node-feature threat model: ``norm="linf"`` / ``"l2"`` (the core balls, with an optional value box)
    or ``"bits"`` (:class:`BinaryFeatureFlips`, ``eps`` = number of flipped bits per graph).

    Budgets are per unit (one graph; for a :class:`~torch_geometric.data.Batch` per graph). A function that
    picks a threat model class, hence the snake_case name; ``FeatureBall`` is its earlier name (an alias).
    """
    check_finite_nonneg("eps", eps)
    if norm == "linf":
        return LinfBall(eps, lower=lower, upper=upper)
    if norm == "l2":
        return L2Ball(eps, lower=lower, upper=upper)
    if norm == "bits":
        if lower not in (None, 0, 0.0) or upper not in (None, 1, 1.0):
            raise ValueError("norm='bits' works on binary features in [0, 1]; leave lower/upper unset")
        return BinaryFeatureFlips(eps)
    raise ValueError(f"norm must be one of ['bits', 'l2', 'linf'], got {norm!r}")


#: the earlier, class-like name of :func:`feature_ball` (kept so that user code and recipes keep working)
FeatureBall = feature_ball
