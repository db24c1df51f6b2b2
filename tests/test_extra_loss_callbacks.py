"""Callbacks that add a loss (RandBET, GeometricRegularization, Distillation) share one path and leave the
model's state alone: the added gradient is right under 32-true, 64-true, bf16-mixed and 16-mixed (AMP
gradient scaler), BatchNorm running statistics only see the module's own forward pass
(``num_batches_tracked == steps``), the batch is copied before later callbacks replace its entries, and an
exception inside the extra pass leaves buffers and the callback's state clean."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _reliability_common import trainer
from mmrobust.callbacks import (Distillation, ExtraLossCallback, GeometricRegularization, Quantization,
                                RandomBitErrorTraining)
from mmrobust.compression import DistillationObjective
from mmrobust.compression.bit_errors import bit_errors
from mmrobust.geometry import InputGradientNorm
from mmrobust.utils import kept_buffers


def bn_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 64, 10))


class BNModule(pl.LightningModule):
    """A user's classifier with BatchNorm; records the BN buffers right after its own forward pass and the
    (unscaled) gradients the optimiser sees."""

    def __init__(self, lr: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.net = bn_net()
        self.lr = lr
        self.grads, self.buffers_after_own_forward, self.buffers_at_step = [], [], []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self(batch[0]), batch[1])
        self.buffers_after_own_forward.append([b.detach().clone() for b in self.net.buffers()])
        return loss

    def on_before_optimizer_step(self, optimizer):
        self.grads.append([p.grad.detach().clone() for p in self.parameters()])
        self.buffers_at_step.append([b.detach().clone() for b in self.net.buffers()])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Snapshot(pl.Callback):
    """Keeps the network and the batch as they are at the start of every training batch."""

    def __init__(self):
        self.nets, self.batches = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.nets.append(copy.deepcopy(pl_module.net))
        self.batches.append([t.clone() for t in batch])


def teacher_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


REG = InputGradientNorm()
# name -> (callbacks, reference extra loss (net, x, y) -> scalar, weight)
CASES = {
    "RandomBitErrorTraining": (
        lambda: [Quantization(bits=8, clip=0.5), RandomBitErrorTraining(0.03, seed=0, weight=1.0)],
        lambda net, x, y: _under_bit_errors(net, x, y), 1.0),
    "GeometricRegularization": (
        lambda: [GeometricRegularization(REG, weight=20.0)], lambda net, x, y: REG(net, (x, y)), 20.0),
    "Distillation": (
        lambda: [Distillation(teacher_net(), method="kd", weight=2.0, replace=False)],
        lambda net, x, y: DistillationObjective(teacher_net(), method="kd")(net, [x, y]), 2.0),
}


def _under_bit_errors(net, x, y):
    with bit_errors(net, 0.03, seed=0):
        return nn.functional.cross_entropy(net(x), y)


def _precision(name):
    if name == "16-mixed":  # Lightning maps 16-mixed to bf16 on CPU; an explicit plugin keeps fp16 + GradScaler
        # init_scale 8 (not 2**16): the input-gradient penalty's fp16 double backward overflows at larger scales,
        # and GradScaler would (rightly) skip the first step; an unscaled extra gradient still ends up 8x too small
        scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
        return {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=scaler)]}
    return {"precision": name}


def _loader(digits, n=48, batch_size=16):
    x, y = digits[0][:n].float(), digits[1][:n]
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def _grads(net, loss):
    return torch.autograd.grad(loss, [p for p in net.parameters() if p.requires_grad])


@pytest.mark.parametrize("precision", ["32-true", "64-true", "bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_extra_loss_gradient_and_batchnorm_statistics(case, precision, digits, tmp_path):
    make, reference, weight = CASES[case]
    module, snap = BNModule(), Snapshot()
    callbacks = make()
    t = trainer(tmp_path, [snap] + callbacks, max_steps=3, **_precision(precision))
    t.fit(module, _loader(digits))
    assert module.global_step == 3
    # the extra passes left BatchNorm alone: only the module's own three forward passes are counted
    bn = module.net[1]
    assert int(bn.num_batches_tracked) == 3
    for own, at_step in zip(module.buffers_after_own_forward, module.buffers_at_step):
        assert all(torch.equal(a, b) for a, b in zip(own, at_step))

    # the gradient the optimiser sees (after unscaling) is module loss + weight * extra loss
    net, (x, y) = snap.nets[0].float(), snap.batches[0]
    x = x.float()
    g_module = _grads(net, nn.functional.cross_entropy(net(x), y))
    g_extra = _grads(net, weight * reference(net, x, y))
    seen = module.grads[0]
    added = torch.cat([(s.float() - m).flatten() for s, m in zip(seen, g_module)])
    expected = torch.cat([e.flatten() for e in g_extra])
    assert float(expected.norm()) > 0.2 * float(torch.cat([m.flatten() for m in g_module]).norm())
    tol = 1e-4 if precision in ("32-true", "64-true") else 0.15
    rel = float((added - expected).norm() / expected.norm())
    assert rel < tol, f"{case} under {precision}: the added gradient is off by {rel:.3f} (relative)"
    assert callbacks[-1]._batch is None


class ReplaceInputs(pl.Callback):
    """A later callback that writes into the batch in place (as AdversarialTraining does)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        batch[0] = torch.zeros_like(batch[0])


def test_the_batch_is_copied_before_later_callbacks_replace_entries(digits, tmp_path):
    seen = {}

    class recorder:  # records the batch a loss sees; forwards everything else (e.g. .teacher)
        def __init__(self, name, inner):
            self.name, self.inner = name, inner

        def __call__(self, model, batch):
            seen.setdefault(self.name, []).append(batch[0].detach().clone())
            return self.inner(model, batch)

        def __getattr__(self, key):
            return getattr(self.inner, key)

    randbet = RandomBitErrorTraining(0.01, seed=0, loss_fn=recorder("randbet", lambda m, b: m(b[0]).std()))
    geometric = GeometricRegularization(recorder("geometric", REG))
    distillation = Distillation(teacher_net(), replace=False)
    distillation.objective = recorder("distillation", distillation.objective)
    snap = Snapshot()
    t = trainer(tmp_path, [snap, Quantization(), randbet, geometric, distillation, ReplaceInputs()], max_steps=2)
    t.fit(BNModule(lr=0.01), _loader(digits))
    for name in ("randbet", "geometric", "distillation"):
        assert len(seen[name]) == 2
        for got, batch in zip(seen[name], snap.batches):
            assert torch.equal(got, batch[0]), f"{name} saw the replaced batch"


class Boom(RuntimeError):
    pass


def test_an_exception_in_the_extra_pass_keeps_buffers_and_clears_state(digits, tmp_path):
    def failing(model, batch):
        model(batch[0])  # a training-mode forward that moves BatchNorm's statistics, then a failure
        raise Boom()

    callback = GeometricRegularization(failing)
    module = BNModule()
    t = trainer(tmp_path, [callback], max_steps=2)
    with pytest.raises(Boom):
        t.fit(module, _loader(digits))
    assert int(module.net[1].num_batches_tracked) == 1
    assert all(torch.equal(a, b) for a, b in zip(module.buffers_after_own_forward[0], module.net.buffers()))
    assert callback._batch is None


def test_kept_buffers_restores_in_place_also_on_error():
    net = bn_net().train()
    before = [b.clone() for b in net.buffers()]
    refs = list(net.buffers())
    with pytest.raises(Boom), kept_buffers(net):
        net(torch.rand(4, 1, 8, 8))
        assert int(net[1].num_batches_tracked) == 1
        raise Boom()
    assert all(torch.equal(a, b) for a, b in zip(before, net.buffers()))
    assert all(a is b for a, b in zip(refs, net.buffers()))


def test_extra_loss_callback_subclass_example_from_the_docstring(digits, tmp_path):
    class L2Logits(ExtraLossCallback):
        log_name = "train/l2_logits"

        def extra_loss(self, trainer, pl_module, batch):
            return pl_module(batch[0]).pow(2).mean()

    snap, callback, module = Snapshot(), L2Logits(weight=0.5), BNModule()
    t = trainer(tmp_path, [snap, callback], max_steps=1, accumulate_grad_batches=1)
    t.fit(module, _loader(digits))
    net, (x, y) = snap.nets[0], snap.batches[0]
    expected = _grads(net, nn.functional.cross_entropy(net(x), y) + 0.5 * net(x).pow(2).mean())
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(module.grads[0], expected))
    assert "train/l2_logits" in t.callback_metrics


def test_gradient_accumulation_divides_the_extra_loss_like_the_module_loss(digits, tmp_path):
    snap, module = Snapshot(), BNModule()
    t = trainer(tmp_path, [snap, GeometricRegularization(REG, weight=20.0)], max_steps=1, accumulate_grad_batches=2)
    t.fit(module, _loader(digits))
    expected = None
    for net_, (x, y) in zip(snap.nets, snap.batches):  # lr 0: both micro-batches see the same weights
        g = _grads(net_, (nn.functional.cross_entropy(net_(x), y) + 20.0 * REG(net_, (x, y))) / 2)
        expected = g if expected is None else [a + b for a, b in zip(expected, g)]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(module.grads[0], expected))
