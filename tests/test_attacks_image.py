"""APGD / APGD-T, Square, FMN and the Ensemble on the digits CNN: strength, budget, rules, determinism."""

import pytest
import torch
from torch import nn

from mmrobust.attacks import APGD, APGDT, FAB, FABT, FMN, PGD, Ensemble, Square
from mmrobust.threats import L1Ball, L2Ball, LinfBall

N = 96  # test images; keeps the file fast on a shared CPU


@pytest.fixture(scope="module")
def batch(digits):
    _, _, xt, yt = digits
    return xt[:N].clone(), yt[:N].clone()


def clean_accuracy(model, batch):
    x, y = batch
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def check_budget_and_box(result, threat):
    size = result.size["image"]
    finite = torch.isfinite(size)
    assert bool((size[finite] <= threat.eps * (1 + 1e-5) + 1e-6).all())
    adv = result.batch[0]
    assert adv.min() >= 0 and adv.max() <= 1


BOX = dict(lower=0, upper=1)


@pytest.mark.parametrize("threat, max_robust", [
    (L2Ball(0.8, **BOX), 0.3),
    (L1Ball(4.0, **BOX), 0.3),
    (LinfBall(0.1, **BOX), 0.7),
])
def test_apgd_lowers_accuracy_within_budget(digits_cnn, batch, threat, max_robust):
    x, y = batch
    x0 = x.clone()
    res = APGD(threat, steps=10, seed=0)(digits_cnn, (x, y))
    assert torch.equal(x, x0)  # the user's batch is untouched
    assert res.robust.float().mean().item() < max_robust < clean_accuracy(digits_cnn, batch) - 0.25
    check_budget_and_box(res, threat)


@pytest.mark.parametrize("threat", [L2Ball(0.8, **BOX), LinfBall(0.1, **BOX)])
def test_apgd_at_least_as_strong_as_pgd(digits_cnn, batch, threat):
    pgd = PGD(threat, steps=10, seed=0)(digits_cnn, batch).robust.float().mean().item()
    apgd = APGD(threat, steps=10, seed=0)(digits_cnn, batch).robust.float().mean().item()
    assert apgd <= pgd + 0.02


def test_apgd_checkpoints_follow_the_paper():
    from mmrobust.attacks.apgd import apgd_checkpoints

    # p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (Croce & Hein 2020, Sec. 3.2)
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_apgd_momentum_after_a_restart_from_the_best_point(digits_cnn, batch, monkeypatch):
    """Croce & Hein 2020, Alg. 1: after x^(k) <- x_max at a checkpoint, the next update keeps the momentum
    term (1 - alpha)(x^(k) - x^(k-1)) = (1 - alpha)(x_max - x^(k-1)), as in the authors' code."""
    from mmrobust.attacks import apgd as apgd_module

    threat = LinfBall(0.1, **BOX)
    evaluated, steps_from = [], []
    real_gradients, real_step = apgd_module.input_gradients, LinfBall.step

    def recording_gradients(attack, victim, x, delta, *args, **kwargs):
        evaluated.append(delta["image"].detach().clone())
        return real_gradients(attack, victim, x, delta, *args, **kwargs)

    def recording_step(self, delta, grad, step_size):
        steps_from.append((delta.detach().clone(), real_step(self, delta, grad, step_size)))
        return steps_from[-1][1]

    monkeypatch.setattr(apgd_module, "input_gradients", recording_gradients)
    monkeypatch.setattr(LinfBall, "step", recording_step)
    x = batch[0][:32]
    APGD(threat, steps=30, seed=0)(digits_cnn, (x, batch[1][:32]))
    # evaluated[0] is the start, then one point per iteration; steps_from[k] is the step taken after
    # evaluated[k] (from x^(k) = evaluated[k] itself, or from x_max where the step was halved and reset)
    alpha, restarted = 0.75, 0
    for k in range(1, len(steps_from)):
        origin, stepped = steps_from[k]
        previous = steps_from[k - 1][0]  # x^(k-1)
        z = threat.project(stepped, x)
        expected = threat.project(origin + alpha * (z - origin) + (1 - alpha) * (origin - previous), x)
        torch.testing.assert_close(evaluated[k + 1], expected, rtol=0, atol=1e-6)
        restarted += int((origin != evaluated[k]).flatten(1).any(1).sum())
    assert restarted > 0  # the check above covered restarts from x_max


def test_apgdt_hits_explicit_targets(digits_cnn, batch):
    x, y = batch
    targets = (y + 1) % 10
    res = APGDT(L2Ball(2.0, **BOX), steps=20, seed=0)(digits_cnn, batch, target_labels=targets)
    hit = (res.logits.argmax(1) == targets)
    assert torch.equal(res.success, hit)
    assert hit.float().mean().item() > 0.85
    check_budget_and_box(res, L2Ball(2.0))


def test_apgdt_top_k_targets_misclassify(digits_cnn, batch):
    threat = L2Ball(0.8, **BOX)
    res = APGDT(threat, steps=10, n_target_classes=3, seed=0)(digits_cnn, batch)
    assert torch.equal(res.success, res.logits.argmax(1) != res.target)
    assert res.robust.float().mean().item() < 0.25
    check_budget_and_box(res, threat)


class NoGradientModel(nn.Module):
    """Fails if anyone asks for gradients: a score-based attack must not."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        assert not torch.is_grad_enabled(), "a black-box attack ran the model with gradients enabled"
        return self.model(x)


@pytest.mark.parametrize("threat, max_robust", [(LinfBall(0.15, **BOX), 0.6), (L2Ball(1.0, **BOX), 0.6)])
def test_square_lowers_accuracy_without_gradients(digits_cnn, batch, threat, max_robust):
    x, y = batch
    x0 = x.clone()
    res = Square(threat, n_queries=150, seed=0)(NoGradientModel(digits_cnn), (x, y))
    assert torch.equal(x, x0)
    assert res.robust.float().mean().item() < max_robust
    check_budget_and_box(res, threat)


class RecordingConstantModel(nn.Module):
    """Never fooled (class 0 by a wide margin), so Square keeps its first point; records every query."""

    def __init__(self):
        super().__init__()
        self.queries = []

    def forward(self, x):
        self.queries.append(x.clone())
        return torch.tensor([10.0] + [0.0] * 9).expand(len(x), 10) + 0 * x.flatten(1)[:, :1]


def test_square_linf_never_wastes_a_query_on_a_window_the_box_undoes():
    """On black images half of the +-eps windows are clipped away by the [0, 1] box; every query must still
    change the image (the authors redraw such a window's signs)."""
    model = RecordingConstantModel()
    x, y = torch.zeros(8, 1, 12, 12), torch.zeros(8, dtype=torch.long)
    Square(LinfBall(0.3, **BOX), n_queries=40, seed=0)(model, (x, y))
    start = next(i for i, q in enumerate(model.queries) if q.abs().sum() > 0)  # after the clean pass
    first, later = model.queries[start], model.queries[start + 1:]
    assert len(later) >= 30
    for q in later:
        assert bool(((q - first).abs().flatten(1).amax(1) > 0).all())


class CountingModel(nn.Module):
    """Counts, per clean image, the rows of every forward pass that lie within ``eps`` (L-inf) of it."""

    def __init__(self, model, clean, eps):
        super().__init__()
        self.model, self.clean, self.eps = model, clean.flatten(1), eps
        self.counts = torch.zeros(len(clean), dtype=torch.long)

    def forward(self, x):
        dist = (x.flatten(1)[:, None] - self.clean[None]).abs().amax(2)
        owner = dist.argmin(1)
        assert bool((dist.gather(1, owner[:, None]) <= self.eps + 1e-6).all())
        self.counts += torch.bincount(owner, minlength=len(self.clean))
        return self.model(x)


def test_square_queries_each_unit_n_queries_times_and_stops_when_fooled(digits_cnn, batch):
    """The query budget per unit, counted at the model: the clean pass plus ``n_queries`` for a unit never
    fooled, fewer for a fooled one (no query after its success), one for an input misclassified already."""
    x, y = batch
    eps, n_queries = 0.15, 40
    model = CountingModel(digits_cnn, x, eps)
    res = Square(LinfBall(eps, **BOX), n_queries=n_queries, seed=0)(model, (x, y))
    with torch.no_grad():
        clean_ok = digits_cnn(x).argmax(1) == y
    never_fooled = res.robust
    fooled = clean_ok & ~res.robust
    assert bool(never_fooled.any() and fooled.any())
    assert bool((model.counts[never_fooled] == 1 + n_queries).all())
    assert bool((model.counts[fooled] <= 1 + n_queries).all() and (model.counts[fooled] >= 2).all())
    assert float(model.counts[fooled].float().mean()) < n_queries / 2  # fooled units leave the search
    assert bool((model.counts[~clean_ok] == 2).all())  # the clean pass and the initial point
    # the returned points are the last accepted queries: recomputed robust accuracy agrees
    with torch.no_grad():
        assert torch.equal(digits_cnn(res.batch[0]).argmax(1) == y, res.adv_correct)
    check_budget_and_box(res, LinfBall(eps, **BOX))


def test_fmn_returns_minimal_adversarial_sizes(digits_cnn, batch):
    x, y = batch
    res = FMN(L2Ball(1.0, **BOX), steps=40)(digits_cnn, (x, y))
    size = res.size["image"]
    found = res.success
    assert found.float().mean().item() > 0.95
    assert bool(torch.isinf(size[~found]).all()) and bool(torch.isfinite(size[found]).all())
    # at its returned point (of the returned size) every success is misclassified
    assert not bool(res.adv_correct[found].any())
    delta = (res.batch[0] - x).flatten(1).norm(dim=1)
    assert torch.allclose(delta[found], size[found], atol=1e-5)
    # minimal sizes lie well below the budget at which PGD brings accuracy to ~0
    pgd = PGD(L2Ball(2.0, **BOX), steps=20, seed=0)(digits_cnn, (x, y))
    assert pgd.robust.float().mean().item() <= 0.02
    assert size[found].median().item() < 2.0 * 0.5


def test_fmn_cap_makes_a_bounded_attack(digits_cnn, batch):
    threat = LinfBall(0.1, **BOX)
    res = FMN(threat, steps=30, cap=True)(digits_cnn, batch)
    size = res.size["image"]
    assert bool((size[res.success] <= 0.1 + 1e-6).all())
    assert bool(torch.isinf(size[~res.success & res.clean_correct]).all())
    check_budget_and_box(res, threat)


def test_ensemble_is_at_most_every_member(digits_cnn, batch):
    threat = LinfBall(0.1, **BOX)
    def members():  # fresh instances: an attack's seeded generator advances across calls
        return [APGD(threat, steps=10, seed=0), APGDT(threat, steps=10, n_target_classes=2, seed=0),
                Square(threat, n_queries=100, seed=0)]

    res = Ensemble(members())(digits_cnn, batch)
    robust = int(res.robust.sum())
    alone = [int(m(digits_cnn, batch).robust.sum()) for m in members()]
    assert robust <= min(alone)
    counts = [c for _, c in res.extras["robust_after"]]
    assert counts == sorted(counts, reverse=True) and counts[-1] == robust
    assert counts[0] == alone[0]  # the first member sees the whole batch
    check_budget_and_box(res, threat)
    # each non-robust output's point really fools the model
    assert not bool((res.clean_correct & ~res.robust & res.adv_correct).any())


def test_ensemble_standard_members():
    ens = Ensemble.standard(LinfBall(0.1), steps=5, n_queries=10)
    assert [type(a) for a in ens.attacks] == [APGD, APGDT, FABT, Square]
    assert [type(a) for a in Ensemble.standard(L1Ball(5.0)).attacks] == [APGD, APGDT, FABT]


ATTACKS = {
    "apgd": lambda: APGD(L2Ball(0.8, **BOX), steps=6, seed=3),
    "apgdt": lambda: APGDT(L2Ball(0.8, **BOX), steps=6, n_target_classes=2, seed=3),
    "square": lambda: Square(LinfBall(0.1, **BOX), n_queries=30, seed=3),
    "fmn": lambda: FMN(L2Ball(0.8, **BOX), steps=6, seed=3),
    "fab": lambda: FAB(L2Ball(0.8, **BOX), steps=4, restarts=2, seed=3),
    "fabt": lambda: FABT(LinfBall(0.1, **BOX), steps=4, n_target_classes=2, cap=True, early_stop=True, seed=3),
    "ensemble": lambda: Ensemble([APGD(LinfBall(0.1, **BOX), steps=4, seed=3),
                                  Square(LinfBall(0.1, **BOX), n_queries=20, seed=3)]),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_seeded_runs_are_identical(digits_cnn, batch, name):
    a = ATTACKS[name]()(digits_cnn, batch)
    b = ATTACKS[name]()(digits_cnn, batch)
    assert torch.equal(a.inputs["image"], b.inputs["image"])
    assert torch.equal(a.success, b.success)


class RaisesOnCall(nn.Module):
    """Wraps a model and raises on its n-th forward call."""

    def __init__(self, model, n):
        super().__init__()
        self.model, self.n, self.calls = model, n, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("boom")
        return self.model(x)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_modes_and_flags_restored_when_the_model_raises(digits, name):
    from conftest import make_digits_cnn

    _, _, xt, yt = digits
    model = RaisesOnCall(make_digits_cnn(), n=2)  # the first call after the clean pass
    model.train()
    model.model[0].weight.requires_grad_(False)
    with torch.no_grad():  # labels the untrained model gets right, so every attack has work to do
        labels = model.model(xt[:8]).argmax(1)
    with pytest.raises(RuntimeError, match="boom"):
        ATTACKS[name]()(model, (xt[:8], labels))
    assert all(m.training for m in model.modules())
    assert not model.model[0].weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "model.0.weight")
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_modes_restored_after_success(digits_cnn, batch, name):
    digits_cnn.train()
    try:
        ATTACKS[name]()(digits_cnn, (batch[0][:8], batch[1][:8]))
        assert all(m.training for m in digits_cnn.modules())
        assert all(p.requires_grad for p in digits_cnn.parameters())
    finally:
        digits_cnn.eval()


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="steps"):
        APGD(LinfBall(0.1), steps=0)
    with pytest.raises(ValueError, match="n_queries"):
        Square(LinfBall(0.1), n_queries=0)
    with pytest.raises(ValueError, match="norm"):
        Square(L1Ball(1.0))
    with pytest.raises(ValueError, match="gamma"):
        FMN(L2Ball(1.0), gamma=1.5)
    with pytest.raises(TypeError, match="attacks"):
        Ensemble([])
