"""Budget sweeps (mmrobust.sweep): each budget's numbers are those of evaluate at that budget, a curve that
is not monotone is reported as measured, minimum-norm attacks give their minimal perturbations, and every
threat model takes a budget in its own unit."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mmrobust
from mmrobust.attacks import FGSM, FMN, PGD
from mmrobust.threats import EdgeFlips, Joint, L2Ball, LinfBall, PeakDBBall, SNRBall


def _tiny(seed: int = 0, n: int = 48, features: int = 10):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, features, generator=g)
    w = torch.randn(features, 3, generator=g)
    y = (x @ w).argmax(1)
    model = nn.Sequential(nn.Linear(features, 3))
    with torch.no_grad():
        model[0].weight.copy_(w.t())
        model[0].bias.zero_()
    return model.eval(), DataLoader(TensorDataset(x, y), batch_size=16)


class Periodic(nn.Module):
    """Correct (class 0) while cos(pi x / 0.2) > 0: FGSM's single full step breaks it at eps 0.1, lands on
    correct inputs again at 0.3 and breaks it at 0.5 -- robust accuracy not monotone in eps."""

    def forward(self, x):
        z = torch.cos(math.pi * x.sum(1) / 0.2)
        return torch.stack([z, torch.zeros_like(z)], 1)


def test_sweep_numbers_are_evaluate_at_each_budget_with_the_same_seed():
    model, loader = _tiny()
    budgets = [0.05, 0.2, 0.1]
    attacks = {"pgd": PGD(LinfBall(0.3, lower=0, upper=1), steps=5, seed=3),
               "fgsm": FGSM(LinfBall(0.3, lower=0, upper=1))}
    result = mmrobust.sweep(model, loader, attacks, budgets, progress=False, checks=False)  # checks: tests below
    assert [r["budget"] for r in result.rows()] == budgets  # one row per budget, in the order given
    assert result.budget_name == "eps (linf)"
    for i, b in enumerate(budgets):
        alone = mmrobust.evaluate(model, loader, {"pgd": PGD(LinfBall(b, lower=0, upper=1), steps=5, seed=3),
                                                  "fgsm": FGSM(LinfBall(b, lower=0, upper=1))}, progress=False,
                                  checks=False)
        assert result.per_attack["pgd"][i] == alone["per_attack"]["pgd"]
        assert result.per_attack["fgsm"][i] == alone["per_attack"]["fgsm"]
        assert result.robust_accuracy[i] == alone["robust_accuracy"]
        assert result.rows()[i]["clean"] == alone["clean_accuracy"]
    # the attacks took a real bite and the user's attacks keep their budget
    assert min(result.robust_accuracy) < result.clean_accuracy
    assert attacks["pgd"].threat.eps == 0.3
    xs, ys = result.curves()["worst case"]
    assert xs == sorted(budgets)


def test_a_curve_that_is_not_monotone_is_reported_as_measured():
    x = torch.linspace(0.01, 0.05, 8)[:, None]
    loader = DataLoader(TensorDataset(x, torch.zeros(8, dtype=torch.long)), batch_size=4)
    budgets = [0.0, 0.1, 0.3, 0.5]
    result = mmrobust.sweep(Periodic(), loader, [FGSM(LinfBall(0.1, lower=0, upper=1))], budgets, progress=False)
    assert result.robust_accuracy == [1.0, 0.0, 1.0, 0.0]
    monotone = next(c for c in result.checks if c["name"] == "sweep_monotone")  # the checks say so
    assert monotone["fired"] and "rises from 0.1 to 0.3" in monotone["evidence"]
    for b, acc in zip(budgets, result.per_attack["fgsm"]):
        assert acc == mmrobust.evaluate(Periodic(), loader, FGSM(LinfBall(b, lower=0, upper=1)),
                                        progress=False)["robust_accuracy"]


def test_minimum_norm_sizes_agree_with_the_curve():
    model, loader = _tiny(1)
    budgets = [0.05, 0.15, 0.4]
    result = mmrobust.sweep(model, loader, {"fmn": FMN(L2Ball(1.0, lower=0, upper=1), steps=30, seed=0)}, budgets,
                            progress=False, checks=False)
    sizes = result.min_norms["fmn"]
    assert len(sizes) == round(result.clean_accuracy * result.num_examples)
    assert all(s >= 0 for s in sizes)
    # an uncapped FMN's point counts at budget b when its size is within b: the histogram and the curve
    # are the same measurements (up to points on the boundary)
    for b, acc in zip(budgets, result.per_attack["fmn"]):
        robust = sum(s > b for s in sizes)
        assert abs(acc * result.num_examples - robust) <= 1
    summary = result.min_norm_summary()[0]
    assert summary["attack"] == "fmn" and summary["found"] <= summary["clean-correct outputs"]


def test_every_threat_model_takes_a_budget_in_its_own_unit():
    assert LinfBall(0.1, lower=0, upper=1).with_budget(0.3).eps == 0.3
    assert SNRBall(30).with_budget(20).snr_db == 20 and "larger = smaller" in SNRBall(30).budget_name
    assert PeakDBBall(-30).with_budget(-20).db == -20
    flips = EdgeFlips(0.1, local=True, max_flips_per_node=2).scaled(0.5)
    count = flips.with_budget(3)
    assert (count.count, count.fraction, count.scale, count.local, count.max_flips_per_node) == (3, None, 1.0, True, 2)
    assert flips.with_budget(0.25).fraction == 0.25
    assert count.budget_name == "edge flips per graph"
    with pytest.raises(ValueError, match="eps"):
        LinfBall(0.1).with_budget(-1)


def test_bad_budgets_and_joint_threats_are_refused_with_what_to_do():
    model, loader = _tiny()
    pgd = PGD(LinfBall(0.1, lower=0, upper=1), steps=1)
    with pytest.raises(ValueError, match="at least one budget"):
        mmrobust.sweep(model, loader, pgd, [], progress=False)
    with pytest.raises(TypeError, match="finite number"):
        mmrobust.sweep(model, loader, pgd, [0.1, "a"], progress=False)
    joint = PGD(Joint({"a": LinfBall(0.1), "b": LinfBall(0.1)}), steps=1)
    with pytest.raises(TypeError, match="one ThreatModel per attack"):
        mmrobust.sweep(model, loader, {"joint": joint}, [0.1], progress=False)
    pytest.importorskip("torch_geometric")
    from mmrobust.attacks import PRBCD

    with pytest.raises(ValueError, match="mix units"):  # a count and a fraction of edges
        mmrobust.sweep(model, loader, PRBCD(EdgeFlips(0.1)), [0.05, 1], progress=False)


def test_an_snr_sweep_reads_larger_levels_as_weaker():
    """A larger SNR is a smaller perturbation: accuracy rising with the SNR is what a working attack gives."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(24, 64, generator=g) - 0.5)
    model = nn.Sequential(nn.Linear(64, 4)).eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    loader = DataLoader(TensorDataset(x, y), batch_size=12)
    result = mmrobust.sweep(model, loader, PGD(SNRBall(30), steps=5, seed=0), [40, 20, 0], progress=False)
    assert not result.larger_budget_is_stronger
    assert result.robust_accuracy[0] > result.robust_accuracy[2]  # 40 dB: quiet, 0 dB: as loud as the signal
    monotone = next(c for c in result.checks if c["name"] == "sweep_monotone")
    assert not monotone["fired"], monotone["evidence"]
    off = mmrobust.sweep(model, loader, PGD(SNRBall(30), steps=1, seed=0), [40, 20], progress=False, checks=False)
    assert off.checks is None
