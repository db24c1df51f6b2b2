"""L-inf, L2 and L1 balls intersected with a value box, with exact Euclidean projections.

For a clean input ``x`` the admissible set is

.. math:: \\Delta(x) = \\{\\delta : \\|\\delta\\|_p \\le r(x),\\ l \\le x + \\delta \\le u\\}.

All projections below return the closest point of :math:`\\Delta(x)` in Euclidean distance (up to
floating-point tolerance), not the common "project onto the ball, then clip" approximation.
"""

from __future__ import annotations

import warnings
from typing import Optional


import torch
from torch import Tensor

from ..errors import check_fraction
from ..utils import rand, randn
from .base import ThreatModel, per_unit

_BISECTION_STEPS = 60


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def l2_norm(v: Tensor) -> Tensor:
    """Row-wise Euclidean norm of a ``(units, d)`` tensor that neither overflows nor underflows.

    ``v.norm()`` squares the entries, so in float32 any entry above ~1.8e19 gives ``inf`` (and a budget
    of ``L2Ball(1e20)`` would project every step to zero); rows whose plain norm is not finite or
    vanishes while the row is not zero are recomputed as ``m * ||v / m||`` with ``m = max |v_i|``.
    """
    n = v.norm(dim=1)
    if not v.numel():
        return n
    bad = ~torch.isfinite(n) | (n == 0)
    if bool(bad.any()):
        m = v.abs().amax(1)
        safe = torch.where((m > 0) & torch.isfinite(m), m, torch.ones_like(m))
        rescaled = (v / safe[:, None]).norm(dim=1) * safe
        n = torch.where(bad & torch.isfinite(m), rescaled, n)
    return n


def _box_bounds(threat: ThreatModel, x: Tensor, flat_shape) -> tuple[Tensor, Tensor]:
    lo, hi = threat.box(x)
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    lo = (-inf).expand(flat_shape) if lo is None else _flat(lo)
    hi = inf.expand(flat_shape) if hi is None else _flat(hi)
    # x itself may sit a hair outside the box; 0 must stay admissible.
    return lo.clamp(max=0), hi.clamp(min=0)


class LinfBall(ThreatModel):
    """:math:`\\|\\delta\\|_\\infty \\le \\epsilon` (Madry et al. 2018, https://arxiv.org/abs/1706.06083).

    Projection onto the ball intersected with the box is coordinate-wise clipping, which is exact
    because both sets are products of intervals.

    Example:
        >>> import torch
        >>> from mmrobust.threats import LinfBall
        >>> threat = LinfBall(8 / 255, lower=0, upper=1)
        >>> x = torch.full((2, 3), 0.5)
        >>> delta = threat.project(torch.full((2, 3), 0.2), x)     # clipped to eps = 8/255 per coordinate
        >>> round(delta.max().item(), 4), tuple(threat.size(delta, x).shape)
        (0.0314, (2,))
    """

    norm = "linf"

    def __init__(self, eps: float, *, lower: Optional[float] = None, upper: Optional[float] = None):
        super().__init__(eps, lower=lower, upper=upper)
        if eps is not None and lower is not None and upper is not None and self.eps > upper - lower:
            hint = f" (did you mean {eps:g}/255 = {self.eps / 255:.4g}?)" if 1 <= self.eps <= 255 else ""
            warnings.warn(f"LinfBall eps={eps:g} exceeds the value box's range [{lower}, {upper}], so every point of "
                          f"the box is allowed and robust accuracy measures nothing; pixel budgets are usually "
                          f"k/255{hint}", UserWarning, stacklevel=2)

    def random_init(self, x, generator=None):
        r = per_unit(self.radius(x), x)
        u = rand(x.shape, generator, x)
        return self.clamp_box((2 * u - 1) * r, x)

    def step(self, delta, grad, step_size):
        return delta + per_unit(step_size, delta) * grad.sign()

    def project(self, delta, x, radius=None):
        r = per_unit(self.radius(x) if radius is None else radius, x)
        delta = torch.maximum(torch.minimum(delta, r), -r)
        return self.clamp_box(delta, x)

    def size(self, delta, x):
        return _flat(delta).abs().amax(1)


class L2Ball(ThreatModel):
    """:math:`\\|\\delta\\|_2 \\le \\epsilon` intersected with the value box.

    The projection solves the KKT conditions of :math:`\\min \\|d - v\\|^2` over ball and box:
    :math:`d = \\mathrm{clip}(v / (1 + \\lambda), l - x, u - x)` with the smallest :math:`\\lambda \\ge 0`
    giving :math:`\\|d\\|_2 \\le \\epsilon`; :math:`\\lambda` is found by bisection where the box is active.

    Example:
        >>> import torch
        >>> from mmrobust.threats import L2Ball
        >>> threat = L2Ball(0.5)
        >>> x = torch.zeros(2, 4)
        >>> delta = threat.project(torch.ones(2, 4), x)          # scaled back onto the sphere of radius 0.5
        >>> threat.size(delta, x)
        tensor([0.5000, 0.5000])
    """

    norm = "l2"

    def random_init(self, x, generator=None):
        flat = _flat(x)
        g = randn(flat.shape, generator, x)
        g = g / l2_norm(g)[:, None].clamp_min(1e-12)
        # uniform in the ball: radius ~ r * U^(1/d)
        u = rand((flat.shape[0], 1), generator, x) ** (1.0 / flat.shape[1])
        delta = (g * u * self.radius(x)[:, None]).reshape(x.shape)
        return self.project(delta, x)

    def step(self, delta, grad, step_size):
        g = _flat(grad)
        g = g / l2_norm(g)[:, None].clamp_min(1e-12)
        return delta + (g * step_size[:, None]).reshape(delta.shape)

    def project(self, delta, x, radius=None):
        r = (self.radius(x) if radius is None else radius).to(delta.dtype)
        v = _flat(delta)
        lo, hi = _box_bounds(self, x, v.shape)
        clipped = torch.maximum(torch.minimum(v, hi), lo)
        norm = l2_norm(clipped)
        active = norm > r
        if not bool(active.any()):
            return clipped.reshape(delta.shape)
        # Scale along v; exact when the box stays inactive after scaling.
        vnorm = l2_norm(v).clamp_min(1e-30)
        t = torch.where(active, r / vnorm, torch.ones_like(r)).clamp(max=1.0)
        scaled = v * t[:, None]
        out = torch.where(active[:, None], scaled, clipped)
        box_hit = active & ((scaled > hi) | (scaled < lo)).any(1)
        if bool(box_hit.any()):
            idx = box_hit.nonzero().squeeze(1)
            vv, ll, hh, rr = v[idx].double(), lo[idx].double(), hi[idx].double(), r[idx].double()
            t_lo = torch.zeros_like(rr)  # feasible side
            t_hi = torch.ones_like(rr)
            for _ in range(_BISECTION_STEPS):
                mid = (t_lo + t_hi) / 2
                nrm = l2_norm(torch.maximum(torch.minimum(vv * mid[:, None], hh), ll))
                feasible = nrm <= rr
                t_lo = torch.where(feasible, mid, t_lo)
                t_hi = torch.where(feasible, t_hi, mid)
            sol = torch.maximum(torch.minimum(vv * t_lo[:, None], hh), ll).to(delta.dtype)
            out = out.index_copy(0, idx, sol)
        return out.reshape(delta.shape)

    def size(self, delta, x):
        return l2_norm(_flat(delta))


class L1Ball(ThreatModel):
    """:math:`\\|\\delta\\|_1 \\le \\epsilon` intersected with the value box.

    Without a box the projection is the sorting method of Duchi et al. 2008 ("Efficient projections
    onto the l1-ball", ICML, Fig. 1): :math:`d_i = \\mathrm{sign}(v_i)\\max(|v_i| - \\theta, 0)` with
    :math:`\\theta` read off the sorted magnitudes. With a box the same soft-thresholding form holds
    with each coordinate capped, :math:`|d_i| = \\min(\\max(|v_i| - \\theta, 0), b_i)`, and the
    monotone :math:`\\theta` is found by bisection.

    The steepest-ascent step moves the ``sparsity`` fraction of coordinates with the largest gradient
    magnitude (as in SLIDE, Tramer & Boneh 2019), normalised to L1 length ``step_size``.

    Example:
        >>> import torch
        >>> from mmrobust.threats import L1Ball
        >>> threat = L1Ball(1.0, lower=0, upper=1)
        >>> x = torch.full((1, 4), 0.5)
        >>> delta = threat.project(torch.tensor([[0.9, 0.3, 0.0, 0.0]]), x)   # L1 projection inside the box
        >>> round(threat.size(delta, x).item(), 4), bool(((x + delta) <= 1).all())
        (0.8, True)
    """

    norm = "l1"

    def __init__(self, eps, *, lower=None, upper=None, sparsity: float = 0.05):
        super().__init__(eps, lower=lower, upper=upper)
        self.sparsity = check_fraction("sparsity", sparsity, open_low=True)

    def random_init(self, x, generator=None):
        flat = _flat(x)
        e = -torch.log(rand(flat.shape, generator, x).clamp_min(1e-12))  # exponential
        sign = torch.where(rand(flat.shape, generator, x) < 0.5, -1.0, 1.0).to(x.dtype)
        d = e * sign
        d = d / d.abs().sum(1, keepdim=True).clamp_min(1e-12)
        u = rand((flat.shape[0], 1), generator, x) ** (1.0 / flat.shape[1])
        return self.project((d * u * self.radius(x)[:, None]).reshape(x.shape), x)

    def step(self, delta, grad, step_size):
        g = _flat(grad)
        k = max(1, int(round(self.sparsity * g.shape[1])))
        thresh = g.abs().topk(k, dim=1).values[:, -1:]
        e = torch.where(g.abs() >= thresh, g.sign(), torch.zeros_like(g))
        e = e / e.abs().sum(1, keepdim=True).clamp_min(1e-12)
        return delta + (e * step_size[:, None]).reshape(delta.shape)

    def project(self, delta, x, radius=None):
        r = (self.radius(x) if radius is None else radius).to(delta.dtype)
        v = _flat(delta)
        if self.lower is None and self.upper is None:
            return _duchi_l1(v, r).reshape(delta.shape)
        lo, hi = _box_bounds(self, x, v.shape)
        cap = torch.where(v >= 0, hi, -lo)  # |d_i| <= cap_i, sign follows v_i
        a = v.abs()
        clipped = torch.minimum(a, cap)
        active = clipped.sum(1) > r
        out = torch.sign(v) * clipped
        if bool(active.any()):
            idx = active.nonzero().squeeze(1)
            aa, cc, rr = a[idx].double(), cap[idx].double(), r[idx].double()
            th_lo = torch.zeros_like(rr)                 # infeasible side
            th_hi = aa.amax(1)                           # feasible (everything zero)
            for _ in range(_BISECTION_STEPS):
                mid = (th_lo + th_hi) / 2
                s = torch.minimum((aa - mid[:, None]).clamp_min(0), cc).sum(1)
                feasible = s <= rr
                th_hi = torch.where(feasible, mid, th_hi)
                th_lo = torch.where(feasible, th_lo, mid)
            mag = torch.minimum((aa - th_hi[:, None]).clamp_min(0), cc).to(delta.dtype)
            out = out.index_copy(0, idx, torch.sign(v[idx]) * mag)
        return out.reshape(delta.shape)

    def size(self, delta, x):
        return _flat(delta).abs().sum(1)


def _duchi_l1(v: Tensor, r: Tensor) -> Tensor:
    """Row-wise Euclidean projection onto the L1 ball of radius ``r`` (Duchi et al. 2008, Fig. 1)."""
    a = v.abs()
    inside = a.sum(1) <= r
    if bool(inside.all()):
        return v
    mu = a.sort(dim=1, descending=True).values
    cssv = mu.cumsum(1) - r[:, None]
    ind = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    cond = (mu - cssv / ind) > 0
    # cond is True on a prefix, so the last True index is (number of True) - 1
    rho = cond.sum(1).clamp_min(1) - 1
    theta = cssv.gather(1, rho[:, None]) / (rho[:, None] + 1).to(v.dtype)
    proj = torch.sign(v) * (a - theta).clamp_min(0)
    return torch.where(inside[:, None], v, proj)
