"""Red team: MaskingPenaltyAttack's first stage must pursue the attack's own goal."""

from __future__ import annotations

import pytest
import torch

from mmrobust import PGD
from mmrobust.attacks import MaskingPenalty, MaskingPenaltyAttack
from mmrobust.threats import SNRBall


def test_a_start_with_another_goal_is_refused_when_built():
    masking = MaskingPenalty(16000, n_fft=256)
    with pytest.raises(ValueError, match=r"start.targeted=True, targeted=False"):
        # ran, then failed inside the first stage with AttributeError: 'bool' object has no attribute 'float'
        MaskingPenaltyAttack(SNRBall(20), masking, start=PGD(SNRBall(20), steps=2, targeted=True))
    x = 0.1 * torch.randn(4, 1600, generator=torch.Generator().manual_seed(0))
    model = torch.nn.Linear(1600, 3).eval()
    y = model(x).argmax(1)
    attack = MaskingPenaltyAttack(SNRBall(20), masking, steps=5, start=PGD(SNRBall(20), steps=3, seed=0))
    result = attack(model, [x, y])
    delta = result.inputs["image"] - x
    assert bool((10 * torch.log10(x.pow(2).sum(1) / delta.pow(2).sum(1)) >= 20 - 1e-3).all())
