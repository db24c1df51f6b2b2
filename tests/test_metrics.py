"""Robustness metrics on hand-built AttackResults: exact values, worst case, distributed merging."""

from __future__ import annotations

import math

import pytest
import torch

from mmrobust.attacks import AttackResult
from mmrobust.metrics import (AttackSuccessRate, CleanAccuracy, ConfidenceThresholdedError, MinimalPerturbation,
                              RobustAccuracy)

C = 3


def logits_for(pred, confidence=None):
    """Logits predicting ``pred``; with ``confidence``, exactly that max-softmax probability."""
    pred = torch.as_tensor(pred)
    n = pred.numel()
    if confidence is None:
        confidence = torch.full((n,), 0.9)
    confidence = torch.as_tensor(confidence, dtype=torch.float32)
    other = (1 - confidence) / (C - 1)
    probs = other[:, None].expand(n, C).clone()
    probs[torch.arange(n), pred] = confidence
    return probs.log()


def result(target, clean_pred, adv_pred, *, success=None, size=None, clean_conf=None, adv_conf=None,
           name="attack"):
    target = torch.as_tensor(target)
    adv = torch.as_tensor(adv_pred)
    if success is None:
        success = adv != target
    n = target.numel()
    size = torch.zeros(n) if size is None else torch.as_tensor(size, dtype=torch.float32)
    x = torch.zeros(n, 1)
    return AttackResult(batch=(x, target), inputs={"image": x}, target=target,
                        clean_logits=logits_for(clean_pred, clean_conf), logits=logits_for(adv_pred, adv_conf),
                        success=torch.as_tensor(success), loss=torch.zeros(n), size={"image": size}, attack=name)


def test_robust_accuracy_exact_and_worst_case():
    y = [0, 1, 2, 0, 1, 2]
    clean = [0, 1, 2, 0, 1, 0]      # last one clean-wrong
    a1 = [0, 0, 2, 0, 1, 0]         # breaks output 1
    a2 = [0, 1, 2, 1, 1, 2]         # breaks output 3; output 5 adv-correct but clean-wrong
    r1, r2 = result(y, clean, a1), result(y, clean, a2)
    m = RobustAccuracy()
    m.update(r1)
    assert m.compute().item() == pytest.approx(4 / 6)
    worst = RobustAccuracy()
    worst.update([r1, r2])
    assert worst.compute().item() == pytest.approx(3 / 6)
    assert worst.clean_accuracy().item() == pytest.approx(5 / 6)
    clean_metric = CleanAccuracy()
    clean_metric.update([r1, r2])
    assert clean_metric.compute().item() == pytest.approx(5 / 6)
    # accumulates over batches
    worst.update(result([1, 1], [1, 1], [1, 0]))
    assert worst.compute().item() == pytest.approx(4 / 8)


def test_robust_accuracy_rejects_results_of_different_batches():
    m = RobustAccuracy()
    with pytest.raises(ValueError, match="same batch"):
        m.update([result([0, 1], [0, 1], [0, 1]), result([1, 1], [0, 1], [0, 1])])
    with pytest.raises(TypeError, match="results must be an AttackResult"):
        m.update([])


def test_attack_success_rate_untargeted_and_targeted():
    y = [0, 1, 2, 0]
    clean = [0, 1, 2, 1]            # 3 clean-correct
    m = AttackSuccessRate()
    m.update(result(y, clean, [1, 1, 0, 2]))   # flips outputs 0 and 2 of the 3 correct ones
    assert m.compute().item() == pytest.approx(2 / 3)
    # targeted: success = reached target; output 1 flipped but missed its target -> not a success
    targeted = result(y, clean, [2, 0, 1, 2], success=[True, False, True, True])
    t = AttackSuccessRate()
    t.update(targeted)
    assert t.compute().item() == pytest.approx(2 / 3)
    assert math.isnan(AttackSuccessRate().compute().item())


def test_merge_state_matches_single_metric():
    """What DDP does: per-process states reduced with dist_reduce_fx give the single-process value."""
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        y = torch.randint(0, C, (7,), generator=gen)
        clean = torch.where(torch.rand(7, generator=gen) < 0.8, y, (y + 1) % C)
        adv = torch.where(torch.rand(7, generator=gen) < 0.5, y, (y + 2) % C)
        conf = torch.rand(7, generator=gen) * 0.6 + 0.35
        batches.append(result(y, clean, adv, size=torch.rand(7, generator=gen), clean_conf=conf,
                              adv_conf=conf.flip(0)))
    for cls in (RobustAccuracy, AttackSuccessRate, MinimalPerturbation, ConfidenceThresholdedError):
        whole, part_a, part_b = cls(), cls(), cls()
        for i, r in enumerate(batches):
            whole.update(r)
            (part_a if i % 2 == 0 else part_b).update(r)
        part_a.merge_state(part_b)
        expected, merged = whole.compute(), part_a.compute()
        if isinstance(expected, dict):
            for k in expected:
                assert merged[k].item() == pytest.approx(expected[k].item()), (cls.__name__, k)
        else:
            assert merged.item() == pytest.approx(expected.item()), cls.__name__


def test_minimal_perturbation_median_and_curve():
    y = [0, 0, 0, 0, 0, 0]
    clean = [0, 0, 0, 0, 0, 1]                      # last clean-wrong -> size 0
    adv = [1, 1, 1, 1, 0, 1]                        # output 4 never broken -> inf
    size = [0.1, 0.3, 0.2, 0.4, 0.05, 0.7]
    m = MinimalPerturbation()
    m.update(result(y, clean, adv, size=size))
    # sizes: 0.1 0.3 0.2 0.4 inf 0 -> sorted 0 .1 .2 .3 .4 inf -> median (0.2+0.3)/2
    assert m.compute().item() == pytest.approx(0.25)
    curve = m.accuracy_curve([0.0, 0.15, 0.3, 1.0])
    assert curve.tolist() == pytest.approx([5 / 6, 4 / 6, 2 / 6, 1 / 6])
    with pytest.raises(ValueError, match="eps_grid"):
        m.accuracy_curve([-1.0])


def test_minimal_perturbation_median_is_inf_when_mostly_unbroken():
    m = MinimalPerturbation()
    m.update(result([0, 0, 0], [0, 0, 0], [0, 0, 1], size=[1.0, 1.0, 0.5]))
    assert m.compute().item() == math.inf


def test_confidence_threshold_keeps_tpr_of_correct_clean_examples():
    gen = torch.Generator().manual_seed(1)
    n = 1000
    y = torch.zeros(n, dtype=torch.long)
    clean = torch.where(torch.rand(n, generator=gen) < 0.9, 0, 1)
    conf = torch.rand(n, generator=gen) * 0.6 + 0.4
    m = ConfidenceThresholdedError(tpr=0.99)
    r = result(y, clean, clean, clean_conf=conf, adv_conf=conf)
    m.update(r)
    tau = m.compute()["threshold"].item()
    conf = r.clean_logits.softmax(1).amax(1)
    correct = clean == 0
    kept = (conf[correct] >= tau).float().mean().item()
    assert kept >= 0.99
    # the largest such threshold: one step up keeps fewer than 99%
    above = conf[correct][conf[correct] > tau].min()
    assert (conf[correct] >= above).float().mean().item() < 0.99


def test_confidence_thresholded_error_follows_the_paper_definition():
    y = [0, 0, 0, 0, 0, 0, 0]
    clean = [0, 0, 0, 0, 1, 1, 1]
    clean_conf = [0.9, 0.9, 0.9, 0.5, 0.9, 0.5, 0.5]
    adv = [1, 1, 0, 1, 1, 1, 2]
    adv_conf = [0.9, 0.5, 0.9, 0.5, 0.9, 0.5, 0.9]
    m = ConfidenceThresholdedError(threshold=0.8)
    m.update(result(y, clean, adv, clean_conf=clean_conf, adv_conf=adv_conf))
    out = m.compute()
    # numerator: 0 (adv wrong, confident), 4 (clean wrong, confident), 6 (clean wrong unconfident, adv wrong
    # confident) -> 3; denominator: 0, 1, 2 (clean confident), 4, 6 (adv confident); 3 and 5 rejected both ways
    assert out["robust_error"].item() == pytest.approx(3 / 5)
    # clean: confident clean examples 0, 1, 2, 4; of them 4 is wrong
    assert out["clean_error"].item() == pytest.approx(1 / 4)
    assert out["threshold"].item() == pytest.approx(0.8)
    # tau = 0: plain robust error; outputs 0, 1, 3 broken, 4, 5 and 6 clean-wrong
    assert out["robust_error_unthresholded"].item() == pytest.approx(6 / 7)


def test_confidence_worst_case_over_attacks():
    y = [0, 0]
    clean, clean_conf = [0, 0], [0.5, 0.5]
    # output 0: attack 1 misclassifies with low confidence, attack 2 with high confidence -> error
    # output 1: both correct; attack 2 at low confidence -> dropped from the denominator
    r1 = result(y, clean, [1, 0], clean_conf=clean_conf, adv_conf=[0.5, 0.9])
    r2 = result(y, clean, [2, 0], clean_conf=clean_conf, adv_conf=[0.9, 0.5])
    m = ConfidenceThresholdedError(threshold=0.8)
    m.update([r1, r2])
    assert m.compute()["robust_error"].item() == pytest.approx(1.0)
    single = ConfidenceThresholdedError(threshold=0.8)
    single.update(r1)
    assert single.compute()["robust_error"].item() == pytest.approx(0.0)


@pytest.mark.parametrize("kwargs, match", [({"tpr": 0.0}, "tpr"), ({"tpr": 1.5}, "tpr"),
                                           ({"threshold": 2.0}, "threshold")])
def test_confidence_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConfidenceThresholdedError(**kwargs)


def test_minimal_perturbation_from_a_real_minimal_norm_attack(digits, digits_cnn):
    from mmrobust.attacks import FMN, PGD
    from mmrobust.threats import L2Ball, LinfBall

    _, _, xt, yt = digits
    batch = (xt[:100], yt[:100])
    fmn = FMN(L2Ball(1.0, lower=0.0, upper=1.0), steps=50, seed=0)
    res = fmn(digits_cnn, batch)
    m = MinimalPerturbation()
    m.update(res)
    median = m.compute().item()
    assert 0 < median < math.inf
    grid = torch.linspace(0, 3 * median, 7)
    curve = m.accuracy_curve(grid)
    assert curve[0].item() == pytest.approx(res.clean_correct.float().mean().item())
    assert bool((curve[1:] <= curve[:-1]).all())  # accuracy never grows with the budget
    assert m.accuracy_curve([median]).item() <= 0.5  # half of all outputs are broken within the median
    assert curve[-1].item() < 0.2
    # an L-inf minimal size is a certificate of a successful bounded attack: PGD at a slightly larger budget
    linf = MinimalPerturbation()
    linf.update(FMN(LinfBall(1.0, lower=0.0, upper=1.0), steps=50, seed=0)(digits_cnn, batch))
    eps = linf.compute().item()
    pgd = PGD(LinfBall(eps * 1.05, lower=0.0, upper=1.0), steps=20, restarts=2, seed=0)(digits_cnn, batch)
    assert pgd.robust.float().mean().item() <= 0.5 + 0.1
