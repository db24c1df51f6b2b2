"""AutoAttack's versions as Ensembles: standard (APGD-CE, APGD-T, FAB-T, Square), plus and rand."""

import pytest
import torch
from torch import nn

from mmrobust.attacks import APGD, APGDT, EOT, FAB, FABT, Ensemble, Square
from mmrobust.threats import L1Ball, L2Ball, LinfBall

BOX = dict(lower=0, upper=1)


def test_standard_is_autoattacks_list_with_its_budgets():
    threat = LinfBall(8 / 255, **BOX)
    apgd, apgdt, fabt, square = Ensemble.standard(threat).attacks
    assert (type(apgd), apgd.loss_name, apgd.steps, apgd.restarts) == (APGD, "ce", 100, 1)
    assert (type(apgdt), apgdt.loss_name, apgdt.steps, apgdt.n_target_classes) == (APGDT, "dlr", 100, 9)
    assert (type(fabt), fabt.steps, fabt.restarts, fabt.n_target_classes, fabt.cap) == (FABT, 100, 1, 9, True)
    assert (type(square), square.n_queries) == (Square, 5000)
    assert all(a.threat is threat for a in (apgd, apgdt, fabt, square))
    # the authors' L1 setting: 5 restarts for APGD-CE, 5 target classes, no Square
    l1 = Ensemble.standard(L1Ball(12.0, **BOX)).attacks
    assert [type(a) for a in l1] == [APGD, APGDT, FABT] and l1[0].restarts == 5 and l1[1].n_target_classes == 5


def test_plus_and_rand_versions():
    plus = Ensemble.plus(L2Ball(0.5, **BOX)).attacks
    assert [type(a) for a in plus] == [APGD, APGD, FAB, Square, APGDT, FABT]
    assert [a.loss_name for a in plus[:2]] == ["ce", "dlr"]
    assert plus[0].restarts == plus[2].restarts == plus[3].restarts == 5 and plus[2].cap and plus[5].cap
    rand = Ensemble.rand(LinfBall(0.3, **BOX)).attacks
    assert [type(a) for a in rand] == [EOT, EOT] and [a.samples for a in rand] == [20, 20]
    assert [a.attack.loss_name for a in rand] == ["ce", "dlr"]


def test_with_threat_reaches_every_member():
    ens = Ensemble.standard(LinfBall(0.1, **BOX), steps=5)
    other = LinfBall(0.2, **BOX)
    swept = ens.with_threat(other)
    assert swept.threat is other and all(a.threat is other for a in swept.attacks)
    assert all(a.threat.eps == 0.1 for a in ens.attacks)  # the original is unchanged
    rand = Ensemble.rand(LinfBall(0.1, **BOX), steps=5).with_threat(other)
    assert all(a.attack.threat is other for a in rand.attacks)


def test_standard_is_at_most_each_member_and_stays_in_the_budget(digits_cnn, digits):
    _, _, xt, yt = digits
    batch = (xt[:24], yt[:24])
    threat = LinfBall(0.1, **BOX)

    def make():
        return Ensemble.standard(threat, steps=8, n_target_classes=2, n_queries=40, seed=0)

    res = make()(digits_cnn, batch)
    alone = [int(a(digits_cnn, batch).robust.sum()) for a in make().attacks]
    assert int(res.robust.sum()) <= min(alone)
    assert bool(threat.contains(res.inputs["image"] - batch[0], batch[0]).all())
    assert [name for name, _ in res.extras["robust_after"]][2].startswith("FABT")



def test_standard_repeats_its_points_after_reseed(digits_cnn, digits):
    """A seeded ensemble called twice on the same batch, reseeded in between (as ``evaluate`` and the
    evaluation callback do), returns the same points and the same robust units: a robust accuracy is
    reproducible. Without the reseed the second call continues the random stream."""
    _, _, xt, yt = digits
    batch = (xt[:24], yt[:24])
    ens = Ensemble.standard(LinfBall(0.1, **BOX), steps=8, n_target_classes=2, n_queries=40, seed=0,
                            progress=False)
    first = ens(digits_cnn, batch)
    again = ens.reseed()(digits_cnn, batch)
    assert torch.equal(first.inputs["image"], again.inputs["image"])
    assert torch.equal(first.robust, again.robust)

class NoisyNet(nn.Module):
    """A randomised defence: Gaussian noise on the input at every forward pass, also in eval mode."""

    def __init__(self, model, sigma):
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x):
        return self.model(x + self.sigma * torch.randn_like(x))


def test_rand_runs_on_a_randomised_model(digits_cnn, digits):
    _, _, xt, yt = digits
    torch.manual_seed(0)
    res = Ensemble.rand(LinfBall(0.15, **BOX), steps=5, eot_samples=3)(NoisyNet(digits_cnn, 0.05), (xt[:16], yt[:16]))
    assert res.robust.float().mean() < res.clean_correct.float().mean()
    assert bool((res.size["image"] <= 0.15 + 1e-6).all())
