"""Geometry of robustness: exact values on models with closed forms, metrics, slices and regularisers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmrobust.attacks import PGD
from mmrobust.callbacks import GeometricRegularization
from mmrobust.geometry import (CurvatureRegularizer, InputGradientNorm,
                               LipschitzRegularizer, MinimalNormSearch, boundary_distance, curvature,
                               decision_slice, local_lipschitz, with_predicted_labels)
from mmrobust.metrics.geometry import BoundaryDistance, GeometryStatistic
from mmrobust.threats import L2Ball, LinfBall


def linear_model(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Module:
    lin = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(torch.zeros(weight.shape[0]) if bias is None else bias)
    return nn.Sequential(nn.Flatten(), lin)


class Quadratic(nn.Module):
    """A one-logit model f(x) = x^T A x (loss = the logit itself)."""

    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, x):
        x = x.flatten(1)
        return ((x @ self.a) * x).sum(1, keepdim=True)


def logit_loss(logits, labels, target_labels=None):
    return logits[:, 0]


# -- Lipschitz --------------------------------------------------------------------------------------------

def test_local_lipschitz_of_linear_model_is_its_operator_norm():
    torch.manual_seed(0)
    w = torch.randn(5, 12)
    model = linear_model(w)
    x, y = torch.rand(4, 12), torch.randint(0, 5, (4,))
    est = local_lipschitz(model, (x, y), L2Ball(0.5), steps=30, seed=0)
    exact = torch.linalg.matrix_norm(w, 2)
    assert est.shape == (4,)
    assert torch.allclose(est, exact.expand(4), rtol=2e-3)
    # no pair may exceed the true constant (every quotient is a lower bound)
    assert bool((est <= exact * (1 + 1e-4)).all())


def test_local_lipschitz_linf_output_norm_of_linear_model():
    """||W d||_inf / ||d||_2 is maximised by the largest row norm of W; every row is a local maximum, so
    restarts are what finds the global one."""
    torch.manual_seed(1)
    w = torch.randn(3, 6)
    model = linear_model(w)
    x, y = torch.rand(2, 6), torch.zeros(2, dtype=torch.long)
    est = local_lipschitz(model, (x, y), L2Ball(0.3), steps=40, output_norm=float("inf"), seed=0,
                          restarts=10)
    assert torch.allclose(est, w.norm(dim=1).max().expand(2), rtol=1e-2)


def test_lipschitz_leaves_model_and_inputs_untouched():
    model = linear_model(torch.randn(3, 4))
    model.train()
    x, y = torch.rand(2, 4), torch.zeros(2, dtype=torch.long)
    x0 = x.clone()
    local_lipschitz(model, (x, y), L2Ball(0.1), steps=3)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert torch.equal(x, x0)


# -- curvature --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("direction", ["sign", "gradient"])
def test_curvature_of_quadratic_is_norm_of_hessian_times_direction(direction):
    torch.manual_seed(0)
    a = torch.randn(10, 10, dtype=torch.float64)
    a = (a + a.T) / 2
    model = Quadratic(a).double()
    x = torch.rand(5, 10, dtype=torch.float64)
    y = torch.zeros(5, dtype=torch.long)
    got = curvature(model, (x, y), h=0.3, direction=direction, loss=logit_loss)
    grad = 2 * x @ a
    z = grad.sign() if direction == "sign" else grad
    z = z / z.norm(dim=1, keepdim=True)
    expected = 2 * (z @ a).norm(dim=1)
    assert torch.allclose(got, expected, rtol=1e-9)


def test_curvature_of_linear_model_with_margin_loss_is_zero():
    model = linear_model(torch.randn(2, 5))
    x, y = torch.rand(3, 5), torch.tensor([0, 1, 0])
    assert torch.allclose(curvature(model, (x, y), h=0.05, loss="margin"), torch.zeros(3), atol=1e-5)


def test_curvature_rejects_bad_arguments(digits):
    model = linear_model(torch.randn(2, 5))
    batch = (torch.rand(3, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="h must be"):
        curvature(model, batch, h=0)
    with pytest.raises(ValueError, match="direction must be one of"):
        curvature(model, batch, direction="random")


# -- boundary distance ------------------------------------------------------------------------------------

def test_boundary_distance_of_binary_linear_model_is_margin_over_weight_norm():
    torch.manual_seed(0)
    w, b = torch.randn(2, 8), torch.randn(2)
    model = linear_model(w, b)
    x = torch.rand(16, 8)
    logits = model(x)
    y = logits.argmax(1)
    y[:3] = 1 - y[:3]  # three misclassified inputs: distance 0
    exact = (logits[:, 0] - logits[:, 1]).abs() / (w[0] - w[1]).norm()
    search = MinimalNormSearch(PGD(L2Ball(10.0), steps=20, loss="margin", random_start=False), search_steps=12)
    for attack in (None, search):  # None: FMN
        d = boundary_distance(model, (x, y), attack, threat=L2Ball(10.0), steps=50)
        assert torch.equal(d[:3], torch.zeros(3))
        assert bool((d[3:] >= exact[3:] * (1 - 1e-3)).all()), "a distance below the exact one is impossible"
        assert torch.allclose(d[3:], exact[3:], rtol=0.02, atol=1e-3)
        # relative to the prediction, the misclassified inputs get their own (positive) distance
        dp = boundary_distance(model, (x, y), attack, threat=L2Ball(10.0), steps=50, relative_to="prediction")
        assert torch.allclose(dp, exact, rtol=0.02, atol=1e-3)


def test_minimal_norm_search_reports_inf_when_nothing_found():
    model = linear_model(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    x = torch.tensor([[2.0, 0.0], [0.05, 0.0]])
    y = torch.tensor([0, 0])  # distances: 2.0 and 0.05
    result = MinimalNormSearch(PGD(L2Ball(0.5), steps=10, loss="margin", random_start=False),
                               search_steps=10)(model, (x, y))
    size = result.size[next(iter(result.size))]
    assert math.isinf(size[0].item()) and not bool(result.success[0])
    assert abs(size[1].item() - 0.05) < 0.5 / 2 ** 9 + 1e-4


def test_boundary_distance_on_digits_cnn_matches_pgd_at_that_budget(digits, digits_cnn):
    _, _, xt, yt = digits
    x, y = xt[:24], yt[:24]
    attack = MinimalNormSearch(PGD(L2Ball(4.0, lower=0, upper=1), steps=10, loss="margin"), search_steps=6)
    d = boundary_distance(digits_cnn, (x, y), attack)
    correct = digits_cnn(x).argmax(1) == y
    assert bool((d[correct] > 0).all()) and bool(torch.isfinite(d).all())
    # an L2 PGD at 0.95x the median distance leaves about half of the points unbroken, at 3x almost none
    med = d.median().item()
    weak = PGD(L2Ball(0.5 * med, lower=0, upper=1), steps=10)(digits_cnn, (x, y))
    strong = PGD(L2Ball(3 * med, lower=0, upper=1), steps=20)(digits_cnn, (x, y))
    assert weak.robust.float().mean() > 0.4
    assert strong.robust.float().mean() < 0.2


def test_boundary_distance_metric_statistics(digits, digits_cnn):
    _, _, xt, yt = digits
    x, y = xt[:40], yt[:40]
    attack = with_predicted_labels(
        MinimalNormSearch(PGD(L2Ball(4.0, lower=0, upper=1), steps=8, loss="margin"), search_steps=5))
    metric = BoundaryDistance()
    metric.update(attack(digits_cnn, (x[:20], y[:20])))
    metric.update(attack(digits_cnn, (x[20:], y[20:])))
    out = metric.compute()
    assert out["count_correct"] + out["count_incorrect"] == 40
    assert 0 < out["q10"] <= out["q25"] <= out["median"] <= out["q75"] <= out["q90"]
    assert -1 <= out["spearman_correct"] <= 1
    # confidence grows with distance from the boundary for a normally trained model
    assert out["spearman_correct"] > 0.2


def test_boundary_metric_by_hand():
    metric = BoundaryDistance(quantiles=(0.5,))
    d = torch.tensor([0.1, 0.2, 0.3, float("inf"), 0.05, 0.02])
    conf = torch.tensor([0.5, 0.6, 0.7, 0.9, 0.4, 0.3])
    ok = torch.tensor([True, True, True, True, False, False])
    metric.update(distances=d, confidence=conf, correct=ok)
    out = metric.compute()
    assert out["median_correct"] == pytest.approx(0.25)
    assert out["spearman_correct"] == pytest.approx(1.0)
    assert out["spearman_incorrect"] != out["spearman_incorrect"]  # NaN for < 3 points
    assert out["fraction_unbroken"] == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="distances must be >= 0"):
        metric.update(distances=-d, confidence=conf, correct=ok)
    stat = GeometryStatistic()
    stat.update(torch.tensor([1.0, 3.0]))
    assert stat.compute()["mean"] == 2.0 and stat.compute()["max"] == 3.0


# -- decision slices ---------------------------------------------------------------------------------------

def test_decision_slice_of_linear_classifier_has_the_known_regions(tmp_path):
    w = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.5]])
    model = linear_model(w)
    x, y = torch.tensor([[0.2, -0.3]]), torch.tensor([0])
    s = decision_slice(model, (x, y), extent=2.0, resolution=21,
                       directions=(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])))
    a, b = torch.meshgrid(s.a, s.b, indexing="xy")
    points = torch.stack([0.2 + a, -0.3 + b], -1)
    expected = (points @ w.T).argmax(-1)
    assert torch.equal(s.classes, expected)
    assert s.classes[10, 10] == 0  # the input itself, at the centre
    png = s.render(tmp_path / "slice.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_decision_slice_adversarial_direction_crosses_boundary_at_its_distance(digits, digits_cnn, tmp_path):
    """Along the gradient direction of a binary linear model, the class flips at margin/||w0-w1||."""
    w = torch.tensor([[2.0, 1.0, 0.0], [-1.0, 0.5, 0.0]])
    model = linear_model(w)
    x, y = torch.tensor([[0.5, 0.2, 0.1]]), torch.tensor([0])
    s = decision_slice(model, (x, y), extent=1.0, resolution=201, second="random")
    dist = ((x @ w.T)[0, 0] - (x @ w.T)[0, 1]) / (w[0] - w[1]).norm()
    row = s.classes[100]
    flip = s.a[(row != 0).nonzero()[0, 0]]
    assert abs(flip.item() - dist.item()) <= 0.011
    # images: adversarial second direction, rendering to PNG
    _, _, xt, yt = digits
    s2 = decision_slice(digits_cnn, (xt[:3], yt[:3]), index=1, extent=3.0, resolution=15, second="adversarial")
    assert s2.classes.shape == (15, 15) and s2.classes[7, 7] == s2.clean_class
    assert abs(float((s2.u.flatten() * s2.v.flatten()).sum())) < 1e-5
    assert s2.render(tmp_path / "digits.png").stat().st_size > 1000


def test_decision_slice_rejects_bad_arguments(digits, digits_cnn):
    _, _, xt, yt = digits
    with pytest.raises(ValueError, match="index must lie in"):
        decision_slice(digits_cnn, (xt[:2], yt[:2]), index=5)
    with pytest.raises(ValueError, match="second must be one of"):
        decision_slice(digits_cnn, (xt[:2], yt[:2]), second="orthogonal")


# -- regularisers -------------------------------------------------------------------------------------------

def test_regularizers_are_differentiable_and_exact_on_linear_models():
    torch.manual_seed(0)
    w = torch.randn(3, 4)
    model = linear_model(w)
    x, y = torch.rand(5, 4), torch.randint(0, 3, (5,))
    # gradient norm of the margin loss of a linear model: ||w_j - w_y||^2 averaged
    pen = InputGradientNorm(loss="margin")(model, (x, y))
    pen.backward()
    assert model[1].weight.grad is not None and torch.isfinite(model[1].weight.grad).all()
    logits = model(x).detach()
    other = logits.masked_fill(nn.functional.one_hot(y, 3).bool(), -1e9).argmax(1)
    expected = (w[other] - w[y]).pow(2).sum(1).mean()
    assert pen.item() == pytest.approx(expected.item(), rel=1e-5)
    assert CurvatureRegularizer(h=0.1, loss="margin")(model, (x, y)).item() == pytest.approx(0.0, abs=1e-8)
    lip = LipschitzRegularizer(L2Ball(0.5), steps=20, seed=0)(model, (x, y))
    assert lip.item() == pytest.approx(torch.linalg.matrix_norm(w, 2).item(), rel=1e-2)


def _train(model, x, y, regularizer=None, weight=0.0, steps=60, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for i in range(steps):
        idx = torch.randint(0, len(y), (64,))
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        if regularizer is not None:
            loss = loss + weight * regularizer(model, (x[idx], y[idx]))
        loss.backward()
        opt.step()
    return model.eval()


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.Softplus(), nn.Linear(64, 10))


@pytest.mark.slow
def test_regularizers_reduce_the_quantity_they_penalise(digits):
    x, y, xt, yt = digits
    batch = (xt[:64], yt[:64])
    base = _train(_mlp(), x, y)
    cure = _train(_mlp(), x, y, CurvatureRegularizer(h=0.5), weight=10.0)
    clip = _train(_mlp(), x, y, LipschitzRegularizer(L2Ball(0.5), steps=3, seed=0, reduction="mean"), weight=0.5)
    grad = _train(_mlp(), x, y, InputGradientNorm(), weight=1.0)
    c_base, c_cure = curvature(base, batch, h=0.5).mean(), curvature(cure, batch, h=0.5).mean()
    l_base = local_lipschitz(base, batch, L2Ball(0.5), steps=10, seed=0).mean()
    l_clip = local_lipschitz(clip, batch, L2Ball(0.5), steps=10, seed=0).mean()
    g_base = InputGradientNorm()(base, batch).detach()
    g_grad = InputGradientNorm()(grad, batch).detach()
    assert c_cure < 0.7 * c_base
    assert l_clip < 0.7 * l_base
    assert g_grad < 0.7 * g_base
    base_acc = (base(xt).argmax(1) == yt).float().mean()
    for m in (cure, clip, grad):  # the regularised models still classify
        assert (m(xt).argmax(1) == yt).float().mean() > base_acc - 0.2


def test_geometric_regularization_callback_adds_the_penalty_gradient(digits):
    import pytorch_lightning as pl

    x, y, _, _ = digits
    x, y = x[:32], y[:32]

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = _mlp()
            self.grads = []

        def forward(self, inp):
            return self.model(inp)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def on_before_optimizer_step(self, optimizer):
            self.grads.append(self.model[1].weight.grad.clone())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    reg = InputGradientNorm()
    cb = GeometricRegularization(reg, weight=2.0, module_attr="model")
    module = Module()
    ref = _mlp()
    ref.load_state_dict(module.model.state_dict())
    trainer = pl.Trainer(max_steps=1, callbacks=[cb], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    trainer.fit(module, loader)
    loss = nn.functional.cross_entropy(ref(x), y) + 2.0 * reg(ref, (x, y))
    loss.backward()
    assert torch.allclose(module.grads[0], ref[1].weight.grad, atol=1e-6)
    assert cb.state_dict()["steps_seen"] == 1 and math.isfinite(cb.last_penalty)
    restored = GeometricRegularization(reg)
    restored.load_state_dict(cb.state_dict())
    assert restored.weight == 2.0 and restored.steps_seen == 1


def test_regularizers_reject_bad_arguments():
    with pytest.raises(ValueError, match="h must be"):
        CurvatureRegularizer(h=-1)
    with pytest.raises(TypeError, match="threat must be"):
        LipschitzRegularizer(0.5)
    with pytest.raises(ValueError, match="weight must be"):
        GeometricRegularization(InputGradientNorm(), weight=-1)
    with pytest.raises(ValueError, match="output_norm must be one of"):
        local_lipschitz(linear_model(torch.randn(2, 2)), (torch.rand(1, 2), torch.zeros(1, dtype=torch.long)),
                        LinfBall(0.1), output_norm=3)


def test_decision_slice_and_geometry_on_waveforms(tmp_path):
    """The estimators are modality-agnostic: a 1-D waveform classifier through the same adapters."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 4, 9, stride=4), nn.Tanh(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    t = torch.arange(400) / 8000
    wave = torch.stack([0.5 * torch.sin(2 * torch.pi * f * t) for f in (300.0, 900.0)])[:, None]
    y = torch.tensor([0, 1])
    s = decision_slice(model, (wave, y), index=1, extent=0.5, resolution=11, second="adversarial")
    assert s.classes[5, 5] == s.clean_class == int(model(wave[1:]).argmax(1))
    assert s.u.shape == wave.shape[1:] and abs(float((s.u * s.v).sum())) < 1e-5
    assert s.render(tmp_path / "wave.png").exists()
    assert local_lipschitz(model, (wave, y), L2Ball(0.05), steps=3, seed=0).shape == (2,)
    assert bool((curvature(model, (wave, y), h=0.01) >= 0).all())
