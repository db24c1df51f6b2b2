"""WeightBall, adversarial weight perturbation (AWP) and weight-space flatness."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mmrobust.attacks import PGD
from mmrobust.callbacks import AdversarialWeightPerturbation
from mmrobust.metrics import WeightFlatness
from mmrobust.threats import L2Ball, LinfBall, WeightBall, perturbed_weights


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 16, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 10))


def snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


# -- WeightBall ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_weight_ball_projection_is_layerwise_relative_and_skips_norm_layers(norm):
    torch.manual_seed(0)
    model = small_net()
    ball = WeightBall(0.05, norm=norm)
    names = set(ball.parameters(model))
    assert names == {"0.weight", "5.weight", "8.weight"}  # BatchNorm, LayerNorm and biases excluded
    assert set(WeightBall(0.05, include_biases=True).parameters(model)) == names | {"0.bias", "5.bias", "8.bias"}
    radius = ball.radius(model)
    huge = {k: 10 * torch.randn_like(p) for k, p in ball.parameters(model).items()}
    projected = ball.project(huge, radius)
    ord_ = 2 if norm == "l2" else float("inf")
    for k, p in ball.parameters(model).items():
        w_norm = torch.linalg.vector_norm(p.detach(), ord_)
        d_norm = torch.linalg.vector_norm(projected[k], ord_)
        assert d_norm <= 0.05 * w_norm * (1 + 1e-5)
        assert d_norm >= 0.05 * w_norm * (1 - 1e-5)  # a huge step ends on the sphere
    assert ball.contains(projected, model)
    assert not ball.contains(huge, model)
    again = ball.project(projected, radius)
    for k in projected:  # idempotent
        torch.testing.assert_close(again[k], projected[k])
    inner = {k: 0.5 * d for k, d in projected.items()}
    for k, d in ball.project(inner, radius).items():  # points inside stay put
        assert torch.equal(d, inner[k])


@settings(max_examples=100, deadline=None)
@given(norm=st.sampled_from(["l2", "linf"]), relative=st.booleans(), gamma=st.floats(1e-4, 2.0),
       scale=st.floats(1e-3, 100.0), seed=st.integers(0, 2**31 - 1))
def test_weight_ball_projection_is_the_closest_point_of_each_layer_ball(norm, relative, gamma, scale, seed):
    """Inside the budget, idempotent, and the Euclidean projection (variational inequality
    <v - P(v), z - P(v)> <= 0 for admissible z) per layer."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    ball = WeightBall(gamma, relative=relative, norm=norm, include_biases=True)
    radius = ball.radius(model)
    v = {k: scale * torch.randn(p.shape, generator=g, dtype=torch.float64) for k, p in ball.parameters(model).items()}
    proj = ball.project(v, radius)
    assert ball.contains(proj, model, atol=1e-9)
    again = ball.project(proj, radius)
    for k in proj:
        torch.testing.assert_close(again[k], proj[k], rtol=1e-12, atol=1e-12)
    z = ball.random(model, g)
    for k in proj:
        inner = float(((v[k] - proj[k]) * (z[k] - proj[k])).sum())
        assert inner <= 1e-9 * (1 + float(v[k].norm()) * float(radius[k]))


def test_weight_ball_random_and_step_stay_inside_and_are_seeded():
    model = small_net()
    ball = WeightBall(0.02)
    a = ball.random(model, torch.Generator().manual_seed(3))
    b = ball.random(model, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ball.contains(a, model)
    sphere = ball.random(model, torch.Generator().manual_seed(4), on_boundary=True)
    sizes = ball.size(sphere, model)
    assert all(abs(float(s) - 0.02) < 1e-5 for s in sizes.values())
    grads = {k: torch.randn_like(d) for k, d in a.items()}
    radius = ball.radius(model)
    stepped = ball.project(ball.step(a, grads, 2.5, radius), radius)
    assert ball.contains(stepped, model)


def test_weight_ball_argument_errors():
    with pytest.raises(ValueError, match="gamma"):
        WeightBall(-0.1)
    with pytest.raises(ValueError, match="norm"):
        WeightBall(0.1, norm="l3")
    with pytest.raises(ValueError, match="model"):
        WeightBall(0.1).size({"w": torch.ones(2, 2)})


def test_perturbed_weights_restores_bit_exactly_also_on_exception():
    torch.manual_seed(0)
    model = small_net().eval()
    before = snapshot(model)
    ball = WeightBall(0.3, include_biases=True)
    deltas = ball.random(model, torch.Generator().manual_seed(0))
    x = torch.rand(4, 1, 8, 8)
    with perturbed_weights(model, deltas):
        perturbed_out = model(x)
        assert not torch.equal(model[0].weight, before["0.weight"])
    assert_bit_equal(before, {k: v for k, v in snapshot(model).items()})
    with pytest.raises(RuntimeError, match="boom"):
        with perturbed_weights(model, deltas):
            raise RuntimeError("boom")
    for k, p in model.named_parameters():
        assert torch.equal(p, before[k])
    assert not torch.equal(perturbed_out, model(x))
    with pytest.raises(KeyError, match="parameters the model does not have"):
        with perturbed_weights(model, {"nope": torch.zeros(1)}):
            pass


# -- AWP ----------------------------------------------------------------------------------------------
class DigitsModule(pl.LightningModule):
    def __init__(self, lr: float = 0.05, fail_at: int = -1):
        super().__init__()
        self.net = small_net()
        self.lr = lr
        self.fail_at = fail_at
        self.step_weights = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if batch_idx == self.fail_at:
            raise RuntimeError("training step failed")
        self.step_weights.append(self.net[0].weight.detach().clone())
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class Probe(pl.Callback):
    """Records the weights at batch start and right before every optimizer step."""

    def __init__(self):
        self.at_start, self.before_step = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.at_start.append(snapshot(pl_module))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before_step.append(snapshot(pl_module))


def digits_loader(digits, n=256, batch_size=64):
    x, y, _, _ = digits
    return DataLoader(TensorDataset(x[:n], y[:n]), batch_size=batch_size, shuffle=False)


def fit(module, loader, callbacks, max_steps=None, max_epochs=1, **kwargs):
    trainer = pl.Trainer(max_epochs=max_epochs, max_steps=max_steps or -1, callbacks=callbacks, accelerator="cpu",
                         logger=False, enable_checkpointing=kwargs.pop("enable_checkpointing", False),
                         enable_progress_bar=False, enable_model_summary=False, deterministic=True, **kwargs)
    trainer.fit(module, loader)
    return trainer


def test_awp_with_zero_budget_equals_plain_training(digits):
    loader = digits_loader(digits)
    torch.manual_seed(0)
    plain = DigitsModule()
    init = snapshot(plain)
    fit(plain, loader, [])
    awp = DigitsModule()
    awp.load_state_dict(init)
    fit(awp, loader, [AdversarialWeightPerturbation(gamma=0.0)])
    assert_bit_equal(snapshot(plain), snapshot(awp))


def test_awp_trains_at_perturbed_weights_and_restores_before_the_optimizer_step(digits):
    loader = digits_loader(digits)
    torch.manual_seed(0)
    plain = DigitsModule()
    init = snapshot(plain)
    fit(plain, loader, [], max_steps=3)

    module = DigitsModule()
    module.load_state_dict(init)
    probe = Probe()
    awp = AdversarialWeightPerturbation(gamma=0.01)
    fit(module, loader, [probe, awp], max_steps=3)
    assert awp.perturbed_batches == 3
    assert len(probe.before_step) == 3
    for start, before_step, in_step in zip(probe.at_start, probe.before_step, module.step_weights):
        # the optimizer sees exactly the clean weights and buffers of this step (BN statistics come from the
        # training step's own forward only, as in a plain run)
        for k, v in start.items():
            if "running" in k or "num_batches" in k:
                continue
            assert torch.equal(before_step[k], v), k
        # ... while training_step ran at w + v with ||v_l|| = gamma ||w_l|| (one step lands on the sphere)
        rel = (in_step - start["net.0.weight"]).norm() / start["net.0.weight"].norm()
        assert abs(float(rel) - 0.01) < 1e-4
    # the first step starts from the same weights and buffers as the plain run, only the gradient differs
    first_plain = DigitsModule()
    first_plain.load_state_dict(init)
    assert_bit_equal(probe.at_start[0], snapshot(first_plain))
    assert not torch.equal(plain.net[0].weight, module.net[0].weight)
    assert (plain.net[0].weight - module.net[0].weight).abs().max() < 0.05


def test_awp_step_equals_an_optimizer_step_with_the_gradient_at_perturbed_weights(digits):
    """Replays one AWP step by hand: search v at w, gradient at w + v, restore w, plain SGD step."""
    loader = digits_loader(digits, n=64)
    torch.manual_seed(0)
    module = DigitsModule()
    init = snapshot(module)
    awp = AdversarialWeightPerturbation(gamma=0.05, steps=2)
    fit(module, loader, [awp], max_steps=1)

    replay = DigitsModule()
    replay.load_state_dict(init)
    replay.train()
    batch = next(iter(loader))
    opt = replay.configure_optimizers()
    deltas = AdversarialWeightPerturbation(gamma=0.05, steps=2).find_perturbation(replay, batch)
    assert_bit_equal(init, snapshot(replay))  # the search has no side effects
    with perturbed_weights(replay, deltas):
        nn.functional.cross_entropy(replay(batch[0]), batch[1]).backward()
    opt.step()
    for k, v in snapshot(replay).items():
        torch.testing.assert_close(module.state_dict()[k], v, rtol=1e-6, atol=1e-7)
    moved = (module.net[0].weight - init["net.0.weight"]).abs().max()
    assert moved > 1e-4


class ManualModule(DigitsModule):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        self.step_weights.append(self.net[0].weight.detach().clone())
        opt.zero_grad()
        self.manual_backward(nn.functional.cross_entropy(self(batch[0]), batch[1]))
        opt.step()


@pytest.mark.parametrize("setup", ["manual", "accumulate"])
def test_awp_restores_before_each_step_with_manual_optimization_and_accumulation(digits, setup):
    loader = digits_loader(digits, n=128, batch_size=32)
    torch.manual_seed(0)
    module = ManualModule() if setup == "manual" else DigitsModule()
    probe = Probe()
    kwargs = {} if setup == "manual" else {"accumulate_grad_batches": 2}
    fit(module, loader, [probe, AdversarialWeightPerturbation(gamma=0.02)], **kwargs)
    assert len(module.step_weights) == 4
    assert len(probe.before_step) == (4 if setup == "manual" else 2)
    starts = probe.at_start if setup == "manual" else probe.at_start[1::2]
    for start, before_step in zip(starts, probe.before_step):
        assert torch.equal(start["net.0.weight"], before_step["net.0.weight"])
    for start, in_step in zip(probe.at_start, module.step_weights):
        rel = (in_step - start["net.0.weight"]).norm() / start["net.0.weight"].norm()
        assert abs(float(rel) - 0.02) < 1e-4  # every (micro-)batch trained at w + v


def test_awp_batchnorm_statistics_match_plain_training(digits):
    """The AWP search must not update BatchNorm running statistics (only the training step's forward does)."""
    loader = digits_loader(digits, n=64)
    torch.manual_seed(0)
    plain = DigitsModule(lr=0.0)
    init = snapshot(plain)
    fit(plain, loader, [], max_steps=1)
    module = DigitsModule(lr=0.0)
    module.load_state_dict(init)
    fit(module, loader, [AdversarialWeightPerturbation(gamma=0.01, steps=2)], max_steps=1)
    assert torch.equal(plain.net[1].num_batches_tracked, module.net[1].num_batches_tracked)
    # the running mean comes from the forward at w + v, so it differs only slightly
    torch.testing.assert_close(plain.net[1].running_mean, module.net[1].running_mean, rtol=0.05, atol=1e-3)


def test_awp_restores_weights_when_training_step_raises(digits):
    loader = digits_loader(digits)
    torch.manual_seed(0)
    module = DigitsModule(fail_at=1)
    probe = Probe()
    with pytest.raises(RuntimeError, match="training step failed"):
        fit(module, loader, [probe, AdversarialWeightPerturbation(gamma=0.05)])
    after = snapshot(module)
    for k, v in probe.at_start[-1].items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(after[k], v), k


def test_awp_searches_on_the_adversarial_batch_when_listed_after_adversarial_training(digits):
    from mmrobust.callbacks import AdversarialTraining
    from mmrobust.objectives import batch_cross_entropy

    x, y, _, _ = digits
    loader = DataLoader(TensorDataset(x[:128], y[:128]), batch_size=64, shuffle=False)
    seen = []
    default_loss = batch_cross_entropy

    def recording_loss(pl_module, batch):
        seen.append(batch[0].detach().clone())
        return default_loss(pl_module, batch)

    module = DigitsModule()
    attack = PGD(LinfBall(0.1, lower=0, upper=1), steps=2, seed=0)
    awp = AdversarialWeightPerturbation(gamma=5e-3, loss_fn=recording_loss)
    with pytest.warns(UserWarning, match="list it after"):
        awp.setup(pl.Trainer(callbacks=[awp, AdversarialTraining(attack)], logger=False), module, "fit")
    fit(module, loader, [AdversarialTraining(attack), awp])
    assert len(seen) == 2
    for i, adv in enumerate(seen):
        clean = x[64 * i:64 * (i + 1)]
        gap = (adv - clean).abs().amax()
        assert 0.05 < gap <= 0.1 + 1e-6  # the adversarial batch, inside the budget


@pytest.mark.slow
def test_awp_fit_on_digits_with_adversarial_training_learns_a_robust_model(digits):
    from mmrobust.callbacks import AdversarialTraining

    x, y, xt, yt = digits
    loader = DataLoader(TensorDataset(x[:640], y[:640]), batch_size=64, shuffle=True)
    pl.seed_everything(0)
    module = DigitsModule(lr=0.05)
    attack = PGD(LinfBall(0.1, lower=0, upper=1), steps=2, seed=0)
    awp = AdversarialWeightPerturbation(gamma=5e-3)
    fit(module, loader, [AdversarialTraining(attack), awp], max_epochs=5)
    assert awp.perturbed_batches == 50
    module.eval()
    with torch.no_grad():
        acc = (module(xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.8, acc  # AT alone: 0.88 in this set-up, AT + AWP: 0.85
    robust = PGD(LinfBall(0.1, lower=0, upper=1), steps=5, seed=0)(module.net, (xt, yt))
    assert robust.robust.float().mean().item() > 0.4  # AT alone 0.52, AT + AWP 0.50; an untrained net ~0
    assert robust.size["image"].max() <= 0.1 + 1e-6


def test_awp_state_survives_checkpoint_resume(digits, tmp_path):
    loader = digits_loader(digits, n=128)
    torch.manual_seed(0)
    module = DigitsModule()
    awp = AdversarialWeightPerturbation(gamma=0.02, warmup_epochs=1)
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    fit(module, loader, [awp, ckpt_cb], max_epochs=2, enable_checkpointing=True)
    assert awp.perturbed_batches == 2  # epoch 0 is warm-up
    resumed = AdversarialWeightPerturbation(gamma=0.5)
    trainer = pl.Trainer(max_epochs=3, callbacks=[resumed], accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(DigitsModule(), loader, ckpt_path=str(tmp_path / "last.ckpt"))
    assert resumed.gamma == 0.02
    assert resumed.warmup_epochs == 1
    assert resumed.perturbed_batches == 4


def test_awp_argument_errors():
    with pytest.raises(ValueError, match="gamma"):
        AdversarialWeightPerturbation(gamma=-1)
    with pytest.raises(ValueError, match="steps"):
        AdversarialWeightPerturbation(steps=0)
    with pytest.raises(TypeError, match="ball"):
        AdversarialWeightPerturbation(ball=L2Ball(0.1))


# -- flatness -----------------------------------------------------------------------------------------
def test_flatness_worst_above_average_above_zero_and_weights_unchanged(digits_cnn, digits):
    _, _, xt, yt = digits
    model = digits_cnn
    before = snapshot(model)
    flags = [p.requires_grad for p in model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    metric = WeightFlatness(WeightBall(0.25, include_biases=True), samples=5, steps=5, seed=0)
    for i in range(0, 128, 64):
        metric.update(model, (xt[i:i + 64], yt[i:i + 64]))
    out = metric.compute()
    assert set(out) == {"average_case", "worst_case", "clean_loss"}
    assert out["average_case"] > 0.005  # random perturbations of a quarter of each layer's norm hurt a little
    assert out["worst_case"] > 10 * out["average_case"]  # an adversarial direction hurts far more
    assert 0 < out["clean_loss"] < 0.3
    assert_bit_equal(before, snapshot(model))
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training
    for p, g in zip(model.parameters(), grads):  # .grad untouched
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)

    # with an attack, the loss is the robust loss on fixed adversarial examples
    robust = WeightFlatness(WeightBall(0.05, include_biases=True), samples=2, steps=2, seed=0)
    robust.update(model, (xt[:64], yt[:64]), attack=PGD(LinfBall(0.1, lower=0, upper=1), steps=5, seed=0))
    assert robust.compute()["clean_loss"] > out["clean_loss"] + 0.2
    assert_bit_equal(before, snapshot(model))


def test_flatness_detects_a_sharp_direction(digits):
    """A weight on an always-zero pixel does not change the function but inflates the layer's relative budget.

    The two models compute the same logits; the second one's relative ball is much larger along the
    directions that matter, so both flatness measures must grow.
    """
    x, y, xt, yt = digits
    assert float(x[:, 0, 0, 0].abs().max()) == 0.0  # the top-left pixel of sklearn's digits is always 0
    torch.manual_seed(0)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(flat.parameters(), 0.05)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(flat(x), y).backward()
        opt.step()
    sharp = copy.deepcopy(flat)
    with torch.no_grad():
        sharp[1].weight[:, 0] += 3 * flat[1].weight.norm()
    assert torch.equal(flat(xt), sharp(xt))
    results = []
    for model in (flat, sharp):
        metric = WeightFlatness(WeightBall(0.1), samples=5, steps=5, seed=0)
        metric.update(model, (xt[:128], yt[:128]))
        results.append(metric.compute())
    assert results[0]["clean_loss"] == results[1]["clean_loss"]
    assert results[1]["worst_case"] > 3 * results[0]["worst_case"] > 0
    assert results[1]["average_case"] > 3 * results[0]["average_case"]


def test_flatness_restores_weights_on_exception(digits_cnn, digits):
    _, _, xt, yt = digits
    model = copy.deepcopy(digits_cnn)
    before = snapshot(model)
    calls = []

    def failing_loss(logits, labels, target_labels):
        calls.append(1)
        if len(calls) == 4:  # inside the worst-case search, at perturbed weights
            raise ZeroDivisionError("loss failed")
        return nn.functional.cross_entropy(logits, labels, reduction="none")

    metric = WeightFlatness(WeightBall(0.05), samples=2, steps=2, loss=failing_loss)
    with pytest.raises(ZeroDivisionError):
        metric.update(model, (xt[:8], yt[:8]))
    assert_bit_equal(before, snapshot(model))
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(RuntimeError, match="before any update"):
        WeightFlatness().compute()
