"""Robust training objectives against hand-computed values of their paper definitions."""

import math

import pytest
import torch

from mmrobust.attacks import PGD
from mmrobust.objectives import (TradesAttack, ccat_lambda, ccat_loss, ccat_target, cross_entropy, mart_loss,
                                 other_class_confidence, trades_loss)
from mmrobust.threats import LinfBall


def logits_of(*probs):
    return torch.tensor(probs, dtype=torch.float64).log()


def test_cross_entropy_is_mean_negative_log_likelihood():
    logits = logits_of([0.25, 0.75], [0.5, 0.5])
    assert cross_entropy(logits, torch.tensor([1, 0])).item() == pytest.approx(
        -(math.log(0.75) + math.log(0.5)) / 2)


def test_trades_loss_matches_eq5_with_kl_from_clean_to_adversarial():
    clean = logits_of([0.25, 0.75], [0.9, 0.1])
    adv = logits_of([0.5, 0.5], [0.6, 0.4])
    y = torch.tensor([1, 0])
    beta = 6.0
    kl0 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    kl1 = 0.9 * math.log(0.9 / 0.6) + 0.1 * math.log(0.1 / 0.4)
    ce = -(math.log(0.75) + math.log(0.9)) / 2
    expected = ce + beta * (kl0 + kl1) / 2
    assert trades_loss(clean, adv, y, beta).item() == pytest.approx(expected, rel=1e-9)
    # the reverse direction KL(adv || clean) gives a different value: the direction matters
    reverse = ce + beta * (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
                           + 0.6 * math.log(0.6 / 0.9) + 0.4 * math.log(0.4 / 0.1)) / 2
    assert abs(trades_loss(clean, adv, y, beta).item() - reverse) > 0.1
    # beta = 0 is plain cross-entropy on the clean logits
    assert trades_loss(clean, adv, y, 0.0).item() == pytest.approx(ce)


def test_trades_loss_backpropagates_into_both_logits_and_leaves_them_alone():
    clean = torch.randn(4, 3, requires_grad=True)
    adv = torch.randn(4, 3, requires_grad=True)
    before = clean.detach().clone(), adv.detach().clone()
    trades_loss(clean, adv, torch.tensor([0, 1, 2, 0])).backward()
    assert clean.grad.abs().sum() > 0 and adv.grad.abs().sum() > 0
    assert torch.equal(clean.detach(), before[0]) and torch.equal(adv.detach(), before[1])


def test_mart_loss_matches_eq7():
    clean = logits_of([0.6, 0.3, 0.1], [0.2, 0.2, 0.6])
    adv = logits_of([0.2, 0.5, 0.3], [0.1, 0.1, 0.8])
    y = torch.tensor([0, 2])
    beta = 5.0
    # BCE(p', y) = -log p'_y - log(1 - max_{k != y} p'_k)
    bce0 = -math.log(0.2) - math.log(1 - 0.5)
    bce1 = -math.log(0.8) - math.log(1 - 0.1)
    kl0 = 0.6 * math.log(0.6 / 0.2) + 0.3 * math.log(0.3 / 0.5) + 0.1 * math.log(0.1 / 0.3)
    kl1 = 0.2 * math.log(0.2 / 0.1) + 0.2 * math.log(0.2 / 0.1) + 0.6 * math.log(0.6 / 0.8)
    expected = (bce0 + beta * kl0 * (1 - 0.6) + bce1 + beta * kl1 * (1 - 0.6)) / 2
    assert mart_loss(clean, adv, y, beta).item() == pytest.approx(expected, rel=1e-9)


def test_losses_reject_bad_arguments_naming_them():
    a, b = torch.zeros(2, 3), torch.zeros(2, 4)
    with pytest.raises(ValueError, match="logits_clean and logits_adv"):
        trades_loss(a, b, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="y must have shape"):
        mart_loss(a, a, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        trades_loss(a, a, torch.tensor([0, 1]), beta=-1.0)
    with pytest.raises(ValueError, match="rho must be a finite number > 0"):
        ccat_lambda(torch.zeros(2), rho=0.0)


def test_ccat_lambda_and_target_follow_the_power_transition():
    rel = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    lam = ccat_lambda(rel, rho=2.0)
    assert torch.allclose(lam, torch.tensor([0.0, 0.75, 1.0, 1.0], dtype=torch.float64))
    # default rho = 10: lambda = 1 - 0.9^10 at a tenth of the budget
    assert ccat_lambda(torch.tensor([0.1]))[0].item() == pytest.approx(1 - 0.9 ** 10, rel=1e-6)
    target = ccat_target(torch.tensor([1, 1, 1, 1]), 4, rel, rho=2.0)
    assert torch.allclose(target[0], torch.tensor([0, 1.0, 0, 0], dtype=torch.float64))
    assert torch.allclose(target[1], torch.tensor([0.1875, 0.4375, 0.1875, 0.1875], dtype=torch.float64))
    assert torch.allclose(target[2], torch.full((4,), 0.25, dtype=torch.float64))
    assert torch.allclose(target.sum(1), torch.ones(4, dtype=torch.float64))


def test_ccat_loss_averages_clean_ce_and_soft_ce_over_the_whole_batch():
    clean = logits_of([0.7, 0.2, 0.1])
    adv = logits_of([0.2, 0.5, 0.3], [0.6, 0.3, 0.1])
    y_clean, y_adv = torch.tensor([0]), torch.tensor([1, 0])
    rel = torch.tensor([0.5, 0.0], dtype=torch.float64)
    lam = 1 - 0.5 ** 3
    q = [lam / 3, (1 - lam) + lam / 3, lam / 3]
    soft = -sum(qk * math.log(pk) for qk, pk in zip(q, [0.2, 0.5, 0.3]))
    expected = (-math.log(0.7) + soft - math.log(0.6)) / 3
    assert ccat_loss(clean, y_clean, adv, y_adv, rel, rho=3.0).item() == pytest.approx(expected, rel=1e-9)


def test_other_class_confidence_is_the_best_wrong_log_probability():
    logits = logits_of([0.2, 0.5, 0.3], [0.1, 0.1, 0.8])
    out = other_class_confidence(logits, torch.tensor([1, 2]))
    assert torch.allclose(out, torch.tensor([math.log(0.3), math.log(0.1)], dtype=torch.float64))


def test_ccat_attack_finds_confident_mistakes(digits, digits_cnn):
    _, _, xt, yt = digits
    batch = [xt[:128], yt[:128]]
    threat = LinfBall(0.3, lower=0, upper=1)
    result = PGD(threat, steps=10, loss=other_class_confidence, seed=0)(digits_cnn, batch)
    assert result.clean_correct.float().mean() > 0.9
    assert result.adv_correct.float().mean() < 0.2
    assert result.confidence[result.success].mean() > 0.8  # mistakes made with high confidence
    assert bool(threat.contains(result.inputs["image"] - xt[:128], xt[:128]).all())


def test_trades_attack_maximises_kl_to_the_clean_prediction_inside_the_budget(digits, digits_cnn):
    _, _, xt, yt = digits
    x, y = xt[:128], yt[:128]
    x_before = x.clone()
    threat = LinfBall(0.1, lower=0, upper=1)
    attack = TradesAttack(threat, steps=10, seed=0)
    adv = attack.generate(digits_cnn, [x, y])[0]
    assert torch.equal(x, x_before)
    assert bool(threat.contains(adv - x, x).all())
    with torch.no_grad():
        log_clean = digits_cnn(x).log_softmax(1)
        kl = lambda z: (log_clean.exp() * (log_clean - z.log_softmax(1))).sum(1)  # noqa: E731
        kl_attack = kl(digits_cnn(adv))
        kl_random = kl(digits_cnn(x + threat.random_init(x, torch.Generator().manual_seed(1))))
    assert kl_attack.mean() > 10 * kl_random.mean()
    # the same seed reproduces the same examples
    again = TradesAttack(threat, steps=10, seed=0).generate(digits_cnn, [x, y])[0]
    assert torch.equal(adv, again)
    # the evaluation path reports the KL as its loss
    result = attack(digits_cnn, [x, y])
    assert torch.allclose(result.loss, kl(result.logits), atol=1e-5)
    assert result.adv_correct.float().mean() < result.clean_correct.float().mean() - 0.2
