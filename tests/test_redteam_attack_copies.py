"""Red team: the copies evaluation attacks with never reach back into the user's objects."""

from __future__ import annotations

import torch

from mmrobust import evaluate
from mmrobust.attacks import FGSMRS
from mmrobust.callbacks import FastAdversarialTraining
from mmrobust.threats import LinfBall
from mmrobust.utils import toy_problem


def test_evaluating_the_grad_align_training_attack_leaves_the_callbacks_gradient_alone():
    model, x, y = toy_problem()
    threat = LinfBall(0.1, lower=0, upper=1)
    training = FastAdversarialTraining(threat, method="grad_align", probe_every_n_steps=0)
    assert training.alignment.first_gradient is None
    evaluate(model, [[x, y]], {"fgsm": training.attack}, progress=False, checks=False)
    # the private copy shared the bound hook: the evaluation batch's gradient was left in the training
    # callback, where GradAlign would use it as the next training batch's clean gradient on steps the
    # training attack skips (every_n_steps, start_epoch)
    assert training.alignment.first_gradient is None
    assert training.attack.on_gradient == training.alignment.keep      # the training wiring itself is kept


def test_a_private_copy_does_not_call_the_users_gradient_hook():
    model, x, y = toy_problem()
    seen = []
    attack = FGSMRS(LinfBall(0.1, lower=0, upper=1), seed=0)
    attack.on_gradient = seen.append
    attack.private_copy()(model, [x, y])
    assert seen == []
    attack(model, [x, y])                  # the user's own object still reports its gradients
    assert len(seen) == 1 and torch.is_tensor(seen[0]["image"])
