"""Each attack-failure check fires on an image model built to trigger it and stays silent on a normal CNN."""

from __future__ import annotations

import pytest
import torch

from _checks_models import Binarised, Detached, EvalDropout, NoisyInput, Quantised, Softmax
from mmrobust import PGD, LinfBall
from mmrobust.attacks import APGD, Ensemble, Square
from mmrobust.attacks.base import attack_mode, victim_for
from mmrobust.checks import (FailureChecks, accuracy_curve_check, budget_curve, gradient_masking, late_restarts,
                             loss_trace, probability_outputs, randomised_forward, transfer_gap, unconverged_loss,
                             zero_gradients)
from mmrobust.evaluation import named_attacks
from mmrobust.threats.verify import run_checked

THREAT = LinfBall(0.1, lower=0, upper=1)


@pytest.fixture(scope="module")
def batch(digits):
    _, _, xt, yt = digits
    return xt[:32], yt[:32]


def victim_of(model, batch):
    return victim_for(model, batch)


def model_check(check, model, batch, *args, threat=False):
    with attack_mode(model):
        victim = victim_of(model, batch)
        if threat:
            args = ({victim.input_name(): THREAT}, *args)
        return check(victim, *args)


def all_checks(model, batch, attacks):
    named = named_attacks(attacks)
    results = [run_checked(a, model, batch) for a in named.values()]
    checks = FailureChecks()
    checks.observe(model, batch, named, results)
    return {c.name: c for c in checks.results()}


def test_normal_cnn_fires_nothing(digits_cnn, batch):
    found = all_checks(digits_cnn, batch, {"apgd": APGD(THREAT, steps=50, seed=0),
                                           "square": Square(THREAT, n_queries=100, seed=0)})
    assert [c.name for c in found.values() if c.fired] == []
    ran = {name for name, c in found.items() if c.ran}
    assert {"randomised_forward", "probability_outputs", "zero_gradients", "gradient_masking", "transfer_gap",
            "budget_curve", "unconverged_loss", "black_box_beats_white_box"} <= ran
    assert not found["edge_budget_unused"].ran  # no graph


@pytest.mark.parametrize("wrap", [NoisyInput, EvalDropout])
def test_randomised_forward(digits_cnn, batch, wrap):
    fired = model_check(randomised_forward, wrap(digits_cnn), batch)
    assert fired.fired and "Ensemble.rand" in fired.advice
    assert not model_check(randomised_forward, digits_cnn, batch).fired


def test_probability_outputs(digits_cnn, batch):
    fired = model_check(probability_outputs, Softmax(digits_cnn), batch)
    assert fired.fired and "logits" in fired.advice
    assert not model_check(probability_outputs, digits_cnn, batch).fired
    # log-probabilities are fine for attack losses
    assert not model_check(probability_outputs, torch.nn.Sequential(digits_cnn, torch.nn.LogSoftmax(1)), batch).fired


@pytest.mark.parametrize("wrap", [Quantised, Detached, Binarised])
def test_zero_gradients(digits_cnn, batch, wrap):
    fired = model_check(zero_gradients, wrap(digits_cnn), batch, threat=True)
    assert fired.fired and fired.values["zero"] == 32
    assert not model_check(zero_gradients, digits_cnn, batch, threat=True).fired


@pytest.mark.parametrize("wrap", [Quantised, Detached, Binarised, NoisyInput])
def test_gradient_masking(digits_cnn, batch, wrap):
    gen = torch.Generator().manual_seed(0)
    fired = model_check(gradient_masking, wrap(digits_cnn), batch, gen, threat=True)
    assert fired.fired, fired.evidence
    silent = model_check(gradient_masking, digits_cnn, batch, torch.Generator().manual_seed(0), threat=True)
    assert not silent.fired, silent.evidence


def robust_under(attack, model, batch):
    return run_checked(attack, model, batch).robust


def test_transfer_gap_fires_on_an_attack_weaker_than_one_step(digits_cnn, batch):
    weak = PGD(THREAT, steps=2, step_size=0.02, random_start=False, seed=0)  # moves 4% of the budget
    fired = transfer_gap(digits_cnn, batch, weak, robust_under(weak, digits_cnn, batch))
    assert fired.fired, fired.evidence
    strong = APGD(THREAT, steps=50, seed=0)
    silent = transfer_gap(digits_cnn, batch, strong, robust_under(strong, digits_cnn, batch))
    assert not silent.fired, silent.evidence


def test_budget_curve_on_a_quantised_model(digits_cnn, batch):
    attack = PGD(THREAT, steps=10, seed=0)
    model = Quantised(digits_cnn)
    fired = budget_curve(model, batch, attack, robust_under(attack, model, batch))
    assert fired.fired and fired.values["largest_budget_accuracy"] > 0.1, fired.evidence
    silent = budget_curve(digits_cnn, batch, attack, robust_under(attack, digits_cnn, batch))
    assert not silent.fired and silent.values["largest_budget_accuracy"] <= 0.1, silent.evidence
    # a tiny L-inf budget is rerun over the whole value box, not at 10x nearly nothing
    tiny = PGD(LinfBall(1e-4, lower=0, upper=1), steps=10, seed=0)
    silent = budget_curve(digits_cnn, batch, tiny, robust_under(tiny, digits_cnn, batch))
    assert not silent.fired, silent.evidence


def test_budget_curve_counts_what_the_budget_already_broke(digits_cnn, batch):
    """An attack that is strong at the evaluated budget and fails at the huge rerun budget (here: a rerun that
    changes nothing) is not an evaluation failure: the balls are nested, so the envelope decides."""
    from mmrobust.attacks.base import Attack

    class NothingAtLargeBudgets(PGD):
        def perturb(self, victim, threats, target_labels, clean_logits):
            if next(iter(threats.values())).eps > 0.5:
                return dict(victim.inputs)
            return super().perturb(victim, threats, target_labels, clean_logits)

    assert issubclass(NothingAtLargeBudgets, Attack)
    attack = NothingAtLargeBudgets(LinfBall(0.3, lower=0, upper=1), steps=20, seed=0)
    robust = robust_under(attack, digits_cnn, batch)
    assert float(robust.float().mean()) <= 0.1  # strong at the budget
    check = budget_curve(digits_cnn, batch, attack, robust)
    assert not check.fired and "the rerun alone" in check.evidence, check.evidence


def test_accuracy_curve_check_sees_rises_and_plateaus():
    assert accuracy_curve_check([0.1, 0.2, 0.4], [0.5, 0.3, 0.0]).fired is False
    rise = accuracy_curve_check([0.2, 0.1, 0.4], [0.4, 0.3, 0.0])  # sorted by budget: 0.3, 0.4, 0.0
    assert rise.fired and "rises from 0.1 to 0.2" in rise.evidence
    assert accuracy_curve_check([1, 10], [0.5, 0.3]).fired                     # plateau far above 0
    assert not accuracy_curve_check([1, 10], [0.5, 0.3], unbounded=False).fired  # e.g. edge flips
    assert not accuracy_curve_check([1], [0.5]).ran


def test_unconverged_loss(digits_cnn, batch):
    slow = PGD(THREAT, steps=5, step_size=0.03, random_start=False, seed=0)  # still climbing at step 5
    fired = unconverged_loss(loss_trace(digits_cnn, batch, slow))
    assert fired.fired, fired.evidence
    silent = unconverged_loss(loss_trace(digits_cnn, batch, APGD(THREAT, steps=50, seed=0)))
    assert silent.ran and not silent.fired, silent.evidence


def test_late_restarts(digits_cnn, batch):
    # two random starts and one big step each, at a budget where about a third of the digits break
    restarts = PGD(LinfBall(0.15, lower=0, upper=1), steps=1, step_size=0.5, restarts=2, seed=0)
    trace = loss_trace(digits_cnn, batch, restarts)
    assert trace.margins.shape == (2, 2, 32)
    fired = late_restarts(trace)
    assert fired.fired, fired.evidence
    silent = late_restarts(loss_trace(digits_cnn, batch, APGD(THREAT, steps=50, restarts=2, seed=0)))
    assert silent.ran and not silent.fired, silent.evidence
    assert not late_restarts(loss_trace(digits_cnn, batch, APGD(THREAT, steps=5, seed=0))).ran  # one run


def test_black_box_beats_white_box_from_an_ensemble(digits_cnn, batch):
    members = [PGD(THREAT, steps=10, seed=0), Square(THREAT, n_queries=100, seed=0)]
    fired = all_checks(Quantised(digits_cnn), batch, {"ensemble": Ensemble(members, seed=0)})
    assert fired["black_box_beats_white_box"].fired, fired["black_box_beats_white_box"].evidence
    silent = all_checks(digits_cnn, batch, {"ensemble": Ensemble(members, seed=0)})
    assert silent["black_box_beats_white_box"].ran and not silent["black_box_beats_white_box"].fired


def test_masked_models_fire_several_checks_through_the_runner(digits_cnn, batch):
    found = all_checks(Binarised(digits_cnn), batch, {"pgd": PGD(THREAT, steps=10, seed=0),
                                                      "square": Square(THREAT, n_queries=100, seed=0)})
    fired = {name for name, c in found.items() if c.fired}
    assert {"zero_gradients", "gradient_masking", "black_box_beats_white_box"} <= fired


def test_checks_on_no_robust_output_say_not_applicable_not_passed(digits_cnn, batch):
    """At a budget that breaks everything there is nothing to compare: not 'passed on 0 of 0'."""
    everything = LinfBall(1.0, lower=0, upper=1)
    attack = APGD(everything, steps=10, seed=0)
    robust = robust_under(attack, digits_cnn, batch)
    assert not bool(robust.any())
    for check in (transfer_gap(digits_cnn, batch, attack, robust),
                  unconverged_loss(loss_trace(digits_cnn, batch, attack))):
        assert not check.ran and not check.fired and check.status == "not applicable", check.evidence
