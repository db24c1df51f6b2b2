"""Hypothesis property tests for the threat models not covered by tests/test_threats_properties.py.

* audio: SNRBall / PeakDBBall -- inside the budget *measured in dB*, inside the box [-1, 1], idempotent,
  the closest admissible point (variational inequality of the Euclidean projection onto a convex set),
  padding-invariant SNR budget;
* graph: EdgeFlips -- the relaxed projection onto the capped simplex (sum <= budget, [0, 1], idempotent,
  closest point) and, on whole attacks, symmetric graphs without self loops with exactly the reported
  number of flipped pairs within budget; FeatureBall("bits") discretisation flips at most k whole bits;
* LatentBall -- projection in latent space inside the budget, idempotent, closest point.

(WeightBall has its per-layer property test in tests/test_weight_space.py.)
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_projection_is_closest
from mmrobust.threats import EdgeFlips, FeatureBall, LatentBall, PeakDBBall, SNRBall, db_x, snr_db

DB_TOL = 1e-6


@st.composite
def waveforms(draw):
    kind = draw(st.sampled_from(["snr", "peak"]))
    units = draw(st.integers(1, 4))
    length = draw(st.integers(2, 64))
    channels = draw(st.sampled_from([None, 1, 2]))
    level = draw(st.floats(-40.0, 40.0)) if kind == "snr" else draw(st.floats(-60.0, 6.0))
    amplitude = draw(st.floats(1e-3, 1.0))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    scale = draw(st.floats(1e-4, 10.0))
    g = torch.Generator().manual_seed(seed)
    shape = (units, length) if channels is None else (units, channels, length)
    x = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * amplitude
    v = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    threat = SNRBall(level) if kind == "snr" else PeakDBBall(level)
    return threat, x, v, g


def _inside_in_db(threat, delta, x):
    nonzero = delta.flatten(1).abs().amax(1) > 0
    if isinstance(threat, SNRBall):
        ok = snr_db(delta, x) >= threat.snr_db - DB_TOL
    else:
        ok = db_x(delta, x) <= threat.db + DB_TOL
    return bool((ok | ~nonzero).all())


def _in_box(delta, x):
    adv = x + delta
    return float(adv.min()) >= -1 - 1e-12 and float(adv.max()) <= 1 + 1e-12


@settings(max_examples=150, deadline=None)
@given(waveforms())
def test_audio_projection_is_inside_the_db_budget_and_the_box_and_idempotent(problem):
    threat, x, v, _ = problem
    p = threat.project(v, x)
    assert _inside_in_db(threat, p, x)
    assert _in_box(p, x)
    assert torch.allclose(threat.project(p, x), p, atol=1e-12)
    inside = p * 0.5
    assert torch.allclose(threat.project(inside, x), inside, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(waveforms())
def test_audio_projection_is_the_closest_admissible_point(problem):
    threat, x, v, g = problem
    assert_projection_is_closest(threat, v, x, g, draws=6)


@settings(max_examples=100, deadline=None)
@given(waveforms())
def test_audio_random_init_and_steps_stay_admissible(problem):
    threat, x, v, g = problem
    d = threat.random_init(x, g)
    assert _inside_in_db(threat, d, x) and _in_box(d, x)
    stepped = threat.project(threat.step(d, v, threat.radius(x) * 0.5), x)
    assert _inside_in_db(threat, stepped, x) and _in_box(stepped, x)


@settings(max_examples=50, deadline=None)
@given(waveforms(), st.integers(1, 32))
def test_snr_budget_ignores_zero_padding(problem, pad):
    threat, x, _, _ = problem
    padded = torch.cat([x, torch.zeros(*x.shape[:-1], pad, dtype=x.dtype)], dim=-1)
    assert torch.allclose(threat.radius(padded), threat.radius(x))


# -- graph: relaxed edge flips ---------------------------------------------------------------------------
@st.composite
def flip_problems(draw):
    units = draw(st.integers(1, 4))
    candidates = draw(st.integers(1, 60))
    budget = draw(st.integers(0, 70))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    scale = draw(st.floats(0.01, 5.0))
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(units, candidates, generator=g, dtype=torch.float64) * scale + 0.3
    return EdgeFlips(budget), torch.zeros(units, candidates, dtype=torch.float64), v, g


@settings(max_examples=150, deadline=None)
@given(flip_problems())
def test_relaxed_edge_flips_projection_is_admissible_idempotent_and_closest(problem):
    threat, x, v, g = problem
    p = threat.project(v, x)
    assert float(p.min()) >= 0 and float(p.max()) <= 1
    assert bool((threat.size(p, x) <= threat.count + 1e-6).all())
    assert torch.allclose(threat.project(p, x), p, atol=1e-6)
    for _ in range(6):
        z = threat.project(torch.rand(v.shape, generator=g, dtype=v.dtype) * 2, x)
        inner = ((v - p) * (z - p)).sum(1)
        assert bool((inner <= 1e-5 * (1 + (v - p).norm(dim=1) * (z - p).norm(dim=1))).all())


def _pairs(edge_index):
    r, c = edge_index
    return {(min(a, b), max(a, b)) for a, b in zip(r.tolist(), c.tolist())}


@pytest.fixture(scope="module")
def gcn_graph():
    pytest.importorskip("torch_geometric")
    from mmrobust.graph.data import sbm_graph
    from mmrobust.graph.models import GCN
    from mmrobust.graph.training import train_node_classifier

    data = sbm_graph(num_nodes=40, num_classes=3, p_in=0.2, p_out=0.02, seed=0)
    torch.manual_seed(0)
    model = GCN(data.num_features, 3, hidden=8)
    train_node_classifier(model, data, epochs=30, lr=0.02)
    return model.eval(), data


@settings(max_examples=8, deadline=None)
@given(budget=st.integers(0, 25), local=st.booleans(), attack=st.sampled_from(["PRBCD", "GRBCD", "RandomFlips", "DICE"]),
       seed=st.integers(0, 1000))
def test_edge_flip_attacks_keep_graphs_symmetric_loop_free_and_count_flips_exactly(gcn_graph, budget, local, attack,
                                                                                   seed):
    from torch_geometric.utils import contains_self_loops, is_undirected

    from mmrobust.adapters.graph import GraphAdapter
    from mmrobust.attacks import DICE, GRBCD, PRBCD, RandomFlips

    model, data = gcn_graph
    threat = EdgeFlips(budget, local=local)
    kw = dict(adapter=GraphAdapter(mask="test"), seed=seed)
    make = {"PRBCD": lambda: PRBCD(threat, block_size=300, epochs=4, epochs_resampling=3, **kw),
            "GRBCD": lambda: GRBCD(threat, block_size=300, epochs=3, **kw),
            "RandomFlips": lambda: RandomFlips(threat, **kw), "DICE": lambda: DICE(threat, **kw)}[attack]
    before = data.edge_index.clone()
    result = make()(model, data)
    adv = result.batch.edge_index
    assert torch.equal(data.edge_index, before)  # the user's graph is untouched
    assert is_undirected(adv) and not contains_self_loops(adv)
    flipped = _pairs(before) ^ _pairs(adv)
    assert float(result.size["edges"]) == len(flipped) <= budget
    if attack in ("RandomFlips", "DICE") and not local:
        assert len(flipped) == budget  # the random baselines spend the whole budget
    if local:
        targets = set(data.test_mask.nonzero().flatten().tolist())
        assert all(a in targets or b in targets for a, b in flipped)


@settings(max_examples=100, deadline=None)
@given(k=st.integers(0, 12), units=st.integers(1, 3), dim=st.integers(1, 30), seed=st.integers(0, 2 ** 31 - 1))
def test_binary_feature_flips_discretise_to_at_most_k_whole_bits(k, units, dim, seed):
    g = torch.Generator().manual_seed(seed)
    threat = FeatureBall(k, "bits")
    x = (torch.rand(units, dim, generator=g) < 0.3).float()
    delta = threat.project(torch.randn(units, dim, generator=g), x)
    flips = threat.discretize(delta, x)
    adv = x + flips
    assert bool(((adv == 0) | (adv == 1)).all())
    assert bool(((flips != 0).sum(1) <= k).all())
    assert bool(threat.contains(flips, x, atol=1e-9).all())


# -- latent space ------------------------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(norm=st.sampled_from(["l2", "linf", "l1"]), eps=st.floats(1e-3, 5.0), units=st.integers(1, 4),
       dim=st.integers(1, 16), seed=st.integers(0, 2 ** 31 - 1), scale=st.floats(0.01, 10.0))
def test_latent_ball_projection_is_inside_idempotent_and_closest(norm, eps, units, dim, seed, scale):
    g = torch.Generator().manual_seed(seed)
    threat = LatentBall(eps, lambda x: x, lambda z: z, norm=norm)
    z = torch.randn(units, dim, generator=g, dtype=torch.float64)
    v = torch.randn(units, dim, generator=g, dtype=torch.float64) * scale
    p = threat.project(v, z)
    assert bool((threat.size(p, z) <= eps * (1 + 1e-9) + 1e-12).all())
    assert torch.allclose(threat.project(p, z), p, atol=1e-9)
    for _ in range(4):
        w = threat.project(torch.randn(v.shape, generator=g, dtype=v.dtype) * scale, z)
        inner = ((v - p) * (w - p)).sum(1)
        assert bool((inner <= 1e-7 * (1 + (v - p).norm(dim=1) * (w - p).norm(dim=1))).all())
    d = threat.random_init(z, g)
    assert bool((threat.size(d, z) <= eps * (1 + 1e-9) + 1e-12).all())
