"""Minimal-norm steps onto a hyperplane inside a box, the projection FAB needs.

For a point ``t`` (flattened, one row per unit), a hyperplane :math:`\\{z : \\langle w, z\\rangle = b\\}` and a
value box :math:`l \\le t + d \\le u`, :func:`hyperplane_step` returns

.. math:: d^* = \\arg\\min_d \\|d\\|_p \\quad\\text{s.t.}\\quad \\langle w, t + d\\rangle = b,\\ l \\le t + d \\le u

for :math:`p \\in \\{\\infty, 2, 1\\}` (Croce & Hein 2020, "Minimally distorted adversarial examples with a
fast adaptive boundary attack", https://arxiv.org/abs/1907.02044, Sec. 3.1, Eq. 3), and where the box
does not reach the hyperplane the box point that gets closest to it (the authors' code does the same).

With :math:`c = b - \\langle w, t\\rangle` and the signs flipped so that :math:`c \\ge 0`, every optimal
:math:`d` moves each coordinate towards the hyperplane, :math:`d_i = \\mathrm{sign}(w_i) m_i` with
:math:`0 \\le m_i \\le \\kappa_i` (:math:`\\kappa_i` the room the box leaves in that direction), and the
problem becomes :math:`\\sum_i |w_i| m_i = c`. Each norm gives a monotone one-parameter family:

* L-inf: :math:`m_i = \\min(\\rho, \\kappa_i)`,
* L2 (KKT): :math:`m_i = \\min(\\lambda |w_i|, \\kappa_i)`,
* L1: fill coordinates in order of decreasing :math:`|w_i|` (the cheapest per unit of progress).

For L-inf and L2 the parameter is found by Newton's method on the piecewise-linear, concave, increasing
:math:`g(\\lambda) = \\sum_i |w_i| m_i(\\lambda)` from :math:`\\lambda = 0`: each step solves
:math:`g = c` on the current segment, never overshoots (the tangent of a concave function lies above it)
and stops exactly when no breakpoint lies between two iterates, i.e. on the segment holding the solution
(a few steps on FAB's hyperplanes, no sort; the sums accumulate in float64). Rows still moving after
``_NEWTON_STEPS`` steps, and L1, read the parameter off the sorted breakpoints with cumulative sums. Both
are exact up to rounding (no bisection). Since every term :math:`|w_i| m_i` is non-negative and they sum
to :math:`c`, :math:`m_i \\le c / |w_i|`; capping :math:`\\kappa_i` there changes no solution and keeps unbounded
boxes finite.
"""

from __future__ import annotations

import torch
from torch import Tensor

NORMS = ("linf", "l2", "l1")
#: Newton steps of the L-inf/L2 solution before the rows still moving fall back to the sorted breakpoints
_NEWTON_STEPS = 16


def hyperplane_step(norm: str, w: Tensor, c: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """The smallest step ``d`` (in ``norm``) with ``<w, d> = c`` and ``lo <= d <= hi``, row-wise.

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        w: ``(units, dim)`` normals of the hyperplanes.
        c: ``(units,)`` required change of ``<w, .>`` (``b - <w, t>``), of either sign.
        lo, hi: ``(units, dim)`` bounds on the step with ``lo <= 0 <= hi`` (``-inf``/``inf`` allowed).

    Returns:
        ``(units, dim)`` steps; where the box cannot reach the hyperplane, the box corner that gets closest.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}")
    s = torch.where(c < 0, -1.0, 1.0).to(w.dtype)[:, None]
    w = w * s
    c = c.abs()
    a = w.abs()
    direction = torch.sign(w)
    room = torch.where(w > 0, hi, -lo).clamp_min(0)
    live = a > 0
    room = torch.where(live, torch.minimum(room, c[:, None] / a.clamp_min(torch.finfo(a.dtype).tiny)),
                       torch.zeros_like(room))
    if norm == "l1":
        m = _greedy_fill(a, room, c)
    else:
        q = torch.ones_like(a) if norm == "linf" else a
        m = _water_fill(a, q, room, c, live)
    return direction * m  # <s w, d> = |c| is <w, d> = c


def _water_fill(a: Tensor, q: Tensor, room: Tensor, c: Tensor, live: Tensor) -> Tensor:
    """``m = min(lam * q, room)`` with the smallest ``lam >= 0`` giving ``sum(a * m) = c`` (``lam = inf`` where
    even ``m = room`` falls short), by Newton's method on ``lam`` (module docstring)."""
    brk = torch.where(live, room / q.clamp_min(torch.finfo(q.dtype).tiny), torch.zeros_like(room))
    ar, aq = (a * room).to(torch.float64), (a * q).to(torch.float64)
    total = ar.sum(1)
    lam = torch.where(total < c, torch.inf, 0.0).to(a.dtype)
    moving = torch.isfinite(lam)
    for _ in range(_NEWTON_STEPS):
        above = brk > lam[:, None]  # the segment of g at ``lam``: g = sum(a room, below) + lam * sum(a q, above)
        on = above.to(torch.float64)
        slope = (on * aq).sum(1)
        new = torch.where(slope > 0, (c - (total - (on * ar).sum(1))) / slope, torch.inf).to(a.dtype)
        new = torch.where(moving, torch.maximum(new, lam), lam)  # g concave: no overshoot (guards rounding)
        # done where no breakpoint lies in (lam, new]: then ``new`` solves g = c on its own segment
        moving = moving & (above & (brk <= new[:, None])).any(1)
        lam = new
        if not bool(moving.any()):
            break
    m = torch.where(brk > lam[:, None], lam[:, None] * q, room)
    if bool(moving.any()):
        rows = moving.nonzero().squeeze(1)
        m[rows] = _water_fill_sorted(a[rows], q[rows], room[rows], c[rows], live[rows])
    return m


def _water_fill_sorted(a: Tensor, q: Tensor, room: Tensor, c: Tensor, live: Tensor) -> Tensor:
    """:func:`_water_fill` from the sorted breakpoints and cumulative sums (the fallback)."""
    brk = torch.where(live, room / q.clamp_min(torch.finfo(q.dtype).tiny), torch.zeros_like(room))
    brk, order = brk.sort(dim=1)
    a_s, q_s, room_s = a.gather(1, order), q.gather(1, order), room.gather(1, order)
    capped = (a_s * room_s).cumsum(1)                       # sum_{j<=k} a_j room_j
    slope = (a_s * q_s).flip(1).cumsum(1).flip(1)           # sum_{j>=k} a_j q_j
    reach = capped + brk * (slope - a_s * q_s)              # g(brk_k)
    k = torch.searchsorted(reach, c[:, None]).squeeze(1)    # first breakpoint with g >= c
    n = a.shape[1]
    feasible = k < n
    kk = k.clamp(max=n - 1)[:, None]
    before = torch.where(kk > 0, capped.gather(1, (kk - 1).clamp_min(0)), torch.zeros_like(kk, dtype=a.dtype))
    lam = (c[:, None] - before) / slope.gather(1, kk).clamp_min(torch.finfo(a.dtype).tiny)
    return torch.where(feasible[:, None], torch.minimum(lam * q, room), room)


def _greedy_fill(a: Tensor, room: Tensor, c: Tensor) -> Tensor:
    """Fill ``m`` up to ``room`` in order of decreasing ``a`` until ``sum(a * m) = c`` (the L1 solution)."""
    a_s, order = a.sort(dim=1, descending=True)
    room_s = room.gather(1, order)
    full = (a_s * room_s).cumsum(1)
    k = torch.searchsorted(full, c[:, None]).squeeze(1)     # first coordinate that completes c
    n = a.shape[1]
    idx = torch.arange(n, device=a.device)[None, :]
    kk = k.clamp(max=n - 1)[:, None]
    before = torch.where(kk > 0, full.gather(1, (kk - 1).clamp_min(0)), torch.zeros_like(kk, dtype=a.dtype))
    partial = ((c[:, None] - before) / a_s.gather(1, kk).clamp_min(torch.finfo(a.dtype).tiny))
    partial = torch.minimum(partial, room_s.gather(1, kk))
    # every coordinate before the completing one is full; where none completes c (the box does not reach the
    # hyperplane, k = n) all of them are: the closest box corner
    m_s = torch.where(idx < k[:, None], room_s, torch.zeros_like(room_s))
    m_s = torch.where((idx == kk) & (k[:, None] < n), partial, m_s)
    return torch.zeros_like(m_s).scatter(1, order, m_s)
