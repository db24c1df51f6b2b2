"""Red-team probe: a binary classifier with one sigmoid logit per output (a common user model).

Read as a one-class softmax model its cross-entropy is 0 everywhere (zero gradient) and argmax is always 0, so a
batch whose labels are all 0 (a class-sorted loader, batch size 1) used to pass as 100 % robust.
"""

import pytest
import torch
from torch import nn

from mmrobust import PGD, LinfBall, evaluate
from mmrobust.errors import LabelError


def _single_logit():
    torch.manual_seed(0)
    return nn.Linear(4, 1), torch.rand(6, 4)


def test_single_logit_model_is_refused_even_when_every_label_is_zero():
    model, x = _single_logit()
    y = torch.zeros(6, dtype=torch.long)
    with pytest.raises(LabelError, match="one logit per class"):
        PGD(LinfBall(0.1, lower=0, upper=1), steps=2)(model, (x, y))
    with pytest.raises(LabelError, match="one logit per class"):
        PGD(LinfBall(0.1, lower=0, upper=1), steps=2).generate(model, (x, y))
    with pytest.raises(LabelError, match="one logit per class"):
        evaluate(model, [(x[:1], y[:1])], PGD(LinfBall(0.1, lower=0, upper=1), steps=2), progress=False, checks=False)


def test_the_suggested_two_logit_wrapper_is_attacked():
    model, x = _single_logit()

    class TwoLogits(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, inputs):
            z = self.net(inputs)
            return torch.cat([-z, z], 1) / 2

    wrapped = TwoLogits(model)
    y = (model(x)[:, 0] > 0).long().detach()    # every output correct clean
    result = PGD(LinfBall(1.0, lower=0, upper=1), steps=5, seed=0)(wrapped, (x, y))
    assert bool(result.success.all())          # a budget covering the whole box breaks a linear model
