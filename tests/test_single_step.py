"""Single-step adversarial training: FGSM-RS as Wong et al.'s code, N-FGSM, GradAlign, the probe's random stream."""

from __future__ import annotations

import math
import warnings

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mmrobust.attacks import FGSMRS, NFGSM
from mmrobust.callbacks import AdversarialTraining, FastAdversarialTraining, GeometricRegularization
from mmrobust.geometry import GradientAlignment, gradient_cosines
from mmrobust.threats import L2Ball, LinfBall
from _plain_module import Plain  # noqa: E402

warnings.filterwarnings("ignore", ".*does not have many workers.*")

EPS = 0.3


class Recording(nn.Module):
    """A small CNN that records every input it is called on."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10)).to(dtype)
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.net(x)


def binary_digits(digits, n=32):
    """Digits with pixels pushed to 0 or 1, like most MNIST pixels (where clipping the start matters)."""
    return (digits[0][:n] > 0.5).float(), digits[1][:n]


def input_grad(net, x, y):
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(net(x), y, reduction="sum"), x)
    return g


def test_fast_at_takes_the_gradient_at_the_unclipped_start_as_wong_et_al(digits):
    """Wong et al.'s code: eta ~ U[-eps, eps] (not clipped to [0, 1]), gradient at x + eta, step 1.25 eps,
    then clip to the ball and the box. The library's earlier FGSM clipped the start first."""
    x, y = binary_digits(digits)
    model = Recording()
    cb = FastAdversarialTraining(LinfBall(EPS, lower=0, upper=1), seed=0)
    adv = cb.attack.generate(model, [x, y])[0]
    assert len(model.inputs) == 1
    start = model.inputs[0]
    eta = start - x
    assert eta.abs().max() <= EPS + 1e-6
    assert start.min() < -0.1 and start.max() > 1.1  # outside the box on 0/1 pixels: not clipped
    assert eta.std() > 0.9 * EPS / 3 ** 0.5  # uniform in [-eps, eps] everywhere, not halved on 0/1 pixels
    g = input_grad(model.net, start, y)
    expected = (x + (eta + 1.25 * EPS * g.sign()).clamp(-EPS, EPS)).clamp(0, 1)
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)
    # evaluated as an attack, its points lie in the threat model
    result = FGSMRS(LinfBall(EPS, lower=0, upper=1), seed=0)(model, [x, y])
    assert bool(LinfBall(EPS, lower=0, upper=1).contains(result.inputs[next(iter(result.inputs))] - x, x).all())


def test_fgsm_rs_l2_start_is_uniform_in_the_ball_and_the_result_inside_ball_and_box(digits):
    x, y = binary_digits(digits)
    model = Recording(torch.float64)
    threat = L2Ball(1.0, lower=0, upper=1)
    adv = FGSMRS(threat, seed=1).generate(model, [x.double(), y])[0]
    start = model.inputs[0] - x.double()
    assert (start.flatten(1).norm(dim=1) <= 1.0 + 1e-9).all() and start.min() < 0 and (x.double() + start).max() > 1
    assert bool(threat.contains(adv - x.double(), x.double()).all())


def test_n_fgsm_exceeds_the_ball_but_stays_in_the_box_as_de_jorge_et_al(digits):
    """eta ~ U[-2 eps, 2 eps] clipped to the box, gradient there, step eps, clip to the box only."""
    x = digits[0][:32] * 0.5 + 0.25  # mid-range pixels: the box does not hide the larger radius
    y = digits[1][:32]
    model = Recording()
    threat = LinfBall(EPS, lower=0, upper=1)
    cb = FastAdversarialTraining(threat, method="n_fgsm", seed=0)
    assert isinstance(cb.attack, NFGSM) and cb.attack.step_size == 1.0 and cb.attack.noise == 2.0
    adv = cb.attack.generate(model, [x, y])[0]
    start = model.inputs[0]
    assert start.min() >= 0 and start.max() <= 1  # noise clipped to the box, as the reference code
    assert (start - x).abs().max() > 1.5 * EPS
    g = input_grad(model.net, start, y)
    torch.testing.assert_close(adv, (start + EPS * g.sign()).clamp(0, 1), atol=1e-6, rtol=0)
    size = (adv - x).abs().flatten(1).amax(1)
    assert (size > EPS + 0.05).float().mean() > 0.9 and size.max() <= 3 * EPS + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    with pytest.raises(TypeError, match="training perturbation"):
        cb.attack(model, [x, y])  # no robust accuracy for points outside the threat model
    with pytest.raises(ValueError, match="noise"):
        NFGSM(threat, noise=-1)


def test_n_fgsm_without_clipping_the_noise_takes_the_gradient_outside_the_box(digits):
    """clip_noise=False: eta ~ U[-2 eps, 2 eps] everywhere (not halved on 0/1 pixels), gradient at x + eta,
    then the step and the box; same noise draw as with clipping (same seed)."""
    x, y = binary_digits(digits)
    threat = LinfBall(EPS, lower=0, upper=1)
    model = Recording()
    cb = FastAdversarialTraining(threat, method="n_fgsm", clip_noise=False, seed=0)
    assert cb.attack.clip_noise is False and "clip_noise=False" in cb.attack.describe()
    adv = cb.attack.generate(model, [x, y])[0]
    start = model.inputs[0]
    eta = start - x
    assert start.min() < -0.3 and start.max() > 1.3 and eta.abs().max() <= 2 * EPS + 1e-6
    g = input_grad(model.net, start, y)
    torch.testing.assert_close(adv, (x + eta + EPS * g.sign()).clamp(0, 1), atol=1e-6, rtol=0)
    clipped = Recording()
    NFGSM(threat, seed=0).generate(clipped, [x, y])
    torch.testing.assert_close(clipped.inputs[0], start.clamp(0, 1), atol=1e-6, rtol=0)


def test_fast_at_method_and_step_size_arguments():
    with pytest.raises(ValueError, match="method"):
        FastAdversarialTraining(LinfBall(EPS), method="pgd")
    assert FastAdversarialTraining(LinfBall(EPS)).attack.step_size == 1.25
    assert FastAdversarialTraining(LinfBall(EPS), method="n_fgsm", step_size=1.25).attack.step_size == 1.25
    with pytest.raises(ValueError, match="grad_align_weight"):
        FastAdversarialTraining(LinfBall(EPS), method="grad_align", grad_align_weight=-1)


def fit(callbacks, digits, n=160):
    t = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    module = Plain()
    t.fit(module, DataLoader(TensorDataset(digits[0][:n], digits[1][:n]), batch_size=32))
    return module


@pytest.mark.parametrize("method", ["fgsm_rs", "n_fgsm"])
def test_the_probe_leaves_the_training_random_stream_and_weights_alone(digits, method):
    """The same run with a probe every step and without one trains the same weights: the probe draws its
    random starts from its own generators (it used to draw FGSM starts from the training attack's)."""
    threat = LinfBall(0.1, lower=0, upper=1)
    probed = FastAdversarialTraining(threat, method=method, probe_every_n_steps=1, probe_steps=2, seed=0)
    plain = FastAdversarialTraining(threat, method=method, probe_every_n_steps=0, seed=0)
    a, b = fit([probed], digits), fit([plain], digits)
    assert probed.last_probe is not None and plain.last_probe is None
    assert torch.equal(probed.attack.generator().get_state(), plain.attack.generator().get_state())
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=0, rtol=0)


def reference_grad_align(net, x, y, eta):
    """The reference code's regulariser (tml-epfl/understanding-fast-adv-training, train.py), written out."""
    d0 = torch.zeros_like(x, requires_grad=True)
    (g1,) = torch.autograd.grad(nn.functional.cross_entropy(net(x + d0), y), d0)
    d1 = eta.clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(nn.functional.cross_entropy(net(x + d1), y), d1, create_graph=True)
    keep = (g1.flatten(1).norm(dim=1) != 0) & (g2.flatten(1).norm(dim=1) != 0)
    g1, g2 = g1[keep].flatten(1), g2[keep].flatten(1)
    cos = ((g1 / g1.norm(dim=1, keepdim=True)) * (g2 / g2.norm(dim=1, keepdim=True))).sum(1)
    return 1.0 - cos.mean()


def test_grad_align_value_and_parameter_gradient_match_a_direct_computation(digits):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Softplus(), nn.Linear(32, 10)).double()
    x, y = digits[0][:16].double(), digits[1][:16]
    threat = LinfBall(EPS, lower=0, upper=1)
    reg = GradientAlignment(threat, seed=0)
    eta = reg.noise(x)
    assert eta.abs().max() <= EPS and (x + eta).min() < 0  # uniform in the ball, not clipped to the box
    reg = GradientAlignment(threat, seed=0)  # same seed: the same noise in the call below
    value = reg(net, [x, y])
    grads = torch.autograd.grad(value, list(net.parameters()))
    expected = reference_grad_align(net, x, y, eta)
    expected_grads = torch.autograd.grad(expected, list(net.parameters()))
    assert 0.0 < float(expected.detach()) < 1.0
    torch.testing.assert_close(value, expected, atol=1e-12, rtol=1e-9)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-12, rtol=1e-8)


def test_grad_align_is_zero_without_noise_and_leaves_out_vanishing_gradients(digits):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).double()
    x, y = digits[0][:8].double(), digits[1][:8]
    # a zero ball: both gradients at the same point, perfectly aligned, penalty 0 (still differentiable)
    value = GradientAlignment(LinfBall(0.0), seed=0)(net, [x, y])
    assert abs(float(value)) < 1e-12 and value.requires_grad
    assert float(GradientAlignment(LinfBall(EPS), seed=0)(net, [x, y])) > 1e-4
    g1, g2 = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    g1[1] = 0.0
    g2[3] = 0.0
    cos = gradient_cosines(g1, g2)
    torch.testing.assert_close(cos, torch.nn.functional.cosine_similarity(g1[[0, 2]], g2[[0, 2]]))


def test_grad_align_through_the_regularisation_callback_sees_the_clean_batch(digits):
    """Listed before fast AT, the regulariser reads the clean batch and trains with it."""
    seen = []

    class Spy(GradientAlignment):
        def __call__(self, model, batch):
            seen.append(batch[0].detach().clone())
            return super().__call__(model, batch)

    threat = LinfBall(0.1, lower=0, upper=1)
    fit([GeometricRegularization(Spy(threat, seed=0), weight=0.5),
         FastAdversarialTraining(threat, probe_every_n_steps=0, seed=0)], digits, n=64)
    assert len(seen) == 2 and torch.equal(seen[0], digits[0][:32])


def test_fast_at_grad_align_reuses_the_fgsm_gradient_as_the_reference_code(digits):
    """method="grad_align" is the reference's step (tml-epfl/understanding-fast-adv-training, train.py): FGSM from
    a zero start, step eps, plus lambda * GradAlign whose first gradient is the FGSM step's own. It trains the
    same weights as the regulariser computing that gradient again, with one forward pass fewer per step."""
    threat = LinfBall(EPS, lower=0, upper=1)
    fast = FastAdversarialTraining(threat, method="grad_align", grad_align_weight=0.5, probe_every_n_steps=0, seed=0,
                                   log_metrics=False)
    assert fast.attack.step_size == 1.0 and not fast.attack.random_start
    separate = [GeometricRegularization(GradientAlignment(threat, seed=3), weight=0.5),
                AdversarialTraining(FGSMRS(threat, step_size=1.0, random_start=False, seed=0), log_metrics=False)]
    passes = []

    def counting(callbacks):
        class Counted(Plain):
            def forward(self, x):
                passes[-1] += 1
                return super().forward(x)
        passes.append(0)
        t = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                       enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
        module = Counted()
        t.fit(module, DataLoader(TensorDataset(digits[0][:96], digits[1][:96]), batch_size=32))
        return module

    a, b = counting([fast]), counting(separate)
    assert passes == [3 * 3, 4 * 3]  # per step: FGSM, training, noisy gradient (+ the clean gradient again)
    assert fast.alignment.last_penalty > 0 and fast.alignment.first_gradient is None  # dropped after the step
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def mnist_subset(shared_data, tmp_path_factory, n_train=10000, n_test=500):
    import shutil

    import torchvision

    raw = shared_data / "MNIST" / "raw"
    if not raw.is_dir():
        pytest.skip("no MNIST archives in the shared data")
    root = tmp_path_factory.mktemp("mnist")
    shutil.copytree(raw, root / "MNIST" / "raw")

    def load(train, n):
        ds = torchvision.datasets.MNIST(root, train=train, download=True)  # finds the archives, no network
        return ds.data[:n].float().div(255).unsqueeze(1), ds.targets[:n].long()

    return load(True, n_train), load(False, n_test)


#: (training perturbation, eps, epochs of 10k images) of the short runs: FGSM without random start (step
#: eps) at MNIST's eps 0.3 collapses within 600 steps; Wong et al.'s FGSM-RS at eps 0.1 trains robust within
#: 300 steps, the probe's PGD close to its FGSM throughout
SHORT_RUNS = {"collapses": ("fgsm_zero_start", 0.3, 6), "healthy": ("fgsm_rs", 0.1, 3)}


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("case, seed", [("collapses", 0), ("collapses", 1),
                                        ("healthy", 0), ("healthy", 1), ("healthy", 2)])
def test_probe_flags_a_collapsed_run_and_stays_silent_on_a_healthy_one_over_seeds(
        shared_data, tmp_path_factory, recwarn, case, seed):
    """Short MNIST runs with Wong et al.'s recipe (StridedCNN, Adam, cyclic lr 0 -> 5e-3 -> 0, batch 100),
    the monitor's defaults (patience 0.4 of the run) with a probe every 20 steps, over three seeds (model
    initialisation, data order and noise all change with the seed).

    Seed 2 of the collapse case is left out: from a zero start at eps 0.3 without warm-up that run never
    learns (clean 0.134 = one class, PGD = FGSM accuracy: no collapse to flag); with a one-epoch eps
    warm-up it collapses (clean 0.94, PGD-20 0.02) but the monitor stays silent, because its probes (PGD
    0.00-0.07, FGSM-RS 0.37-0.59) cross the rule's thresholds back and forth (PGD < 0.5 x FGSM needs FGSM
    >= 0.5, PGD < 0.1 x FGSM below that) and every crossing restarts the patience. That is a limit of
    the rule, recorded in ``benchmarks/results/single_step_mnist.md``.

    The cases are far from the rule's thresholds rather than tuned to one trajectory (the earlier version,
    Wong et al.'s eps-0.3 recipe on 300 steps, was neither collapsed nor robust yet, and all three of its
    verdicts flipped with a one-step shift of the learning rate; the start clipped to the box, 600 steps,
    collapsed on seed 0 -- clean 0.96, PGD-20 0.06 -- but not on seed 1 -- PGD-20 0.32 -- and N-FGSM
    with clipped noise collapsed on seed 1 only). Collapsed: FGSM from a zero start (Wong et al. and
    Andriushchenko & Flammarion's catastrophic-overfitting case) at eps 0.3 for 600 steps, watched by the
    stand-alone monitor; seeds 0 / 1 end at clean 0.96 / 0.79 and PGD-20 0.004 / 0.000, their probes from
    step ~200 on at PGD 0.00-0.07 with FGSM-RS 0.4-0.6. Healthy: FGSM-RS at eps 0.1 for 300 steps; seed
    0 ends at clean 0.97 and PGD-20 0.89, probe PGD within 0.07 of FGSM at every probe. Wong et al.'s
    recipe at eps 0.3 needs its full 6000 steps to become robust; the rule's verdicts on those runs are
    replayed from their logged probes in ``tests/test_overfitting_monitor.py``."""
    from mmrobust.attacks import FGSM, PGD
    from mmrobust.callbacks import AdversarialTraining, CatastrophicOverfittingMonitor
    from mmrobust.image import StridedCNN
    from mmrobust.training import RobustClassifier

    method, eps, epochs = SHORT_RUNS[case]
    (x, y), (xt, yt) = mnist_subset(shared_data, tmp_path_factory)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pl.seed_everything(seed, verbose=False)
        net = StridedCNN()
        module = RobustClassifier(net, optimizer="adam", lr=5e-3, weight_decay=0.0, scheduler="cyclic",
                                  track_clean_acc=False)
        threat = LinfBall(eps, lower=0, upper=1)
        if method == "fgsm_zero_start":
            monitor = CatastrophicOverfittingMonitor(threat, every_n_steps=20, seed=seed)
            callbacks = [monitor, AdversarialTraining(FGSM(threat, step_size=1.0, random_start=False))]
        else:
            callbacks = [FastAdversarialTraining(threat, method=method, probe_every_n_steps=20, seed=seed)]
            monitor = callbacks[0].monitor
        t = pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                       enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
        t.fit(module, DataLoader(TensorDataset(x, y), batch_size=100, shuffle=True,
                                 generator=torch.Generator().manual_seed(seed)))
        result = PGD(threat, steps=20, seed=0)(net.eval(), [xt, yt])
    finally:
        torch.set_num_threads(threads)
    clean, robust = result.clean_correct.float().mean().item(), result.robust.float().mean().item()
    warned = [w for w in recwarn if "catastrophic overfitting" in str(w.message)]
    assert monitor.rule.patience_steps == math.ceil(0.4 * 100 * epochs)
    if case == "collapses":  # accurate and not robust at all on the test set, and flagged
        assert clean > 0.7 and robust < 0.05, (clean, robust)
        assert monitor.overfitting_detected and len(warned) == 1
    else:  # accurate and robust, and no warning
        assert clean > 0.9 and robust > 0.7, (clean, robust)
        assert not monitor.overfitting_detected and not warned


class ScriptedAttack:
    """Stands in for a probe attack: returns the next scripted accuracy on a 100-unit batch."""

    def __init__(self, accuracies):
        self.accuracies = list(accuracies)

    def for_stage(self, batch, stage):
        return self

    def __call__(self, model, batch):
        from types import SimpleNamespace
        acc = self.accuracies.pop(0)
        return SimpleNamespace(adv_correct=torch.arange(100) < round(100 * acc))


@pytest.mark.parametrize("window, pgd, flagged_at", [
    (3, [0.5, 0.7, 0.72, 0.45, 0.7, 0.72], None),   # one batch's chance drop: silent with the window
    (1, [0.5, 0.7, 0.72, 0.45, 0.7, 0.72], 3),      # ... and flagged by the single-probe rule
    (3, [0.5, 0.7, 0.72, 0.3, 0.2, 0.1], 4),        # a lasting drop: flagged one probe later
])
def test_the_probe_rule_reads_the_mean_of_the_last_probes(window, pgd, flagged_at, recwarn):
    cb = FastAdversarialTraining(LinfBall(EPS, lower=0, upper=1), probe_window=window, patience=0, seed=0)
    cb.monitor.probe, cb.monitor.probe_fgsm = ScriptedAttack(pgd), ScriptedAttack([0.9] * len(pgd))
    module = Plain()
    flags = [cb.run_probe(module, None) is not None for _ in pgd]
    assert flags.index(True) == flagged_at if flagged_at is not None else not any(flags)
    assert cb.overfitting_detected == (flagged_at is not None)
