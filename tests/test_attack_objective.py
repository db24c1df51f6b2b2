"""An attack call's objective (loss, success test, reference point) travels as an argument, never on the
attack: ``Attack.run(victim, objective=...)`` (mmrobust/attacks/attack_objective.py)."""

import copy

import torch

from mmrobust.attacks import APGDT, EOT, PGD, AttackObjective, attack_mode
from mmrobust.attacks.base import victim_for
from mmrobust.attacks.losses import dlr, margin
from mmrobust.objectives import TradesAttack
from mmrobust.threats import LinfBall

THREAT = LinfBall(0.1, lower=0, upper=1)


def _victim(model, x, y):
    return victim_for(model, [x, y])


def _state(attack):
    return {k: v for k, v in vars(attack).items() if k != "_generator"}


def test_an_explicit_objective_replaces_the_attacks_loss(digits, digits_cnn):
    x, y = digits[0][:16], digits[1][:16]
    with attack_mode(digits_cnn):
        given = PGD(THREAT, steps=3, seed=0).run(_victim(digits_cnn, x, y), objective=AttackObjective(margin))
    assert torch.equal(given.inputs["image"], PGD(THREAT, steps=3, seed=0, loss="margin")(digits_cnn, [x, y]).inputs["image"])


def test_explicit_targets_in_the_objective_mean_reaching_them(digits, digits_cnn):
    x, y = digits[0][:16], digits[1][:16]
    targets = (y + 1) % 10
    attack = APGDT(THREAT, steps=5, seed=0)
    with attack_mode(digits_cnn):
        given = attack.run(_victim(digits_cnn, x, y),
                           objective=AttackObjective(dlr, targets=targets, targeted=True, reach_targets=True))
    reference = APGDT(THREAT, steps=5, seed=0)(digits_cnn, [x, y], target_labels=targets)
    assert torch.equal(given.success, reference.success)
    assert torch.equal(given.success, given.logits.argmax(1) == targets)


def test_trades_reference_given_by_a_composite(digits, digits_cnn):
    x, y = digits[0][:16], digits[1][:16]
    attack = TradesAttack(THREAT, steps=3, seed=0)
    with attack_mode(digits_cnn):
        victim = _victim(digits_cnn, x, y)
        with torch.no_grad():
            clean = digits_cnn(x)
        objective = attack.objective_for(victim, None, clean)
        given = attack.run_training(victim, objective=objective)["image"]
    assert torch.equal(objective.reference, clean.log_softmax(1))
    assert torch.equal(given, TradesAttack(THREAT, steps=3, seed=0).generate(digits_cnn, [x, y])[0])


def test_no_call_leaves_state_on_the_attack(digits, digits_cnn):
    x, y = digits[0][:16], digits[1][:16]
    for attack in (APGDT(THREAT, steps=3, seed=0), TradesAttack(THREAT, steps=2, seed=0),
                   EOT(TradesAttack(THREAT, steps=2, seed=0), [lambda v, g: v], samples=1)):
        before = copy.copy(_state(attack))
        attack(digits_cnn, [x, y])
        attack(digits_cnn, [x, y], target_labels=(y + 1) % 10) if attack.targeted else None
        attack.generate(digits_cnn, [x, y], **({"target_labels": (y + 1) % 10} if attack.targeted else {}))
        assert attack.objective is None
        assert _state(attack).keys() == before.keys() and all(_state(attack)[k] is before[k] for k in before)
