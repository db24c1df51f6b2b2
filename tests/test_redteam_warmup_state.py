"""Red team: the budget warm-up's copies of a training attack keep the attack's progress on the user's object."""

from __future__ import annotations

import torch

from mmrobust.attacks import AmortizedAttack, ConvPerturbationGenerator
from mmrobust.callbacks.adversarial import attack_at_budget
from mmrobust.threats import LinfBall
from mmrobust.utils import toy_problem


def test_generator_updates_during_the_warm_up_are_counted_on_the_users_attack():
    model, x, y = toy_problem()
    torch.manual_seed(0)
    attack = AmortizedAttack(LinfBall(0.1, lower=0, upper=1), ConvPerturbationGenerator(channels=1, width=4),
                             online=True, online_steps=2)
    warm = attack_at_budget(attack, 0.5)          # what AdversarialTraining(warmup_epochs=...) attacks with
    assert warm is not attack
    warm.generate(model, [x, y])
    # the copy counted its two generator updates on itself: the user's attack said 0 (and so did its
    # checkpoint), although its generator and optimiser had taken both steps
    assert attack.updates == 2 and attack.state_dict()["updates"] == 2
    attack.with_threat(LinfBall(0.05, lower=0, upper=1)).update(model, [x, y])
    assert attack.updates == 3
    attack.load_state_dict({**attack.state_dict(), "updates": 7})
    assert attack.updates == 7 and warm.updates == 7
