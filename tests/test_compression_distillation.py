"""Distillation objectives (KD, ARD, RSLAD), the Distillation callback and compression_report."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _reliability_common import LitClassifier
from mmrobust import PGD, LinfBall
from mmrobust.callbacks import Distillation
from mmrobust.compression import (DistillationObjective, compression_report, kd_loss, prune_magnitude,
                                  quantize_model)
from tests.conftest import make_digits_cnn


def test_kd_loss_definition():
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    assert kd_loss(s, t, y, alpha=0.0) == pytest.approx(nn.functional.cross_entropy(s, y).item())
    assert kd_loss(t, t, y, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)
    T = 3.0
    kl = nn.functional.kl_div(nn.functional.log_softmax(s / T, 1), nn.functional.softmax(t / T, 1),
                              reduction="batchmean")
    assert kd_loss(s, t, y, temperature=T, alpha=1.0).item() == pytest.approx(T * T * kl.item(), rel=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, t, y, temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(s, t, y, alpha=2)


def small_student() -> LitClassifier:
    torch.manual_seed(1)
    return LitClassifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), 3e-3)


def test_kd_callback_trains_the_student_from_a_checkpointed_teacher(digits, digits_cnn, tmp_path):
    x, y, xt, yt = digits
    path = tmp_path / "teacher.pt"
    torch.save(digits_cnn.state_dict(), path)
    callback = Distillation(str(path), teacher_model=make_digits_cnn(), method="kd", temperature=4.0)
    teacher = callback.teacher
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), digits_cnn.state_dict().values()))
    teacher.train()
    student = small_student()
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    pl.Trainer(max_epochs=4, callbacks=[callback], logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
               accelerator="cpu").fit(student, loader)
    student.eval()
    agreement = (student(xt).argmax(1) == digits_cnn(xt).argmax(1)).float().mean().item()
    assert agreement > 0.75  # measured 0.83 after 4 epochs
    # the teacher's modes and flags are back as they were
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("method", ["ard", "rslad"])
def test_adversarial_distillation_attacks_the_student(method, digits, digits_cnn):
    x, y, _, _ = digits
    teacher = copy.deepcopy(digits_cnn)
    student = make_digits_cnn()
    attack = PGD(LinfBall(0.1, lower=0, upper=1), steps=5, seed=0)
    obj = DistillationObjective(teacher, method=method, attack=attack, alpha=1.0, temperature=1.0)
    clean = DistillationObjective(teacher, method="kd", alpha=1.0, temperature=1.0)
    batch = [x[:64], y[:64]]
    loss = obj(student, batch)
    assert torch.isfinite(loss) and loss.requires_grad
    # the adversarial term is larger than the same divergence on clean inputs
    assert loss.item() > clean(student, batch).item()
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    with pytest.raises(TypeError, match="attack"):
        DistillationObjective(teacher, method=method)


def test_compression_report(digits, digits_cnn):
    x, y, xt, yt = digits
    model = copy.deepcopy(digits_cnn)
    dense = compression_report(model)
    n = sum(p.numel() for p in digits_cnn.parameters())
    assert dense["parameters"] == n and dense["bits_per_weight"] == 32 and dense["bytes"] == 4 * n
    prune_magnitude(model, 0.5, scope="layer")
    quantize_model(model, bits=4)
    rep = compression_report(model, dataloader=DataLoader(TensorDataset(xt[:100], yt[:100]), batch_size=50),
                             attacks=PGD(LinfBall(0.1, lower=0, upper=1), steps=5, seed=0))
    assert rep["parameters"] == n
    weights = sum(m.weight.numel() for m in digits_cnn.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert rep["sparsity"] >= 0.5 * weights / n - 0.01
    assert 4 < rep["bits_per_weight"] < 5  # 4-bit weights, float32 biases
    assert rep["compression"] > 6
    assert 0.8 < rep["clean_accuracy"] <= 1 and 0 <= rep["robust_accuracy"] < rep["clean_accuracy"]
