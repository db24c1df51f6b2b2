"""Red team: CTCTargetedAttack refuses target phrases the model cannot emit, before touching F.ctc_loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmrobust.attacks import CTCTargetedAttack
from mmrobust.threats import LinfBall


def tiny_recogniser():
    torch.manual_seed(0)
    return nn.Sequential(nn.Unflatten(1, (10, 40)), nn.Linear(40, 5)).eval()  # 10 frames, 5 classes (0 = blank)


@pytest.mark.parametrize("targets, message", [
    ([[0, 1], [3]], r"targets\[0\] holds label 0.*blank"),         # the blank: silently never reachable
    ([[7, 1], [3]], r"targets\[0\] holds label 7.*\[0, 4\]"),      # out of range: ctc_loss read past the scores
    ([[3], [-1]], r"targets\[1\] holds label -1"),                 # negative: ctc_loss corrupted memory (crash)
    ([[3], [1, 1, 1, 1, 1, 1]], r"targets\[1\] needs 11 output frames.*gives 10"),  # repeats need blanks between
])
def test_unreachable_targets_are_refused_with_the_reason(targets, message):
    model, wave = tiny_recogniser(), 0.1 * torch.randn(2, 400, generator=torch.Generator().manual_seed(0))
    attack = CTCTargetedAttack(LinfBall(0.5, lower=-1, upper=1), steps=3)
    with pytest.raises(ValueError, match=message):
        attack(model, wave, targets)
    with pytest.raises(ValueError, match=r"blank must be a class index in \[0, 4\]"):
        CTCTargetedAttack(LinfBall(0.5, lower=-1, upper=1), steps=3, blank=5)(model, wave, [[1], [2]])
    # a phrase with repeats that fits is accepted
    res = attack(model, wave, [[1, 1, 2], [3]])
    assert res.wave.shape == wave.shape
