"""Mixed precision: autocast works for every attack and callback; half-precision inputs are refused clearly.

* ``torch.autocast("cpu", torch.bfloat16)`` around PGD/APGD/FMN/Square/FGSM: the model runs in bf16,
  perturbations stay float32 and inside the budget, and the attack is about as strong as in float32.
* ``Trainer(precision="bf16-mixed")`` with every training/compression callback and RobustnessEvaluation.
* half-precision *inputs* (``bf16-true``/``16-true``, or ``x.half()``) would round ``x + delta`` out of the
  budget (eps 0.1 -> 0.1016 in bf16) and weaken the attack; attacks refuse them with a message that says
  what to use instead.
* fp16 autocast on CUDA when a GPU is present.
"""

from __future__ import annotations

import copy

import pytest
import torch

from _reliability_common import DigitsModule, digits_loader, trainer
from mmrobust.attacks import APGD, FGSM, FMN, PGD, Square
from mmrobust.callbacks import (AdversarialTraining, AdversarialWeightPerturbation, FourierSparsity, Pruning,
                                Quantization, RandomBitErrorTraining, RobustnessEvaluation)
from mmrobust.threats import L2Ball, LinfBall

EPS = 0.15
BOX = LinfBall(EPS, lower=0, upper=1)

ATTACKS = {
    "PGD": lambda: PGD(BOX, steps=10, seed=0),
    "APGD": lambda: APGD(BOX, steps=10, seed=0),
    "APGD-L2": lambda: APGD(L2Ball(1.0, lower=0, upper=1), steps=10, seed=0),
    "Square": lambda: Square(BOX, n_queries=100, seed=0),
    "FGSM": lambda: FGSM(BOX),
    "FMN": lambda: FMN(BOX, steps=20, cap=True),
}


def _run(attack, model, x, y, device_type=None, dtype=None):
    if device_type is None:
        return attack(model, (x, y))
    with torch.autocast(device_type, dtype=dtype):
        return attack(model, (x, y))


def _check_autocast(name, model, x, y, device_type, dtype):
    full = _run(ATTACKS[name](), model, x, y)
    mixed = _run(ATTACKS[name](), model, x, y, device_type, dtype)
    assert mixed.inputs["image"].dtype == x.dtype  # perturbations are kept in the input's precision
    radius = 1.0 if name == "APGD-L2" else EPS
    found = mixed.size["image"][mixed.success]
    assert found.numel() == 0 or float(found.max()) <= radius + 1e-6
    adv = mixed.inputs["image"]
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    clean = mixed.clean_correct.float().mean().item()
    robust = mixed.robust.float().mean().item()
    assert robust < clean - 0.2, f"{name} under autocast barely attacks ({clean:.2f} -> {robust:.2f})"
    assert abs(robust - full.robust.float().mean().item()) <= 0.1, name
    return robust


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_under_bf16_autocast_on_cpu_work_and_keep_the_budget(name, digits_cnn, digits):
    x, y = digits[2][:96], digits[3][:96]
    _check_autocast(name, digits_cnn, x, y, "cpu", torch.bfloat16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_under_fp16_autocast_on_cuda_work_and_keep_the_budget(name, digits_cnn, digits):
    model = copy.deepcopy(digits_cnn).cuda()
    x, y = digits[2][:96].cuda(), digits[3][:96].cuda()
    _check_autocast(name, model, x, y, "cuda", torch.float16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_half_precision_inputs_are_refused_with_what_to_do_instead(name, dtype, digits_cnn, digits):
    model = copy.deepcopy(digits_cnn).to(dtype)
    x, y = digits[2][:8].to(dtype), digits[3][:8]
    with pytest.raises(TypeError, match=r"the input batch\[0\] has dtype torch\.(bfloat16|float16); attacks need float32 or float64 "
                                        r"inputs.*precision='bf16-mixed' or '16-mixed'"):
        ATTACKS[name]()(model, (x, y))


def _pgd(steps=2):
    return PGD(LinfBall(0.1, lower=0, upper=1), steps=steps, seed=0)


CALLBACKS = {
    "AdversarialTraining": lambda: [AdversarialTraining(_pgd())],
    "AdversarialWeightPerturbation": lambda: [AdversarialTraining(_pgd(1)), AdversarialWeightPerturbation(0.01)],
    "Pruning": lambda: [Pruning(0.5, begin_step=1, end_step=3, frequency=1)],
    "Quantization": lambda: [Quantization(bits=4, clip=0.2)],
    "RandomBitErrorTraining": lambda: [Quantization(bits=8, clip=0.2), RandomBitErrorTraining(0.02, seed=0)],
    "FourierSparsity": lambda: [FourierSparsity(0.5)],
}


@pytest.mark.parametrize("case", sorted(CALLBACKS))
def test_callbacks_train_under_bf16_mixed_precision(case, digits, tmp_path):
    callbacks = CALLBACKS[case]()
    evaluation = RobustnessEvaluation(_pgd())
    module = DigitsModule()
    t = trainer(tmp_path, callbacks + [evaluation], max_epochs=1, precision="bf16-mixed", limit_train_batches=4)
    t.fit(module, digits_loader(digits, n=64), digits_loader(digits, n=32))
    assert module.global_step == 4
    assert all(p.dtype == torch.float32 and bool(torch.isfinite(p).all()) for p in module.parameters())
    assert torch.isfinite(t.callback_metrics["train_loss"])
    assert 0 <= float(t.callback_metrics["val/robust_acc"]) <= float(t.callback_metrics["val/clean_acc"])
    if case == "AdversarialTraining":
        assert callbacks[0].adversarial_steps == 4


def test_half_precision_weights_and_inputs_in_validation_are_refused(digits, tmp_path):
    module = DigitsModule()
    t = trainer(tmp_path, [RobustnessEvaluation(_pgd())], max_epochs=1, precision="bf16-true")
    with pytest.raises(TypeError, match=r"attacks need float32 or float64 inputs"):
        t.validate(module, digits_loader(digits, n=32))


TRUE_BF16 = {  # precision="bf16-true": weights and batches in bf16
    "AdversarialTraining": (lambda: [AdversarialTraining(_pgd())], "refused"),
    "AdversarialWeightPerturbation": (lambda: [AdversarialWeightPerturbation(0.01)], "works"),
    "Pruning": (lambda: [Pruning(0.5, begin_step=1, end_step=3, frequency=1)], "works"),
    "Quantization": (lambda: [Quantization(bits=4, clip=0.2)], "works"),
    "RandomBitErrorTraining": (lambda: [Quantization(bits=8, clip=0.2), RandomBitErrorTraining(0.02, seed=0)], "works"),
    "FourierSparsity": (lambda: [FourierSparsity(0.5)], "works"),
}


@pytest.mark.parametrize("case", sorted(TRUE_BF16))
def test_callbacks_under_bf16_true_precision_work_or_are_refused_clearly(case, digits, tmp_path):
    make, expected = TRUE_BF16[case]
    module = DigitsModule()
    t = trainer(tmp_path, make(), max_epochs=1, precision="bf16-true", limit_train_batches=3)
    if expected == "refused":
        with pytest.raises(TypeError, match=r"attacks need float32 or float64 inputs.*'bf16-mixed'"):
            t.fit(module, digits_loader(digits, n=48))
        return
    t.fit(module, digits_loader(digits, n=48))
    assert module.global_step == 3
    assert all(p.dtype == torch.bfloat16 and bool(torch.isfinite(p).all()) for p in module.parameters())
    assert torch.isfinite(t.callback_metrics["train_loss"])
