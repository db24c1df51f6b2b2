"""Red team: one random-stream semantics for every seeded attack.

A seeded attack draws from a generator created from ``seed`` on its first call and *continued* by later
calls (training attacks must draw new random starts every step); ``attack.reseed()`` restarts it, and the
evaluation entry points (``evaluate``, ``RobustnessEvaluation``, sweeps, checks) restart it on private
copies. So two fresh objects give the same points, and a call after ``reseed()`` repeats the first call.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmrobust.attacks import (APGD, EOT, FAB, FGSM, FGSMRS, FMN, PGD, CTCTargetedAttack, Ensemble,
                              MinimalNormSearch, Square)
from mmrobust.threats import LinfBall, PeakDBBall
from mmrobust.utils import toy_problem

T = LinfBall(0.1, lower=0, upper=1)


def _noise(v, generator=None):
    return v + 0.01 * torch.randn(v.shape, generator=generator)


IMAGE = {
    "PGD": lambda: PGD(T, steps=2, random_start=True, seed=0),
    "FGSM": lambda: FGSM(T, random_start=True, seed=0),
    "FGSMRS": lambda: FGSMRS(T, seed=0),
    "APGD": lambda: APGD(T, steps=3, restarts=2, seed=0),
    "FMN": lambda: FMN(T, steps=3, seed=0),
    "FAB": lambda: FAB(T, steps=2, restarts=2, seed=0),
    "Square": lambda: Square(T, n_queries=15, seed=0),
    "EOT": lambda: EOT(PGD(T, steps=2, random_start=True, seed=0), _noise, samples=2, seed=0),
    "Ensemble": lambda: Ensemble([PGD(T, steps=2, random_start=True, seed=0), Square(T, n_queries=10, seed=0)]),
    "MinimalNormSearch": lambda: MinimalNormSearch(PGD(T, steps=2, random_start=True, seed=0)),
}


@pytest.mark.parametrize("name", sorted(IMAGE))
def test_image_attacks_repeat_from_a_fresh_object_and_after_reseed(name):
    model, x, y = toy_problem()
    a, b = IMAGE[name](), IMAGE[name]()
    first = a(model, [x, y]).inputs["image"]
    assert torch.equal(first, b(model, [x, y]).inputs["image"])
    a(model, [x, y])
    a.reseed()
    assert torch.equal(first, a(model, [x, y]).inputs["image"])


def test_graph_attacks_repeat_from_a_fresh_object_and_after_reseed():
    pytest.importorskip("torch_geometric")
    from mmrobust.attacks import DICE, GRBCD, PRBCD, RandomFlips
    from mmrobust.graph.data import toy_graph
    from mmrobust.threats import EdgeFlips

    model, data = toy_graph(0, 30)
    makers = [lambda: PRBCD(EdgeFlips(4), block_size=50, epochs=4, progress=False, seed=0),
              lambda: GRBCD(EdgeFlips(4), block_size=50, epochs=2, seed=0),
              lambda: DICE(EdgeFlips(4), seed=0), lambda: RandomFlips(EdgeFlips(4), seed=0)]
    for make in makers:
        a, b = make(), make()
        first = a(model, data).inputs["edge_index"]
        assert torch.equal(first, b(model, data).inputs["edge_index"])
        second = a(model, data).inputs["edge_index"]
        assert not (second.shape == first.shape and torch.equal(second, first))   # the stream continued
        a.reseed()
        assert torch.equal(first, a(model, data).inputs["edge_index"])


class _FrameModel(nn.Module):
    """10 frames of 40 samples, 5 classes (a CTC recogniser's output shape)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Unflatten(1, (10, 40)), nn.Linear(40, 5))

    def forward(self, w):
        return self.net(w)


def test_the_ctc_eot_attack_follows_the_same_semantics():
    model = _FrameModel().eval()
    wave = 0.1 * torch.randn(2, 400, generator=torch.Generator().manual_seed(0))
    make = lambda: CTCTargetedAttack(PeakDBBall(-10.0), steps=3, transforms=_noise, samples=2, seed=0)  # noqa: E731
    a, b = make(), make()
    first = a(model, wave, [[3, 1], [2]]).wave
    assert torch.equal(first, b(model, wave, [[3, 1], [2]]).wave)
    second = a(model, wave, [[3, 1], [2]]).wave
    # the generator was re-created at seed inside every call, unlike every other seeded attack
    assert not torch.equal(second, first)
    a.reseed()
    assert torch.equal(first, a(model, wave, [[3, 1], [2]]).wave)


def test_ctc_without_a_seed_draws_from_the_global_generator_like_other_attacks():
    model = _FrameModel().eval()
    wave = 0.1 * torch.randn(2, 400, generator=torch.Generator().manual_seed(0))
    attack = CTCTargetedAttack(PeakDBBall(-10.0), steps=3, transforms=_noise, samples=2, seed=None)
    torch.manual_seed(1)
    one = attack(model, wave, [[3, 1], [2]]).wave
    torch.manual_seed(2)
    two = attack(model, wave, [[3, 1], [2]]).wave
    torch.manual_seed(1)
    assert not torch.equal(one, two)      # seed=None was silently seed 0
    assert torch.equal(one, attack(model, wave, [[3, 1], [2]]).wave)
