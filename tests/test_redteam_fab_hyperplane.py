"""Red team: FAB's projection onto a hyperplane in a box (mmrobust/attacks/hyperplane.py) at its edge cases."""

from __future__ import annotations

import pytest
import torch

from mmrobust.attacks.hyperplane import hyperplane_step


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_box_that_cannot_reach_the_hyperplane_gives_its_closest_corner(norm, dtype):
    w = torch.tensor([[1.0, 0.5, -0.25, 0.125], [-0.9, 0.0, 0.0, 0.0]], dtype=dtype)
    c = torch.tensor([10.0, 1.0], dtype=dtype)                      # far beyond what the box allows
    lo = torch.tensor([[-1.0, -1.0, -0.5, -1.0], [-0.5, -1.0, -1.0, -1.0]], dtype=dtype)
    hi = torch.tensor([[1.0, 0.5, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], dtype=dtype)
    d = hyperplane_step(norm, w, c, lo, hi)
    # each coordinate as far towards the hyperplane as the box allows; none along a zero normal component.
    corner = torch.tensor([[1.0, 0.5, -0.5, 1.0], [-0.5, 0.0, 0.0, 0.0]], dtype=dtype)
    assert d.dtype == dtype and torch.equal(d, corner)
    # L1 left the coordinate with the smallest |w| at 0 where every |w| was non-zero, so a one-coordinate
    # row did not move at all
    d1 = hyperplane_step(norm, w[1:, :1], c[1:], lo[1:, :1], hi[1:, :1])
    assert torch.equal(d1, corner[1:, :1])


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_zero_gradient_rows_and_points_on_the_boundary_do_not_move(norm):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 50, generator=g, dtype=torch.float64)
    w[0] = 0.0                                                     # no gradient: nowhere to go
    c = torch.tensor([1.0, 0.0, -0.3], dtype=torch.float64)        # row 1 already on the hyperplane
    lo, hi = -torch.rand(3, 50, generator=g, dtype=torch.float64), torch.rand(3, 50, generator=g, dtype=torch.float64)
    d = hyperplane_step(norm, w, c, lo, hi)
    assert bool(torch.isfinite(d).all()) and bool((d[:2] == 0).all())
    assert abs(float((w[2] * d[2]).sum()) + 0.3) < 1e-12 and bool(((d >= lo) & (d <= hi)).all())
