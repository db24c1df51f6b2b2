"""Red team follow-up: with ``replace=True`` the student's BatchNorm statistics come from the distillation
objective's train-mode passes, as in the papers' reference code (RSLAD: adversarial then clean pass, the
attack in eval mode on the statistics from before the step; ARD: adversarial and clean pass), not from the
LightningModule's own pass, whose gradient is discarded."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _reliability_common import trainer
from mmrobust import PGD, LinfBall
from mmrobust.callbacks import Distillation
from mmrobust.compression import DistillationObjective


class BNStudent(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(4 * 64, 3))
        self.start = None

    def forward(self, x):
        return self.net(x)

    def on_train_batch_start(self, batch, batch_idx):
        self.__dict__["start"] = copy.deepcopy(self.net)   # the student before the step (not a submodule)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def teacher() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=g) * 2 + 1          # far from BN's initial statistics (0, 1)
    return x, torch.randint(0, 3, (16,), generator=g)


def _attack():
    return PGD(LinfBall(0.1, lower=0, upper=3), steps=3, seed=0)


def _fit(tmp_path, callback):
    x, y = _data()
    student = BNStudent()
    trainer(tmp_path, [callback], max_steps=1).fit(student, DataLoader(TensorDataset(x, y), batch_size=16))
    return student, x, y


def _buffers(net):
    return [b.detach().clone() for b in net.buffers()]


def test_rslad_statistics_are_the_objectives_adversarial_then_clean_pass(tmp_path):
    callback = Distillation(teacher(), method="rslad", attack=_attack())          # alpha 5/6: a clean term
    student, x, y = _fit(tmp_path, callback)
    # the reference: from the statistics before the step, attack (eval), then train-mode adversarial and
    # clean passes (zibojia/RSLAD rslad_loss.py + *_rslad_*.py)
    reference = copy.deepcopy(student.start).train()
    DistillationObjective(teacher(), method="rslad", attack=_attack())(reference, [x, y])
    assert int(student.net[1].num_batches_tracked) == 2                   # was 1: the module's own pass
    for got, want in zip(_buffers(student.net), _buffers(reference)):
        assert torch.allclose(got.float(), want.float(), atol=1e-6)


def test_ard_at_alpha_one_keeps_the_modules_clean_pass_then_the_adversarial_pass(tmp_path):
    callback = Distillation(teacher(), method="ard", attack=_attack(), temperature=1.0)   # alpha 1: no clean term
    student, x, y = _fit(tmp_path, callback)
    reference = copy.deepcopy(student.start).train()
    reference(x)                                          # the module's own (clean) pass stands in for ARD's
    DistillationObjective(teacher(), method="ard", attack=_attack(), temperature=1.0)(reference, [x, y])
    assert int(student.net[1].num_batches_tracked) == 2                   # was 1: the adversarial pass was dropped
    for got, want in zip(_buffers(student.net), _buffers(reference)):
        assert torch.allclose(got.float(), want.float(), atol=1e-6)


def test_kd_replaces_the_modules_pass_by_its_own_clean_pass(tmp_path):
    student, x, y = _fit(tmp_path, Distillation(teacher(), method="kd"))
    reference = copy.deepcopy(student.start).train()
    reference(x)
    assert int(student.net[1].num_batches_tracked) == 1                   # one clean pass, not two
    for got, want in zip(_buffers(student.net), _buffers(reference)):
        assert torch.allclose(got.float(), want.float(), atol=1e-6)


class Boom(RuntimeError):
    pass


def test_an_exception_in_the_objective_leaves_the_modules_statistics(tmp_path):
    callback = Distillation(teacher(), method="rslad", attack=_attack())
    after_own_pass = {}

    def failing(model, batch):
        after_own_pass["buffers"] = _buffers(model)          # restored to before the step by now
        model(batch[0] * 5)
        raise Boom()

    callback.objective = type("Failing", (), {"runs_clean_pass": True, "__call__": staticmethod(failing),
                                              "teacher": callback.objective.teacher,
                                              "attack": None, "method": "rslad"})()
    x, y = _data()
    student = BNStudent()
    with pytest.raises(Boom):
        trainer(tmp_path, [callback], max_steps=1).fit(student, DataLoader(TensorDataset(x, y), batch_size=16))
    reference = copy.deepcopy(student.start).train()
    assert all(torch.equal(a, b) for a, b in zip(after_own_pass["buffers"], _buffers(reference)))
    reference(x)                                          # as the module's own pass left them
    assert all(torch.allclose(a.float(), b.float()) for a, b in zip(_buffers(student.net), _buffers(reference)))
    assert callback._batch is None and callback._buffers_before_step is None
