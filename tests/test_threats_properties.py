"""Property-based tests for the norm-ball threat models: inside the budget, inside the value box,
idempotent, and the closest point of the admissible set (checked by the variational inequality
<v - P(v), z - P(v)> <= 0 for admissible z, which characterises the Euclidean projection onto a convex set)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_projection_is_closest
from mmrobust.threats import L1Ball, L2Ball, LinfBall

BALLS = {"linf": LinfBall, "l2": L2Ball, "l1": L1Ball}


@st.composite
def problems(draw):
    kind = draw(st.sampled_from(sorted(BALLS)))
    units = draw(st.integers(1, 4))
    dim = draw(st.integers(1, 40))
    eps = draw(st.floats(1e-3, 5.0))
    boxed = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.floats(0.01, 10.0))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(units, dim, generator=g, dtype=torch.float64)
    v = torch.randn(units, dim, generator=g, dtype=torch.float64) * scale
    threat = BALLS[kind](eps, lower=0.0, upper=1.0) if boxed else BALLS[kind](eps)
    return threat, x, v, g


@settings(max_examples=200, deadline=None)
@given(problems())
def test_projection_is_admissible_and_idempotent(problem):
    threat, x, v, _ = problem
    p = threat.project(v, x)
    assert bool(threat.contains(p, x, atol=1e-9).all())
    if threat.lower is not None:
        assert float((x + p).min()) >= -1e-12 and float((x + p).max()) <= 1 + 1e-12
    assert torch.allclose(threat.project(p, x), p, atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(problems())
def test_projection_is_the_closest_admissible_point(problem):
    threat, x, v, g = problem
    assert_projection_is_closest(threat, v, x, g, draws=8)


@settings(max_examples=100, deadline=None)
@given(problems())
def test_random_init_is_admissible(problem):
    threat, x, _, g = problem
    d = threat.random_init(x, g)
    assert bool(threat.contains(d, x, atol=1e-9).all())


@settings(max_examples=100, deadline=None)
@given(problems())
def test_points_inside_are_fixed(problem):
    threat, x, v, _ = problem
    p = threat.project(v, x) * 0.5  # strictly inside (0 is admissible and the set is convex)
    assert torch.allclose(threat.project(p, x), p, atol=1e-12)


def test_l1_projection_matches_duchi_closed_form():
    # v = (3, 1, 0.2), eps = 2: theta = 1 -> (2, 0, 0)
    p = L1Ball(2.0).project(torch.tensor([[3.0, 1.0, 0.2]]), torch.zeros(1, 3))
    assert torch.allclose(p, torch.tensor([[2.0, 0.0, 0.0]]))
    # ties and signs: v = (-2, 2), eps = 2 -> (-1, 1)
    p = L1Ball(2.0).project(torch.tensor([[-2.0, 2.0]]), torch.zeros(1, 2))
    assert torch.allclose(p, torch.tensor([[-1.0, 1.0]]))


def test_l2_projection_with_active_box_is_not_clip_after_scaling():
    # x at the top of the box in the first coordinate: the ball projection followed by clipping
    # wastes budget; the exact projection re-spends it on the free coordinate.
    x = torch.tensor([[1.0, 0.5]])
    v = torch.tensor([[3.0, 1.0]])
    p = L2Ball(0.5, lower=0.0, upper=1.0).project(v, x)
    assert torch.allclose(p, torch.tensor([[0.0, 0.5]]), atol=1e-6)
    scaled = v * 0.5 / v.norm()
    naive = torch.stack([scaled[:, 0].clamp(-1.0, 0.0), scaled[:, 1].clamp(-0.5, 0.5)], 1)
    assert torch.allclose(naive, torch.tensor([[0.0, 0.5 / 10 ** 0.5]]), atol=1e-6)
    assert float(p.norm()) > float(naive.norm()) + 0.3


@pytest.mark.parametrize("kind", sorted(BALLS))
def test_step_has_the_requested_length(kind):
    threat = BALLS[kind](1.0)
    g = torch.randn(3, 50)
    d = threat.step(torch.zeros(3, 50), g, torch.full((3,), 0.3))
    assert torch.allclose(threat.size(d, torch.zeros(3, 50)), torch.full((3,), 0.3), atol=1e-6)
    assert bool(((d * g) >= 0).all()), "a steepest-ascent step never moves against the gradient"


@pytest.mark.parametrize("kind", sorted(BALLS))
@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bad_budgets_are_refused_with_the_argument_name(kind, bad):
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        BALLS[kind](bad)


def test_box_must_be_ordered():
    with pytest.raises(ValueError, match="lower < upper"):
        LinfBall(0.1, lower=1.0, upper=0.0)


def test_inputs_outside_the_box_or_integer_are_refused():
    with pytest.raises(ValueError, match="above the threat model's upper bound"):
        LinfBall(0.1, lower=0, upper=1).check_input(torch.full((2, 3), 2.0))
    with pytest.raises(TypeError, match="floating-point"):
        LinfBall(0.1).check_input(torch.ones(2, 3, dtype=torch.long))


def test_with_eps_copies():
    a = L2Ball(1.0, lower=0, upper=1)
    b = a.with_eps(2.0)
    assert a.eps == 1.0 and b.eps == 2.0 and b.lower == 0 and isinstance(b, L2Ball)
    assert math.isclose(float(b.radius(torch.zeros(1, 2))[0]), 2.0)
