"""FAB / FAB-T (Croce & Hein 2020) and the exact minimal-norm step onto a hyperplane in a box."""

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize
from torch import nn

from mmrobust.adapters import WaveformAdapter
from mmrobust.attacks import FAB, FABT, FMN
from mmrobust.attacks.hyperplane import hyperplane_step
from mmrobust.threats import L1Ball, L2Ball, LinfBall, PeakDBBall, SNRBall

BOX = dict(lower=0, upper=1)
N = 16


def _optimum(norm, w, c, lo, hi):
    """The minimal norm of ``d`` with ``<w, d> = c`` and ``lo <= d <= hi`` from scipy (LP / SLSQP)."""
    n = len(w)
    bounds = list(zip(lo, hi))
    if norm == "l2":
        res = minimize(lambda z: (z ** 2).sum(), np.zeros(n), jac=lambda z: 2 * z, method="SLSQP", bounds=bounds,
                       constraints=[{"type": "eq", "fun": lambda z: w @ z - c}], options=dict(ftol=1e-14))
        return float(np.sqrt(res.fun))
    if norm == "linf":  # variables (d, r): min r, -r <= d_i <= r
        obj = np.r_[np.zeros(n), 1.0]
        a_ub = np.vstack([np.c_[np.eye(n), -np.ones(n)], np.c_[-np.eye(n), -np.ones(n)]])
        a_eq, more = np.r_[w, 0.0][None], [(0, None)]
    else:  # variables (d, s): min sum s, -s_i <= d_i <= s_i
        obj = np.r_[np.zeros(n), np.ones(n)]
        a_ub = np.vstack([np.c_[np.eye(n), -np.eye(n)], np.c_[-np.eye(n), -np.eye(n)]])
        a_eq, more = np.r_[w, np.zeros(n)][None], [(0, None)] * n
    res = linprog(obj, A_ub=a_ub, b_ub=np.zeros(2 * n), A_eq=a_eq, b_eq=[c], bounds=bounds + more)
    return float(res.fun)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_hyperplane_step_is_the_minimal_norm_point_in_the_box(norm):
    g = torch.Generator().manual_seed(0)
    measure = {"linf": lambda d: d.abs().max(), "l2": lambda d: d.norm(), "l1": lambda d: d.abs().sum()}[norm]
    for trial in range(40):
        n = 6
        w = torch.randn(1, n, generator=g, dtype=torch.float64)
        w[0, trial % n] = 0.0  # a coordinate the hyperplane does not depend on
        t = torch.rand(1, n, generator=g, dtype=torch.float64)
        lo, hi = -t, 1 - t
        if trial % 5 == 0:  # no box at all
            lo, hi = torch.full_like(t, -float("inf")), torch.full_like(t, float("inf"))
        c = torch.randn(1, generator=g, dtype=torch.float64) * (3.0 if trial % 3 == 0 else 0.5)
        d = hyperplane_step(norm, w, c, lo, hi)[0]
        assert bool((d >= lo[0] - 1e-12).all() and (d <= hi[0] + 1e-12).all())
        best = torch.where(w[0] * c > 0, w[0] * hi[0], w[0] * lo[0]).nan_to_num(0.0, 0.0, 0.0)
        reachable = torch.isinf(hi).any() or abs(float(best.sum())) >= abs(float(c))
        if not reachable:  # the box corner closest to the hyperplane
            assert float(w[0] @ d) == pytest.approx(float(best.sum()), abs=1e-9)
            continue
        assert float(w[0] @ d) == pytest.approx(float(c), abs=1e-9)
        lo_, hi_ = lo[0].clamp(-1e6, 1e6).numpy(), hi[0].clamp(-1e6, 1e6).numpy()
        assert float(measure(d)) <= _optimum(norm, w[0].numpy(), float(c), lo_, hi_) + 1e-6


def test_hyperplane_step_rejects_other_norms():
    with pytest.raises(ValueError, match="norm must be one of"):
        hyperplane_step("l0", torch.ones(1, 2), torch.ones(1), -torch.ones(1, 2), torch.ones(1, 2))


@pytest.fixture(scope="module")
def batch(digits):
    _, _, xt, yt = digits
    return xt[:N].clone(), yt[:N].clone()


@pytest.mark.parametrize("threat", [LinfBall(0.1, **BOX), L2Ball(0.8, **BOX), L1Ball(4.0, **BOX)])
def test_fab_finds_small_points_inside_the_box_like_fmn(digits_cnn, batch, threat):
    x, y = batch
    x0 = x.clone()
    res = FAB(threat, steps=10)(digits_cnn, (x, y))
    assert torch.equal(x, x0)
    size, ok = res.size["image"], res.clean_correct
    assert bool(torch.isfinite(size[ok]).all())  # a minimal-norm attack reaches every correct unit
    assert bool((res.adv_correct[torch.isfinite(size)] == False).all())  # noqa: E712
    adv = res.batch[0]
    assert adv.min() >= 0 and adv.max() <= 1
    measured = threat.size(adv - x, x)
    assert torch.allclose(measured[torch.isfinite(size)], size[torch.isfinite(size)])
    fmn = FMN(threat, steps=10)(digits_cnn, (x, y)).size["image"]
    both = ok & torch.isfinite(fmn)
    assert size[both].median() <= fmn[both].median() * 1.25


def test_fab_cap_makes_a_bounded_attack_and_early_stop_keeps_robust_accuracy(digits_cnn, batch):
    threat = LinfBall(0.08, **BOX)
    capped = FABT(threat, steps=10, n_target_classes=3, cap=True)(digits_cnn, batch)
    early = FABT(threat, steps=10, n_target_classes=3, cap=True, early_stop=True)(digits_cnn, batch)
    assert bool((capped.size["image"][capped.success] <= 0.08).all())
    assert bool((early.size["image"][early.success] <= 0.08).all())
    assert torch.equal(capped.robust, early.robust)
    assert 0 < capped.robust.float().mean() < capped.clean_correct.float().mean()
    # where nothing was found inside the budget the clean input is returned, with size inf
    miss = capped.clean_correct & ~capped.success
    assert torch.equal(capped.batch[0][miss], batch[0][miss])
    assert bool(torch.isinf(capped.size["image"][miss]).all())


def test_fabt_with_explicit_targets_reaches_those_classes(digits_cnn, batch):
    x, y = batch
    targets = (y + 1) % 10
    res = FABT(L2Ball(3.0, **BOX), steps=20)(digits_cnn, (x, y), target_labels=targets)
    hit = res.success
    assert torch.equal(hit, res.logits.argmax(1) == targets)  # success means the target class here
    assert bool(hit.any())
    # no point is counted that is merely misclassified, and those are returned unperturbed
    assert torch.equal(res.batch[0][~hit], x[~hit])


def test_fab_float64_and_bad_threats(digits_cnn, batch):
    import copy

    model = copy.deepcopy(digits_cnn).double()
    x, y = batch
    res = FAB(L2Ball(1.0, **BOX), steps=5)(model, (x.double()[:8], y[:8]))
    assert res.inputs["image"].dtype == torch.float64
    from mmrobust.threats import EdgeFlips

    with pytest.raises(ValueError, match="norm 'linf', 'l2' or 'l1'"):
        FAB(EdgeFlips(0.1))


class TinyWaveNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(1, 4, 9, stride=4), nn.ReLU(), nn.AdaptiveAvgPool1d(8), nn.Flatten(),
                                 nn.Linear(32, 5))

    def forward(self, wave):
        return self.net(wave[:, None])


@pytest.mark.parametrize("threat", [PeakDBBall(-10.0), SNRBall(10.0)])
def test_fab_on_waveforms_keeps_padding_box_and_db_budget(threat):
    torch.manual_seed(0)
    model = TinyWaveNet().eval()
    wave = (torch.rand(12, 400) * 2 - 1) * 0.5
    lengths = torch.randint(200, 401, (12,))
    wave = wave * (torch.arange(400)[None] < lengths[:, None])
    with torch.no_grad():
        y = model(wave).argmax(1)  # every clean prediction correct
    res = FABT(threat, steps=10, n_target_classes=2, cap=True, adapter=WaveformAdapter())(model, (wave, y, lengths))
    delta = res.inputs["audio"] - wave
    pad = torch.arange(400)[None] >= lengths[:, None]
    assert bool((delta[pad] == 0).all())
    assert bool((res.inputs["audio"].abs() <= 1).all())
    assert bool(threat.contains(delta, wave).all())
    assert res.success.float().mean() > 0.3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_newton_water_fill_matches_the_sorted_solution(norm, dtype, monkeypatch):
    """The L-inf/L2 step by Newton's method equals the one read off the sorted breakpoints, on FAB-sized rows
    in a [0, 1] box (feasible, infeasible, zero normals, ties), and so does its fallback after one step."""
    from mmrobust.attacks import hyperplane

    g = torch.Generator().manual_seed(1)
    rows, dim = 64, 784
    t = torch.rand(rows, dim, generator=g, dtype=torch.float64)
    t[:, ::3] = 0.0  # MNIST-like: many coordinates at the box's edge, many equal breakpoints
    t[:, 1::7] = 1.0
    w = torch.randn(rows, dim, generator=g, dtype=torch.float64)
    w[:, ::5] = 0.0
    w[0] = 0.0  # a row with no normal at all
    c = torch.randn(rows, generator=g, dtype=torch.float64) * torch.logspace(-3, 2, rows, dtype=torch.float64)
    w, c, t = w.to(dtype), c.to(dtype), t.to(dtype)
    lo, hi = -t, 1 - t
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    reference = None
    for steps in (hyperplane._NEWTON_STEPS, 1):
        monkeypatch.setattr(hyperplane, "_NEWTON_STEPS", steps)
        d = hyperplane_step(norm, w, c, lo, hi)
        monkeypatch.setattr(hyperplane, "_water_fill", hyperplane._water_fill_sorted)
        sorted_d = hyperplane_step(norm, w, c, lo, hi)
        monkeypatch.undo()
        assert d.dtype == dtype and bool(torch.isfinite(d).all())
        assert bool((d >= lo).all() and (d <= hi).all())
        assert torch.allclose(d, sorted_d, rtol=0, atol=tol), float((d - sorted_d).abs().max())
        reference = d if reference is None else reference
        assert torch.allclose(d, reference, rtol=0, atol=tol)
    reach = torch.where(w * c[:, None] > 0, w * hi, w * lo).sum(1)
    feasible = reach.abs() >= c.abs()
    assert 0 < int(feasible.sum()) < rows  # both kinds of rows were tested
    assert torch.allclose((w * reference).sum(1)[feasible], c[feasible], rtol=1e-4 if dtype == torch.float32 else 1e-9,
                          atol=1e-4 if dtype == torch.float32 else 1e-9)
