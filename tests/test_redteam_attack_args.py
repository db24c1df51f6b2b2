"""Red team: attacks whose loss is fixed by their method refuse another loss instead of dropping it silently."""

from __future__ import annotations

import pytest

from mmrobust.attacks import FAB, FABT, FMN, Square
from mmrobust.threats import LinfBall


@pytest.mark.parametrize("cls", [FAB, FABT, FMN, Square])
def test_a_loss_the_attack_cannot_use_is_refused(cls):
    threat = LinfBall(0.1, lower=0, upper=1)
    with pytest.raises(ValueError, match=rf"{cls.__name__} optimises the margin loss.*loss='ce'"):
        cls(threat, loss="ce")   # was accepted and replaced by the margin loss without a word
    assert "loss=margin" in cls(threat, loss="margin").describe()
    assert "loss=margin" in cls(threat).describe()


def test_trades_attack_refuses_a_loss():
    from mmrobust.objectives import TradesAttack

    with pytest.raises(ValueError, match=r"TradesAttack maximises the KL.*loss='ce'"):
        TradesAttack(LinfBall(0.1, lower=0, upper=1), loss="ce")   # was silently replaced by the KL
