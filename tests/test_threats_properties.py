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


@pytest.mark.parametrize("kind", [LinfBall, L2Ball, L1Ball])
def test_small_perturbations_keep_their_value_where_the_box_is_not_active(kind):
    """(x + d).clamp() - x rounds d (1e-5 at x = 0.5 in float32 is off by about 1e-2 relative); only entries the
    box moves may change."""
    x = torch.full((2, 8), 0.5)
    d = torch.full((2, 8), 1e-5)
    d[1, 0] = 0.7                                 # leaves the box [0, 1]: clamped to 1 - x
    threat = kind(1.0, lower=0, upper=1)
    out = threat.clamp_box(d, x)
    assert torch.equal(out[0], d[0]) and torch.equal(out[1, 1:], d[1, 1:])
    assert float(x[1, 0] + out[1, 0]) <= 1.0
    assert torch.equal(threat.project(d[:1], x[:1]), d[:1])  # inside the ball and the box: unchanged


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


# -- every attack x every threat model: returned points inside budget and box -------------------------
# Measured with mmrobust.threats.verify (norms recomputed from the clean and returned inputs, not the
# attack's size()) and, for the norm balls, once more right here.
def _attacks(threat, early_stop, seed):
    from mmrobust.attacks import APGD, APGDT, FGSM, FGSMRS, FMN, PGD, Square

    image = threat.norm in ("linf", "l2")
    return {
        "FGSM": lambda: FGSM(threat, seed=seed),
        "FGSMRS": lambda: FGSMRS(threat, seed=seed) if threat.norm == "linf" else None,
        "PGD": lambda: PGD(threat, steps=4, restarts=2, seed=seed, early_stop=early_stop),
        "APGD": lambda: APGD(threat, steps=5, seed=seed, early_stop=early_stop),
        "APGDT": lambda: APGDT(threat, steps=4, n_target_classes=2, seed=seed, early_stop=early_stop),
        "FMN": lambda: FMN(threat, steps=6, cap=True, seed=seed) if threat.norm in ("linf", "l2", "l1") else None,
        "Square": lambda: Square(threat, n_queries=8, seed=seed) if image else None,
    }


ATTACKS = ("FGSM", "FGSMRS", "PGD", "APGD", "APGDT", "FMN", "Square")
THREATS = ("linf", "l2", "l1", "linf-box", "l2-box", "l1-box", "snr", "peak_db")


@st.composite
def attack_problems(draw):
    from mmrobust.threats import PeakDBBall, SNRBall

    kind = draw(st.sampled_from(THREATS))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    units = draw(st.integers(1, 4))
    channels = draw(st.integers(1, 2))
    side = draw(st.integers(5, 7))
    eps = draw(st.floats(1e-3, 2.0))
    if kind == "snr":
        threat = SNRBall(draw(st.floats(5.0, 40.0)))
    elif kind == "peak_db":
        threat = PeakDBBall(draw(st.floats(-40.0, -3.0)))
    else:
        norm, _, box = kind.partition("-")
        eps = eps * {"linf": 0.2, "l2": 1.0, "l1": 4.0}[norm]
        threat = BALLS[norm](eps, lower=0.0, upper=1.0) if box else BALLS[norm](eps)
    return (threat, draw(st.sampled_from(ATTACKS)), dtype, (units, channels, side, side), draw(st.booleans()),
            draw(st.integers(0, 2**16)))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(attack_problems())
def test_every_attack_returns_points_inside_every_threat_model(problem):
    import warnings

    from hypothesis import assume
    from torch import nn

    from mmrobust.attacks.base import victim_for
    from mmrobust.threats.verify import violations

    threat, name, dtype, shape, early_stop, seed = problem
    attack = _attacks(threat, early_stop, seed)[name]()
    assume(attack is not None)
    g = torch.Generator().manual_seed(seed)
    audio = threat.lower == -1.0
    x = torch.rand(shape, generator=g, dtype=dtype)
    if audio:
        x = x * 1.6 - 0.8
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 4)).to(dtype)
    y = torch.randint(0, 4, (shape[0],), generator=g)
    batch = [x, y]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unboxed image-shaped inputs warn on purpose
        result = attack(model, batch)
        victim = victim_for(model, batch, attack.adapter)
    found = violations(victim, result.inputs, attack.threats_for(victim))
    assert not found, found
    (key,) = result.size
    adv = result.inputs[key]
    assert adv.dtype == dtype and adv.shape == x.shape and bool(torch.isfinite(adv).all())
    delta = (adv.double() - x.double()).flatten(1)
    measured = {"linf": delta.abs().amax(1), "l2": delta.norm(dim=1), "l1": delta.abs().sum(1)}[threat.norm]
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert bool((measured <= threat.radius(x).double() * (1 + tol) + 10 * tol).all())
    if threat.lower is not None:
        assert float(adv.min()) >= threat.lower - tol and float(adv.max()) <= threat.upper + tol


@st.composite
def graph_problems(draw):
    n = draw(st.integers(6, 16))
    m = draw(st.integers(n, 3 * n))
    count = draw(st.booleans())
    budget = draw(st.integers(0, 6)) if count else draw(st.floats(0.0, 0.5))
    limit = draw(st.sampled_from([None, 1, 2]))
    return (n, m, budget, limit, draw(st.sampled_from(["PRBCD", "GRBCD", "DICE", "RandomFlips"])),
            draw(st.sampled_from([torch.float32, torch.float64])), draw(st.booleans()), draw(st.integers(0, 2**16)))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(graph_problems())
def test_every_graph_attack_returns_graphs_inside_the_edge_budget(problem):
    pytest.importorskip("torch_geometric")
    from hypothesis import assume
    from torch_geometric.data import Data

    from mmrobust.adapters.graph import GraphAdapter
    from mmrobust.attacks import DICE, GRBCD, PRBCD, RandomFlips
    from mmrobust.attacks.base import victim_for
    from mmrobust.graph import GCN
    from mmrobust.threats import EdgeFlips
    from mmrobust.threats.verify import violations

    n, m, budget, limit, name, dtype, local, seed = problem
    # RandomFlips/DICE honouring max_flips_per_node is helper graphwhole's part of issue 14; until it is on
    # main they run without the limit here (re-enable: drop this line)
    limit = limit if name in ("PRBCD", "GRBCD") else None
    g = torch.Generator().manual_seed(seed)
    row, col = torch.randint(0, n, (m,), generator=g), torch.randint(0, n, (m,), generator=g)
    ei = torch.cat([torch.stack([row, col]), torch.stack([col, row])], 1)  # duplicates and self loops included
    data = Data(x=torch.randn(n, 4, generator=g, dtype=dtype), edge_index=ei, y=torch.arange(n) % 2,
                test_mask=torch.rand(n, generator=g) < 0.5)
    assume(bool(data.test_mask.any()))
    threat = EdgeFlips(budget, local=local, max_flips_per_node=limit)
    adapter = GraphAdapter(mask="test")
    make = {"PRBCD": lambda: PRBCD(threat, block_size=4 * n * n, epochs=3, epochs_resampling=1, final_samples=2,
                                   adapter=adapter, seed=seed),
            "GRBCD": lambda: GRBCD(threat, block_size=4 * n * n, adapter=adapter, seed=seed),
            "DICE": lambda: DICE(threat, adapter=adapter, seed=seed),
            "RandomFlips": lambda: RandomFlips(threat, adapter=adapter, seed=seed)}
    torch.manual_seed(seed)
    model = GCN(4, 2, hidden=4).to(dtype)
    try:
        result = make[name]()(model, data)
    except ValueError as e:  # budgets larger than the candidate pairs, or attacks refusing local budgets
        assume("exceeds" not in str(e) and "local" not in str(e))
        raise
    victim = victim_for(model, data, adapter)
    found = violations(victim, result.inputs, {"edges": threat})
    assert not found, found
