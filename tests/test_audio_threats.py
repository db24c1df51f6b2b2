"""Property tests for the audio budgets (SNRBall, PeakDBBall): inside the dB budget and the [-1, 1] box,
idempotent, and the closest admissible point (variational inequality <v - P(v), z - P(v)> <= 0 for
admissible z, which characterises the Euclidean projection onto a convex set)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmrobust.threats import PeakDBBall, SNRBall, db_x, snr_db


@st.composite
def problems(draw):
    kind = draw(st.sampled_from(["snr", "peak"]))
    level = draw(st.floats(-10.0, 60.0)) if kind == "snr" else draw(st.floats(-60.0, 10.0))
    units, dim = draw(st.integers(1, 4)), draw(st.integers(1, 64))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = (torch.rand(units, dim, generator=g, dtype=torch.float64) * 2 - 1) * draw(st.floats(0.05, 1.0))
    v = torch.randn(units, dim, generator=g, dtype=torch.float64) * draw(st.floats(1e-3, 3.0))
    return (SNRBall(level) if kind == "snr" else PeakDBBall(level)), x, v, g


@settings(max_examples=150, deadline=None)
@given(problems())
def test_projection_keeps_the_db_budget_box_and_is_idempotent(problem):
    threat, x, v, _ = problem
    p = threat.project(v, x)
    assert bool(((x + p).abs() <= 1 + 1e-9).all())
    if isinstance(threat, SNRBall):
        assert bool((snr_db(p, x) >= threat.snr_db - 1e-6).all())
    else:
        assert bool((db_x(p, x) <= threat.db + 1e-6).all())
    assert torch.allclose(threat.project(p, x), p, atol=1e-9)
    sizes = threat.extra_sizes(p, x)
    assert set(sizes) == {"snr_db", "db_x"} and sizes["snr_db"].shape == (x.shape[0],)


@settings(max_examples=100, deadline=None)
@given(problems())
def test_projection_is_the_closest_admissible_point(problem):
    threat, x, v, g = problem
    p = threat.project(v, x)
    for _ in range(5):
        z = threat.random_init(x, g)
        inner = ((v - p) * (z - p)).sum(1)
        assert bool((inner <= 1e-7 * (1 + v.abs().sum(1))).all())
