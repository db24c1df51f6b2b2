"""Red team: CCAT forwards the clean and the adversarial half as one batch, as Stutz et al.'s code does."""

from __future__ import annotations

import copy

import torch
from torch import nn

from mmrobust.attacks import PGD
from mmrobust.objectives import ccat_loss, other_class_confidence
from mmrobust.threats import LinfBall
from mmrobust.training import RobustClassifier


def _attack():
    return PGD(LinfBall(0.1, lower=0, upper=1), steps=2, loss=other_class_confidence, seed=0)


def test_ccat_step_runs_batch_norm_once_on_the_mixed_batch():
    # the halves went through the model separately in train mode: batch norm normalised each half with its own
    # statistics and moved its running statistics twice per step (num_batches_tracked 2), where the reference
    # (confidence_calibrated_adversarial_training.py: torch.cat((clean_inputs, adversarial_inputs))) runs once
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    twin = copy.deepcopy(net)
    module = RobustClassifier(net, objective="ccat", attack=_attack())
    module.log = lambda *args, **kwargs: None
    x, y = torch.rand(10, 6), torch.randint(0, 3, (10,))
    module.train()
    loss = module.training_step((x, y), 0)
    assert int(net[1].num_batches_tracked) == 1

    twin.eval()   # the reference step: attack the second half in eval mode, one train-mode pass on the concatenation
    x_adv = _attack()(twin, (x[5:], y[5:])).inputs["image"]
    twin.train()
    logits = twin(torch.cat([x[:5], x_adv]))
    relative = (x_adv - x[5:]).abs().amax(1) / 0.1
    expected = ccat_loss(logits[:5], y[:5], logits[5:], y[5:], relative, 10.0)
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.equal(net[1].running_mean, twin[1].running_mean)
