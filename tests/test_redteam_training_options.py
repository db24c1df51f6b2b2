"""Red team: RobustClassifier's optimiser and scheduler choices say what they do and refuse typos clearly."""

from __future__ import annotations

import pytest
import torch

from mmrobust.errors import check_choice
from mmrobust.training import RobustClassifier


def _optimizer(module: RobustClassifier) -> torch.optim.Optimizer:
    module.trainer = None
    out = module.configure_optimizers()
    return out["optimizer"] if isinstance(out, dict) else out


def test_adamw_gives_decoupled_weight_decay_and_adam_stays_coupled_l2():
    net = torch.nn.Linear(3, 2)
    # was refused: only "sgd" and "adam" (torch Adam: weight decay added to the gradient, i.e. L2, not AdamW)
    opt = _optimizer(RobustClassifier(net, optimizer="adamw", lr=1e-3, weight_decay=0.05))
    assert type(opt) is torch.optim.AdamW and opt.defaults["weight_decay"] == 0.05
    adam = _optimizer(RobustClassifier(net, optimizer="adam", lr=1e-3, weight_decay=0.05))
    assert type(adam) is torch.optim.Adam and adam.defaults["weight_decay"] == 0.05   # unchanged default path
    doc = RobustClassifier.__doc__
    assert "AdamW" in doc and "L2" in doc


def test_adamw_step_decays_the_weights_independently_of_the_gradient():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1, bias=False)
    w0 = net.weight.detach().clone()
    opt = _optimizer(RobustClassifier(net, optimizer="adamw", lr=0.1, weight_decay=0.5))
    net.weight.grad = torch.zeros_like(net.weight)       # no gradient: AdamW still shrinks by lr * wd
    opt.step()
    assert torch.allclose(net.weight.detach(), w0 * (1 - 0.1 * 0.5))


@pytest.mark.parametrize("kwargs, match", [
    (dict(scheduler="cosin"), r"scheduler must be one of .*'cosine'.*got 'cosin'.*did you mean 'cosine'"),
    (dict(optimizer="Adam"), r"optimizer must be one of .*got 'Adam'.*did you mean 'adam'"),
])
def test_a_mistyped_choice_is_a_clear_value_error(kwargs, match):
    # scheduler="cosin" raised TypeError: '<' not supported between 'str' and 'NoneType' (None is a choice)
    with pytest.raises(ValueError, match=match):
        RobustClassifier(torch.nn.Linear(3, 2), **kwargs)


def test_check_choice_lists_none_among_the_choices():
    with pytest.raises(ValueError, match=r"None"):
        check_choice("scheduler", "x", (None, "cosine"))
    assert check_choice("scheduler", None, (None, "cosine")) is None
