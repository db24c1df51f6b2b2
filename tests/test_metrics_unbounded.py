"""Accuracy metrics refuse results of attacks unbounded by design until their points were checked
against the threat model (a minimal-norm success of any size is no break at the budget)."""

import pytest
import torch

from mmrobust.attacks import FAB, FMN, PGD
from mmrobust.metrics import AttackSuccessRate, MinimalPerturbation, RobustAccuracy
from mmrobust.metrics.functional import robust_accuracy
from mmrobust.threats import LinfBall
from mmrobust.threats.verify import UNVERIFIED, verify_result
from mmrobust.utils import toy_problem


@pytest.fixture
def problem():
    return toy_problem()


@pytest.mark.parametrize("make", [lambda t: FMN(t, steps=20, seed=0), lambda t: FAB(t, steps=20, seed=0)])
def test_uncapped_minimal_norm_result_refused_then_counted_after_verification(problem, make):
    model, x, y = problem
    threat = LinfBall(0.01, lower=0, upper=1)  # small: the minimal points mostly lie outside
    attack = make(threat)
    assert not attack.bounded
    raw = attack(model, [x, y])
    key = next(iter(raw.inputs))
    outside = (raw.inputs[key] - x).abs().flatten(1).amax(1) > 0.01 + 1e-6
    assert bool((outside & raw.success).any()), "the test needs successes outside the budget"
    assert raw.extras.get(UNVERIFIED)
    for metric in (RobustAccuracy(), AttackSuccessRate()):
        with pytest.raises(ValueError, match="unbounded by design"):
            metric.update(raw)
    with pytest.raises(ValueError, match="cap=True"):
        robust_accuracy(raw)
    checked = verify_result(attack, model, [x, y], raw)
    assert UNVERIFIED not in checked.extras
    # independently: a unit counts as broken only with an in-budget misclassified point
    delta = (checked.inputs[key] - x).abs().flatten(1).amax(1)
    adv_pred = model(checked.inputs[key]).argmax(1)
    robust = (model(x).argmax(1) == y) & ~((adv_pred != y) & (delta <= 0.01 + 1e-6))
    metric = RobustAccuracy()
    metric.update(checked)
    assert float(metric.compute()) == pytest.approx(robust.float().mean().item())
    # the size distribution takes the raw result as it is
    sizes = MinimalPerturbation()
    sizes.update(raw)
    assert torch.isfinite(sizes.compute())


def test_bounded_results_carry_no_mark(problem):
    model, x, y = problem
    threat = LinfBall(0.1, lower=0, upper=1)
    for attack in (PGD(threat, steps=3, seed=0), FMN(threat, steps=10, cap=True, seed=0),
                   FAB(threat, steps=10, cap=True, seed=0)):
        result = attack(model, [x, y])
        assert UNVERIFIED not in result.extras
        RobustAccuracy().update(result)


class _Jitter(torch.nn.Module):
    """A transform ``forward(x, generator)`` as EOT takes them: tiny additive noise."""

    def forward(self, x, generator=None):
        return x + 1e-4 * torch.randn(x.shape, generator=generator, dtype=x.dtype)


def test_eot_of_an_unbounded_attack_is_unbounded(problem):
    from mmrobust.attacks import EOT

    model, x, y = problem
    threat = LinfBall(0.01, lower=0, upper=1)
    eot = EOT(FMN(threat, steps=10, seed=0), [_Jitter()], samples=2, eval_samples=0)
    assert not eot.bounded
    assert EOT(FMN(threat, steps=10, cap=True), [_Jitter()], samples=2).bounded
    raw = eot(model, [x, y])
    assert raw.extras.get(UNVERIFIED)
    checked = verify_result(eot, model, [x, y], raw)  # drops outside points instead of raising BudgetViolation
    key = next(iter(checked.inputs))
    delta = (checked.inputs[key] - x).abs().flatten(1).amax(1)
    assert bool((delta[checked.success] <= 0.01 + 1e-6).all())


def test_fab_refuses_an_overshoot_below_one():
    with pytest.raises(ValueError, match="eta must be >= 1"):
        FAB(LinfBall(0.1), eta=0.5)


def test_robust_of_an_uncapped_result_is_refused_until_verified(problem):
    """``result.robust`` is robustness at the budget: for a raw FMN(cap=False) result (minimal points of any
    size) it refuses as the metrics do; after verify_result it reads the points inside the budget only."""
    model, x, y = problem
    attack = FMN(LinfBall(0.01, lower=0, upper=1), steps=20, seed=0)
    raw = attack(model, [x, y])
    with pytest.raises(ValueError, match="unbounded by design.*verify_result"):
        raw.robust
    checked = verify_result(attack, model, [x, y], raw)
    assert bool(checked.extras["dropped_outside_budget"].any())  # the test needs points outside the budget
    key = next(iter(raw.inputs))
    with torch.no_grad():  # independently: broken at the budget = misclassified at a point inside it
        inside = (raw.inputs[key] - x).abs().flatten(1).amax(1) <= 0.01 + 1e-6
        broken = (model(raw.inputs[key]).argmax(1) != y) & inside
        assert torch.equal(checked.robust, (model(x).argmax(1) == y) & ~broken)
    assert int(checked.robust.sum()) > int((raw.clean_correct & raw.adv_correct).sum())
