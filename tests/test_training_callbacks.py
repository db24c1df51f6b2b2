"""AdversarialTraining / FastAdversarialTraining callbacks and RobustClassifier on small digits runs."""

import warnings

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mmrobust.attacks import PGD
from mmrobust.callbacks import AdversarialTraining, FastAdversarialTraining, catastrophic_overfitting
from mmrobust.objectives import TradesAttack, other_class_confidence
from mmrobust.threats import LinfBall
from mmrobust.training import RobustClassifier

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")

EPS = 0.2


def bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 64, 10))


class UserModule(pl.LightningModule):
    """A user's plain module; records what training_step saw."""

    def __init__(self):
        super().__init__()
        self.net = bn_net()
        self.seen = []
        self.modes = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = (batch["image"], batch["label"]) if isinstance(batch, dict) else (batch[0], batch[1])
        self.seen.append(x.detach().clone())
        self.modes.append((self.training, all(p.requires_grad for p in self.parameters())))
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def trainer(tmp_path=None, **kw):
    kw.setdefault("max_epochs", 1)
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, deterministic=True, default_root_dir=tmp_path, **kw)


def loader(digits, n=96, batch_size=32, collate_fn=None):
    x, y = digits[0][:n], digits[1][:n]
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False, collate_fn=collate_fn)


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_zero_budget_adversarial_training_is_bitwise_a_plain_run(digits):
    """The attack runs in eval mode with frozen parameters: weights, BN buffers and optimizer match a plain run."""
    plain = UserModule()
    t = trainer(max_steps=3)
    t.fit(plain, loader(digits))
    robust = UserModule()
    cb = AdversarialTraining(PGD(LinfBall(0.0, lower=0, upper=1), steps=3, seed=0))
    t2 = trainer(max_steps=3, callbacks=[cb])
    t2.fit(robust, loader(digits))
    a, b = state(plain), state(robust)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(mode == (True, True) for mode in robust.modes)
    assert robust.training and all(p.requires_grad and p.grad is not None for p in robust.parameters())
    assert t2.optimizers[0].param_groups[0]["lr"] == t.optimizers[0].param_groups[0]["lr"]
    sa, sb = t.optimizers[0].state_dict()["state"], t2.optimizers[0].state_dict()["state"]
    assert all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)
    assert cb.adversarial_steps == 3


def test_training_step_sees_adversarial_examples_and_user_data_is_untouched(digits):
    x, y = digits[0][:64].clone(), digits[1][:64].clone()
    x_before = x.clone()
    module = UserModule()
    cb = AdversarialTraining(PGD(LinfBall(EPS, lower=0, upper=1), steps=3, seed=0))
    trainer(callbacks=[cb]).fit(module, DataLoader(TensorDataset(x, y), batch_size=32))
    assert torch.equal(x, x_before)
    for i, seen in enumerate(module.seen):
        clean = x[32 * i:32 * (i + 1)]
        dist = (seen - clean).flatten(1).abs().amax(1)
        assert bool((dist <= EPS + 1e-6).all()) and bool((dist > EPS / 2).all())
        assert seen.min() >= 0 and seen.max() <= 1


def test_ratio_replaces_that_fraction_of_units_and_dict_batches_work(digits):
    x, y = digits[0][:64], digits[1][:64]
    batches = DataLoader(TensorDataset(x, y), batch_size=32,
                         collate_fn=lambda s: {"image": torch.stack([a for a, _ in s]),
                                               "label": torch.stack([b for _, b in s])})
    module = UserModule()
    cb = AdversarialTraining(PGD(LinfBall(EPS, lower=0, upper=1), steps=2, seed=0), ratio=0.25, seed=3)
    trainer(callbacks=[cb]).fit(module, batches)
    for i, seen in enumerate(module.seen):
        changed = (seen - x[32 * i:32 * (i + 1)]).flatten(1).abs().amax(1) > 0
        assert int(changed.sum()) == 8
    # different batches get different units
    first = (module.seen[0] != x[:32]).flatten(1).any(1)
    second = (module.seen[1] != x[32:64]).flatten(1).any(1)
    assert not torch.equal(first, second)


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_the_batch_is_read_with_one_inferred_adapter_per_step(digits, monkeypatch, ratio):
    """The adapter is inferred once per training step (attack, ``ratio < 1`` selection and the logged
    adversarial accuracy share it), not once per reader."""
    import mmrobust.adapters.base as adapters_base
    import mmrobust.attacks.base as attacks_base
    calls = []
    real = adapters_base.infer_adapter

    def counting(batch):
        calls.append(1)
        return real(batch)

    monkeypatch.setattr(adapters_base, "infer_adapter", counting)
    monkeypatch.setattr(attacks_base, "infer_adapter", counting)
    cb = AdversarialTraining(PGD(LinfBall(EPS, lower=0, upper=1), steps=1, seed=0), ratio=ratio)
    trainer(callbacks=[cb], log_every_n_steps=1).fit(UserModule(), loader(digits, n=64))
    assert cb.adversarial_steps == 2 and len(calls) == 2


def test_warmup_grows_the_budget_linearly_and_start_epoch_delays_it(digits):
    module = UserModule()
    cb = AdversarialTraining(PGD(LinfBall(EPS, lower=0, upper=1), steps=2, seed=0), warmup_epochs=1, start_epoch=1)
    trainer(max_epochs=3, callbacks=[cb]).fit(module, loader(digits, n=128))
    x = digits[0][:128]
    sizes = [(seen - x[32 * (i % 4):32 * (i % 4 + 1)]).flatten(1).abs().amax(1).max().item()
             for i, seen in enumerate(module.seen)]
    assert sizes[:4] == [0.0] * 4  # epoch 0 is clean
    expected = [EPS * f for f in (0.0, 0.25, 0.5, 0.75)] + [EPS] * 4
    assert sizes[4:] == pytest.approx(expected, abs=1e-5)


def test_immutable_tuple_batches_get_a_clear_error(digits):
    module = UserModule()
    cb = AdversarialTraining(PGD(LinfBall(EPS, lower=0, upper=1), steps=1, seed=0))
    tuple_loader = loader(digits, collate_fn=lambda s: (torch.stack([a for a, _ in s]), torch.stack([b for _, b in s])))
    with pytest.raises(TypeError, match="return a list or a dict"):
        trainer(callbacks=[cb]).fit(module, tuple_loader)
    assert module.training and all(p.requires_grad for p in module.parameters())


def test_bad_arguments_name_the_argument():
    attack = PGD(LinfBall(EPS), steps=1)
    with pytest.raises(ValueError, match="ratio must lie in \\(0, 1\\]"):
        AdversarialTraining(attack, ratio=0.0)
    with pytest.raises(ValueError, match="every_n_steps must be an integer >= 1"):
        AdversarialTraining(attack, every_n_steps=0)
    with pytest.raises(TypeError, match="attack must be an mmrobust Attack"):
        AdversarialTraining(lambda m, b: b)
    with pytest.raises(ValueError, match="co_threshold must lie in"):
        FastAdversarialTraining(LinfBall(EPS), co_threshold=2.0)


def make_callbacks(seed):
    threat = LinfBall(EPS, lower=0, upper=1)
    cbs = [AdversarialTraining(PGD(threat, steps=2, seed=seed), ratio=0.5, warmup_epochs=1, every_n_steps=2,
                               seed=seed),
           FastAdversarialTraining(threat, seed=seed + 10, probe_every_n_steps=3)]
    try:
        from mmrobust.callbacks import AdversarialWeightPerturbation
        cbs.append(AdversarialWeightPerturbation(5e-3))
    except ImportError:  # not there yet
        pass
    return cbs


def test_resumed_run_continues_exactly_like_an_uninterrupted_one(digits, tmp_path):
    pl.seed_everything(0)
    full = UserModule()
    trainer(max_epochs=2, callbacks=make_callbacks(0)).fit(full, loader(digits, n=160))

    pl.seed_everything(0)
    first = UserModule()
    cbs = make_callbacks(0)
    t1 = trainer(max_epochs=1, callbacks=cbs)
    t1.fit(first, loader(digits, n=160))
    ckpt = tmp_path / "epoch1.ckpt"
    t1.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)["callbacks"]
    assert any(v.get("steps_seen") == 5 and v.get("attack", {}).get("rng") is not None for v in saved.values())

    # other seeds: everything the resumed run needs must come from the checkpoint
    pl.seed_everything(0)
    resumed = UserModule()
    resumed_cbs = make_callbacks(123)
    trainer(max_epochs=2, callbacks=resumed_cbs).fit(resumed, loader(digits, n=160), ckpt_path=ckpt)
    a, b = state(full), state(resumed)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    assert resumed_cbs[0].steps_seen == 10 and resumed_cbs[0].adversarial_steps == 4  # step 0 has budget 0 (warm-up)


def test_catastrophic_overfitting_rule():
    assert catastrophic_overfitting(0.45, 0.8, 0.5, co_threshold=0.5, max_drop=0.2) is None
    assert "below 0.5 x the FGSM" in catastrophic_overfitting(0.3, 0.9, 0.3, co_threshold=0.5, max_drop=0.2)
    assert "dropped more than 0.2" in catastrophic_overfitting(0.3, 0.4, 0.6, co_threshold=0.5, max_drop=0.2)
    # early training, both accuracies near zero: below the FGSM floor nothing is flagged
    assert catastrophic_overfitting(0.0, 0.02, 0.0, co_threshold=0.5, max_drop=0.2, min_fgsm_acc=0.2) is None
    # PGD breaks nearly every point FGSM leaves (plain FGSM training): below the first floor, still flagged
    assert "below 0.1 x the FGSM" in catastrophic_overfitting(0.01, 0.3, 0.05, co_threshold=0.5, max_drop=0.2,
                                                               min_fgsm_acc=0.5)
    assert catastrophic_overfitting(0.05, 0.3, 0.05, co_threshold=0.5, max_drop=0.2, min_fgsm_acc=0.5) is None


def test_fast_at_probe_warns_when_pgd_breaks_what_fgsm_does_not(digits, digits_cnn, recwarn):
    """A normally trained model at eps 0.2: FGSM leaves ~10% accuracy, PGD ~1% -- the collapse signature;
    at eps 0.05 both leave ~87% and nothing is flagged."""
    module = RobustClassifier(digits_cnn)
    batch = [digits[2][:128], digits[3][:128]]
    healthy = FastAdversarialTraining(LinfBall(0.05, lower=0, upper=1), co_threshold=0.5, seed=0)
    assert healthy.run_probe(module, batch) is None and not healthy.overfitting_detected
    assert 0.8 < healthy.best_probe_acc < 1.0
    assert not [w for w in recwarn if "catastrophic" in str(w.message)]
    broken = FastAdversarialTraining(LinfBall(0.2, lower=0, upper=1), co_threshold=0.5, min_fgsm_acc=0.05, seed=0)
    with pytest.warns(UserWarning, match="catastrophic overfitting"):
        reason = broken.run_probe(module, batch)
    assert "FGSM" in reason and broken.overfitting_detected
    with warnings.catch_warnings():  # flagged again, but warned only once
        warnings.simplefilter("error")
        assert broken.run_probe(module, batch) is not None
    # a drop from the best probe accuracy is flagged too
    healthy.monitor.rule.best = 1.0
    with pytest.warns(UserWarning, match="dropped more than 0.1"):
        healthy.monitor.rule.max_drop = 0.1
        healthy.run_probe(module, batch)
    assert not digits_cnn.training and all(p.requires_grad for p in digits_cnn.parameters())


def test_fast_at_probe_is_not_judged_during_the_warmup(digits, digits_cnn, recwarn):
    """Mid warm-up the probe runs at the step's budget and never flags: the config that warns at eps 0.2
    (previous test) stays quiet at a quarter of it, and its accuracies are those of eps 0.05."""
    module = RobustClassifier(digits_cnn)
    batch = [digits[2][:128], digits[3][:128]]
    cb = FastAdversarialTraining(LinfBall(0.2, lower=0, upper=1), co_threshold=0.5, min_fgsm_acc=0.05, seed=0)
    assert cb.run_probe(module, batch, budget_factor=0.25) is None
    assert not cb.overfitting_detected and cb.best_probe_acc == -1.0
    assert cb.last_probe["budget_factor"] == 0.25 and cb.last_probe["pgd_acc"] > 0.8
    assert not [w for w in recwarn if "catastrophic" in str(w.message)]
    assert cb.attack.threat.eps == 0.2 and cb.monitor.probe.threat.eps == 0.2  # the callback's own attacks untouched
    with pytest.raises(ValueError, match="budget_factor"):
        cb.run_probe(module, batch, budget_factor=0.0)


def test_fast_at_logs_the_probe_during_training(digits):
    module = UserModule()
    cb = FastAdversarialTraining(LinfBall(EPS, lower=0, upper=1), probe_every_n_steps=2, seed=0)
    t = trainer(callbacks=[cb])
    t.fit(module, loader(digits))
    assert "train/pgd_probe_acc" in t.callback_metrics and "train/fgsm_probe_acc" in t.callback_metrics
    assert cb.best_probe_acc >= 0
    x = digits[0][:96]
    for i, seen in enumerate(module.seen):
        assert (seen - x[32 * i:32 * (i + 1)]).abs().max() <= EPS + 1e-6


class StateRecorder(pl.Callback):
    """The module's state at the start of every training step (listed before the callback under test)."""

    def __init__(self):
        self.states = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.states[trainer.global_step] = state(pl_module)


def flag_from_probe(monkeypatch, first_flagged, also=()):
    """The collapse rule fires from its ``first_flagged``-th call (0-based) on, and at the calls in ``also``."""
    calls = []

    def rule(*args, **kwargs):
        calls.append(1)
        return "PGD accuracy collapsed (test)" if len(calls) > first_flagged or len(calls) - 1 in also else None

    monkeypatch.setattr("mmrobust.callbacks.overfitting_monitor.catastrophic_overfitting", rule)


@pytest.mark.parametrize("on_overfit", ["warn", "stop", "restore"])
def test_fast_at_on_overfit_warns_stops_or_restores_the_last_healthy_weights(digits, monkeypatch, on_overfit):
    """Probes at steps 0, 2, 4, ...; the third (step 4) is flagged. "stop" ends training after that step,
    "restore" also puts back the weights of step 2's probe (Wong et al.'s early stopping), "warn" trains on."""
    flag_from_probe(monkeypatch, 2)
    module, recorder = UserModule(), StateRecorder()
    cb = FastAdversarialTraining(LinfBall(EPS, lower=0, upper=1), probe_every_n_steps=2, probe_steps=2, probe_window=1, patience=0,
                                 on_overfit=on_overfit, seed=0)
    t = trainer(max_epochs=3, callbacks=[recorder, cb])
    with pytest.warns(UserWarning, match="catastrophic overfitting at step 4"):
        t.fit(module, loader(digits, n=192))
    assert cb.overfitting_detected
    if on_overfit == "warn":
        assert t.global_step == 18 and cb.healthy_state is None
        return
    assert t.global_step == 5  # the flagged step itself still trains
    final = state(module)
    if on_overfit == "stop":
        assert cb.healthy_state is None
        assert any(not torch.equal(final[k], recorder.states[4][k]) for k in final)  # last weights kept
        return
    assert cb.healthy_step == 2
    assert all(torch.equal(final[k], recorder.states[2][k]) for k in final)  # parameters and BN buffers
    assert any(not torch.equal(final[k], recorder.states[4][k]) for k in final)


def test_fast_at_restore_during_the_warmup_uses_the_last_probe_without_the_collapse_signature(digits, monkeypatch):
    """Warm-up over the first epoch (6 steps): probes at steps 2 and 4 run at 1/3 and 2/3 of the budget and
    cannot warn; step 4's shows the signature, so the copy stays at step 2; step 6 is judged and flagged."""
    flag_from_probe(monkeypatch, 2, also=(1,))
    module, recorder = UserModule(), StateRecorder()
    cb = FastAdversarialTraining(LinfBall(EPS, lower=0, upper=1), probe_every_n_steps=2, probe_steps=2, probe_window=1, patience=0,
                                 on_overfit="restore", warmup_epochs=1, seed=0)
    t = trainer(max_epochs=3, callbacks=[recorder, cb])
    with pytest.warns(UserWarning, match="at step 6: .* last healthy probe \\(step 2\\)"):
        t.fit(module, loader(digits, n=192))
    assert t.global_step == 7 and cb.healthy_step == 2
    final = state(module)
    assert all(torch.equal(final[k], recorder.states[2][k]) for k in final)


def test_fast_at_restore_refuses_weights_of_another_structure(digits, monkeypatch):
    """State entries added after the healthy probe (here a buffer registered at step 3): warn, keep the weights.
    (mmrobust's own Pruning/Quantization register theirs at setup, so their masks rewind with the weights.)"""

    class AddsBuffer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 3:
                pl_module.register_buffer("late", torch.zeros(1))

    flag_from_probe(monkeypatch, 2)
    module = UserModule()
    cb = FastAdversarialTraining(LinfBall(EPS, lower=0, upper=1), probe_every_n_steps=2, probe_steps=2, probe_window=1, patience=0,
                                 on_overfit="restore", seed=0)
    with pytest.warns(UserWarning, match="changed shape since the healthy probe at step 2"):
        trainer(max_epochs=2, callbacks=[cb, AddsBuffer()]).fit(module, loader(digits))
    assert "late" in module.state_dict()


def test_fast_at_restore_keeps_its_healthy_weights_in_the_checkpointed_state(digits, monkeypatch, tmp_path):
    flag_from_probe(monkeypatch, 10)
    module = UserModule()
    cb = FastAdversarialTraining(LinfBall(EPS, lower=0, upper=1), probe_every_n_steps=2, probe_steps=2, probe_window=1, patience=0,
                                 on_overfit="restore", seed=0)
    trainer(callbacks=[cb]).fit(module, loader(digits))
    assert cb.healthy_step == 2 and not cb.overfitting_detected
    torch.save(cb.state_dict(), tmp_path / "cb.pt")
    resumed = FastAdversarialTraining(LinfBall(EPS, lower=0, upper=1), on_overfit="restore", seed=1)
    resumed.load_state_dict(torch.load(tmp_path / "cb.pt", weights_only=True))
    assert resumed.healthy_step == 2
    assert all(torch.equal(resumed.healthy_state[k], v) for k, v in cb.healthy_state.items())


def test_fast_at_restore_without_a_healthy_probe_says_so(digits, monkeypatch):
    flag_from_probe(monkeypatch, 0)
    module = UserModule()
    cb = FastAdversarialTraining(LinfBall(EPS, lower=0, upper=1), probe_every_n_steps=2, probe_steps=2, probe_window=1, patience=0,
                                 on_overfit="restore", seed=0)
    with pytest.warns(UserWarning, match="no healthy weights to restore"):
        trainer(max_epochs=2, callbacks=[cb]).fit(module, loader(digits))
    assert cb.healthy_state is None and cb.overfitting_detected
    with pytest.raises(ValueError, match="on_overfit must be one of"):
        FastAdversarialTraining(LinfBall(EPS), on_overfit="rewind")


# -- RobustClassifier -----------------------------------------------------------------------------

@pytest.mark.parametrize("objective, attack", [
    ("ce", None),
    ("ce", lambda t: PGD(t, steps=2, seed=0)),
    ("trades", lambda t: TradesAttack(t, steps=2, seed=0)),
    ("mart", lambda t: PGD(t, steps=2, seed=0)),
    ("ccat", lambda t: PGD(t, steps=2, loss=other_class_confidence, seed=0)),
])
def test_robust_classifier_objectives_train_and_log(digits, objective, attack):
    threat = LinfBall(EPS, lower=0, upper=1)
    module = RobustClassifier(bn_net(), objective=objective, attack=None if attack is None else attack(threat),
                              optimizer="adam", lr=1e-2, scheduler="cosine")
    before = state(module.model)
    t = trainer(max_epochs=2)
    t.fit(module, loader(digits, n=64), loader(digits, n=64))
    assert "train/loss" in t.callback_metrics and "val/clean_acc" in t.callback_metrics
    assert "train/clean_acc" in t.callback_metrics
    if attack is not None:
        assert "train/adv_acc" in t.callback_metrics
    after = state(module.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert t.lr_scheduler_configs[0].scheduler.T_max == 2
    assert all(p.requires_grad for p in module.parameters())


def test_cyclic_schedule_is_wong_et_al_s_per_step_learning_rate(digits):
    """Wong et al. 2020's cyclic learning rate as their code indexes it (``locuslab/fast_adversarial``,
    ``MNIST/train_mnist.py``: ``lr = interp(epoch + (i + 1) / N, [0, 2 epochs // 5, epochs], [0, lr_max, 0])``
    set before step ``i``): 0 -> lr over the first 40% of all steps, back to 0 at the last step."""
    import numpy as np

    seen = []

    class RecordLR(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    epochs, n_batches, lr_max = 5, 4, 0.01
    module = RobustClassifier(bn_net(), optimizer="adam", lr=lr_max, scheduler="cyclic", peak=0.4)
    t = trainer(max_epochs=epochs, callbacks=[RecordLR()])
    t.fit(module, loader(digits, n=16 * n_batches, batch_size=16))  # 4 steps per epoch, 20 in all
    assert t.lr_scheduler_configs[0].interval == "step"
    wong = [np.interp(epoch + (i + 1) / n_batches, [0, epochs * 2 // 5, epochs], [0, lr_max, 0])
            for epoch in range(epochs) for i in range(n_batches)]
    assert len(seen) == 20
    assert seen == pytest.approx(wong, abs=1e-12)
    assert seen[0] == pytest.approx(lr_max / 8)  # first step: one step up the ramp, not 0
    assert seen.index(max(seen)) == 7 and max(seen) == pytest.approx(lr_max)  # peak after 8 of 20 steps
    assert seen[-1] == 0.0  # the last step ends the schedule


def test_robust_classifier_rejects_bad_configuration():
    with pytest.raises(ValueError, match="objective must be one of"):
        RobustClassifier(bn_net(), objective="hinge")
    with pytest.raises(ValueError, match="needs a training attack"):
        RobustClassifier(bn_net(), objective="trades")
    with pytest.raises(ValueError, match="peak"):
        RobustClassifier(bn_net(), scheduler="cyclic", peak=1.0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        RobustClassifier(bn_net(), optimizer="lbfgs")
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        RobustClassifier(bn_net(), lr=0)


def test_robust_classifier_checkpoints_the_attack_rng(digits, tmp_path):
    attack = PGD(LinfBall(EPS, lower=0, upper=1), steps=1, seed=5)
    module = RobustClassifier(bn_net(), attack=attack)
    t = trainer(max_steps=1)
    t.fit(module, loader(digits, n=32))
    t.save_checkpoint(tmp_path / "m.ckpt")
    expected = attack.generator().get_state()
    fresh = RobustClassifier(bn_net(), attack=PGD(LinfBall(EPS, lower=0, upper=1), steps=1, seed=9))
    fresh.on_load_checkpoint(torch.load(tmp_path / "m.ckpt", weights_only=False))
    assert torch.equal(fresh.attack.generator().get_state(), expected)


@pytest.mark.slow
def test_adversarial_training_raises_pgd_robust_accuracy_far_above_normal_training(digits):
    x, y, xt, yt = digits
    threat = LinfBall(EPS, lower=0, upper=1)
    data = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    results = {}
    for name, callbacks in (("normal", []), ("at", [AdversarialTraining(PGD(threat, steps=5, seed=0))])):
        pl.seed_everything(0)
        torch.manual_seed(0)
        from tests.conftest import make_digits_cnn
        module = RobustClassifier(make_digits_cnn(), optimizer="adam", lr=3e-3, weight_decay=0.0)
        trainer(max_epochs=8, callbacks=callbacks).fit(module, data)
        model = module.model.eval()
        result = PGD(threat, steps=20, seed=1)(model, [xt, yt])
        results[name] = (result.clean_correct.float().mean().item(), result.robust.float().mean().item())
    assert results["normal"][0] > 0.9 and results["normal"][1] < 0.2
    assert results["at"][1] > results["normal"][1] + 0.4
    assert results["at"][0] > 0.8


def test_callback_adapter_reads_custom_keys_and_advances_the_attack_rng(digits):
    from mmrobust.adapters import TensorAdapter

    x, y = digits[0][:64], digits[1][:64]

    class KeyModule(UserModule):
        def training_step(self, batch, batch_idx):
            return super().training_step({"image": batch["pixels"], "label": batch["cls"]}, batch_idx)

    batches = DataLoader(TensorDataset(x, y), batch_size=32,
                         collate_fn=lambda s: {"pixels": torch.stack([a for a, _ in s]),
                                               "cls": torch.stack([b for _, b in s]), "id": "meta"})
    attack = PGD(LinfBall(EPS, lower=0, upper=1), steps=1, seed=0)
    module = KeyModule()
    cb = AdversarialTraining(attack, warmup_epochs=1, adapter=TensorAdapter(input_key="pixels", target_key="cls"))
    trainer(callbacks=[cb]).fit(module, batches)
    assert (module.seen[1] - x[32:]).abs().max() > 0
    # the warm-up copies share the attack's generator: its stream advanced and is checkpointed
    rng = cb.state_dict()["attack"]["rng"]
    fresh = torch.Generator().manual_seed(0).get_state()
    assert rng is not None and not torch.equal(rng, fresh)


def test_graph_batches_are_attacked_through_the_graph_adapter():
    pytest.importorskip("torch_geometric")
    from torch_geometric.data import Data
    from torch_geometric.loader import DataLoader as GraphLoader
    from torch_geometric.nn import GCNConv

    from mmrobust.adapters.graph import GraphAdapter

    g = torch.Generator().manual_seed(0)
    n = 30
    data = Data(x=torch.rand(n, 5, generator=g), edge_index=torch.randint(0, n, (2, 90), generator=g),
                y=torch.randint(0, 3, (n,), generator=g), train_mask=torch.arange(n) < 20)
    x_before = data.x.clone()

    class GraphModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = GCNConv(5, 3)
            self.seen = []

        def forward(self, x, edge_index, edge_weight=None, batch=None):
            return self.conv(x, edge_index, edge_weight)

        def training_step(self, batch, batch_idx):
            self.seen.append(batch.x.detach().clone())
            out = self(batch.x, batch.edge_index)
            return nn.functional.cross_entropy(out[batch.train_mask], batch.y[batch.train_mask])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = GraphModule()
    cb = AdversarialTraining(PGD(LinfBall(0.1, lower=0, upper=1), steps=3, seed=0),
                             adapter=GraphAdapter(mask="train"))
    trainer(max_epochs=2, callbacks=[cb]).fit(module, GraphLoader([data], batch_size=1))
    assert torch.equal(data.x, x_before)
    assert cb.adversarial_steps == 2
    for seen in module.seen:
        dist = (seen - x_before).abs().max()
        assert 0.05 < dist <= 0.1 + 1e-6


@pytest.mark.parametrize("objective", ["trades", "ccat"])
def test_robust_classifier_trains_graph_models_through_the_graph_adapter(objective):
    pytest.importorskip("torch_geometric")
    from torch_geometric.data import Data
    from torch_geometric.loader import DataLoader as GraphLoader
    from torch_geometric.nn import GCNConv

    from mmrobust.adapters.graph import GraphAdapter

    class GCN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = GCNConv(5, 3)

        def forward(self, x, edge_index, edge_weight=None):
            return self.conv(x, edge_index, edge_weight)

    g = torch.Generator().manual_seed(0)
    graphs = [Data(x=torch.rand(12, 5, generator=g), edge_index=torch.randint(0, 12, (2, 30), generator=g),
                   y=torch.randint(0, 3, (12,), generator=g), train_mask=torch.ones(12, dtype=torch.bool))
              for _ in range(4)]
    threat = LinfBall(0.1, lower=0, upper=1)
    attack = (TradesAttack(threat, steps=2, seed=0) if objective == "trades"
              else PGD(threat, steps=2, loss=other_class_confidence, seed=0))
    torch.manual_seed(0)
    module = RobustClassifier(GCN(), objective=objective, attack=attack, adapter=GraphAdapter(mask="train"),
                              optimizer="adam", lr=1e-2)
    before = state(module.model)
    t = trainer(max_epochs=1)
    t.fit(module, GraphLoader(graphs, batch_size=2))
    assert "train/adv_acc" in t.callback_metrics
    assert any(not torch.equal(before[k], v) for k, v in state(module.model).items())
