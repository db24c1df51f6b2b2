"""evaluate() and the RobustnessEvaluation callback inside real Trainer.validate/test/fit loops."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mmrobust
from mmrobust.attacks import FGSM, PGD, Ensemble
from mmrobust.callbacks import RobustnessEvaluation
from mmrobust.threats import LinfBall
from mmrobust.objectives import TradesAttack

EPS = 0.1


def pgd(seed=0):
    return PGD(LinfBall(EPS, lower=0.0, upper=1.0), steps=5, seed=seed)


def loader(digits, n=200, batch_size=50):
    _, _, xt, yt = digits
    return DataLoader(TensorDataset(xt[:n], yt[:n]), batch_size=batch_size)


class Wrapped(pl.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.ran_in_inference_mode = torch.is_inference_mode_enabled() and x.is_inference()
        self.log("val/loss", nn.functional.cross_entropy(self(x), y))

    def test_step(self, batch, batch_idx):
        self.ran_in_inference_mode = torch.is_inference_mode_enabled() and batch[0].is_inference()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def trainer(tmp_path, callbacks, **kwargs):
    return pl.Trainer(default_root_dir=tmp_path, callbacks=callbacks, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                      **kwargs)


def evaluate_counting_inputs(model, data, attack, **kwargs):
    """``(mmrobust.evaluate's result, number of inputs the model's forward saw)``."""
    seen = []
    hook = model.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        return mmrobust.evaluate(model, data, attack, progress=False, **kwargs), sum(seen)
    finally:
        hook.remove()


def test_evaluate_stops_early_for_the_same_accuracy_at_less_cost(digits, digits_cnn):
    """Only whether an output broke is read, so early stopping keeps the numbers and saves model passes."""
    attack = PGD(LinfBall(0.2, lower=0.0, upper=1.0), steps=10, seed=0)
    fast, work_fast = evaluate_counting_inputs(digits_cnn, loader(digits), attack)
    full, work_full = evaluate_counting_inputs(digits_cnn, loader(digits), attack, early_stop=False)
    assert abs(fast["robust_accuracy"] - full["robust_accuracy"]) <= 1 / fast["num_examples"]
    assert fast["clean_accuracy"] == full["clean_accuracy"] and full["robust_accuracy"] < 0.3
    assert work_fast < 0.6 * work_full  # most digits break within a few of the 10 steps at eps 0.2
    assert attack.early_stop is False  # the user's attack is untouched
    # an attack that cannot stop early is left as it is
    trades = mmrobust.evaluate(digits_cnn, loader(digits, n=50), TradesAttack(LinfBall(EPS), steps=2, seed=0),
                               progress=False)
    assert 0.0 <= trades["robust_accuracy"] <= trades["clean_accuracy"]


def test_evaluate_stops_early_inside_a_user_built_ensemble(digits, digits_cnn):
    """early_stop reaches the members of an Ensemble the user built (on the private copies only)."""
    members = [PGD(LinfBall(0.2, lower=0.0, upper=1.0), steps=10, seed=0),
               PGD(LinfBall(0.2, lower=0.0, upper=1.0), steps=10, seed=1)]
    ensemble = Ensemble(members)
    fast, work_fast = evaluate_counting_inputs(digits_cnn, loader(digits), ensemble)
    full, work_full = evaluate_counting_inputs(digits_cnn, loader(digits), ensemble, early_stop=False)
    assert abs(fast["robust_accuracy"] - full["robust_accuracy"]) <= 1 / fast["num_examples"]
    assert work_fast < 0.8 * work_full
    assert all(m.early_stop is False for m in ensemble.attacks)  # the user's members are untouched


def test_evaluate_lowers_accuracy_and_reports_settings(digits, digits_cnn):
    before = copy.deepcopy(digits_cnn.state_dict())
    out = mmrobust.evaluate(digits_cnn, loader(digits), [pgd(), FGSM(LinfBall(EPS, lower=0.0, upper=1.0))],
                            progress=False)
    assert out["num_examples"] == 200 and out["num_batches"] == 4
    assert out["clean_accuracy"] > 0.9
    assert out["robust_accuracy"] < out["clean_accuracy"] - 0.3
    assert set(out["per_attack"]) == {"pgd", "fgsm"}
    # the worst case is at most every single attack, and PGD is at least as strong as FGSM here
    assert out["robust_accuracy"] <= min(out["per_attack"].values()) + 1e-9
    assert out["per_attack"]["pgd"] <= out["per_attack"]["fgsm"]
    assert "LinfBall" in out["attacks"]["pgd"] and "steps=5" in out["attacks"]["pgd"]
    assert 0 < out["attack_success_rate"] <= 1
    assert not digits_cnn.training
    for k, v in digits_cnn.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.requires_grad for p in digits_cnn.parameters())


def test_evaluate_is_reproducible_and_respects_max_batches(digits, digits_cnn):
    attack = pgd(seed=3)
    a = mmrobust.evaluate(digits_cnn, loader(digits), attack, max_batches=2, progress=False)
    b = mmrobust.evaluate(digits_cnn, loader(digits), attack, max_batches=2, progress=False)
    assert a["num_examples"] == 100
    assert a == b  # the user's attack object is not advanced by evaluate


def test_evaluate_names_repeated_attacks_and_checks_arguments(digits, digits_cnn):
    out = mmrobust.evaluate(digits_cnn, loader(digits, n=50), [pgd(0), pgd(1)], progress=False)
    assert set(out["per_attack"]) == {"pgd_1", "pgd_2"}
    with pytest.raises(ValueError, match="max_batches"):
        mmrobust.evaluate(digits_cnn, loader(digits), pgd(), max_batches=0)
    with pytest.raises(TypeError, match="attacks"):
        mmrobust.evaluate(digits_cnn, loader(digits), ["pgd"])


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_callback_matches_evaluate_under_default_inference_mode(tmp_path, digits, digits_cnn, stage):
    model = copy.deepcopy(digits_cnn)
    module = Wrapped(model)
    module.train()
    before = copy.deepcopy(module.state_dict())
    flags = [p.requires_grad for p in module.parameters()]
    callback = RobustnessEvaluation({"pgd": pgd()})
    t = trainer(tmp_path, [callback])
    getattr(t, stage)(module, dataloaders=loader(digits), verbose=False)
    assert module.ran_in_inference_mode  # Lightning's default, what users run
    prefix = "val" if stage == "validate" else "test"
    logged = t.callback_metrics
    expected = mmrobust.evaluate(model, loader(digits), {"pgd": pgd()}, progress=False)
    assert logged[f"{prefix}/robust_acc"].item() == pytest.approx(expected["robust_accuracy"])
    assert logged[f"{prefix}/clean_acc"].item() == pytest.approx(expected["clean_accuracy"])
    assert logged[f"{prefix}/robust_acc/pgd"].item() == pytest.approx(expected["per_attack"]["pgd"])
    assert logged[f"{prefix}/robust_acc"].item() < logged[f"{prefix}/clean_acc"].item() - 0.3
    assert module.training
    assert [p.requires_grad for p in module.parameters()] == flags
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k])


def test_checkpoint_can_monitor_robust_accuracy_and_state_round_trips(tmp_path, digits, digits_cnn):
    x, y, _, _ = digits
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=32)
    callback = RobustnessEvaluation(pgd(), max_batches=1, stages=("validate",), prefix="adv_")
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, monitor="adv_val/robust_acc", mode="max")
    t = pl.Trainer(default_root_dir=tmp_path, callbacks=[callback, ckpt], logger=False, enable_progress_bar=False,
                   enable_model_summary=False, accelerator="cpu", devices=1, max_epochs=2,
                   num_sanity_val_steps=1)
    t.fit(Wrapped(copy.deepcopy(digits_cnn)).train(), train, loader(digits))
    assert ckpt.best_model_score is not None and 0 <= ckpt.best_model_score.item() <= 1
    assert "adv_val/robust_acc/pgd" in t.callback_metrics
    # one attacked batch per epoch, no test stage
    assert callback._metrics[("validate", 0)]["robust_acc"].total.item() == 0  # reset after logging
    saved = torch.load(ckpt.best_model_path, weights_only=False)["callbacks"]
    assert any("RobustnessEvaluation" in k and "rng" in v["attacks"]["pgd"] for k, v in saved.items())
    # a resumed callback continues the attack's random stream exactly
    restored = RobustnessEvaluation(pgd(seed=99))
    restored.load_state_dict(callback.state_dict())
    clean = loader(digits, n=20, batch_size=20)
    batch = next(iter(clean))
    ours = callback.attacks["pgd"](digits_cnn, batch).inputs["image"]
    theirs = restored.attacks["pgd"](digits_cnn, batch).inputs["image"]
    assert torch.equal(ours, theirs)


def test_callback_explains_models_built_in_inference_mode(tmp_path, digits, digits_cnn):
    with torch.inference_mode():
        model = copy.deepcopy(digits_cnn)
        frozen = nn.Sequential(*[copy.deepcopy(m) for m in model])
        for p in frozen.parameters():
            p.data = p.data.clone()
    module = Wrapped(frozen)
    t = trainer(tmp_path, [RobustnessEvaluation(pgd())])
    if not any(p.is_inference() for p in module.parameters()):
        pytest.skip("could not build inference-tensor parameters")
    with pytest.raises(RuntimeError, match="inference_mode=False"):
        t.validate(module, dataloaders=loader(digits, n=50), verbose=False)


@pytest.mark.parametrize("kwargs, match", [({"every_n_epochs": 0}, "every_n_epochs"),
                                           ({"stages": ("train",)}, "stages"),
                                           ({"max_batches": 0}, "max_batches")])
def test_callback_checks_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RobustnessEvaluation(pgd(), **kwargs)


class CountingPGD(PGD):
    def __init__(self, *args, calls, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = calls

    def __call__(self, model, batch, **kwargs):
        self.calls.append(len(batch[1]))
        return super().__call__(model, batch, **kwargs)


def test_callback_schedule_limits_and_test_after_fit(tmp_path, digits, digits_cnn):
    x, y, _, _ = digits
    calls = []
    attack = CountingPGD(LinfBall(EPS, lower=0.0, upper=1.0), steps=2, seed=0, calls=calls)
    # checks=False: the attack-failure checks rerun the attack on a few units; this test counts the evaluation's own calls
    callback = RobustnessEvaluation(attack, every_n_epochs=2, max_batches=1, checks=False)
    t = pl.Trainer(default_root_dir=tmp_path, callbacks=[callback], logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                   max_epochs=3, limit_train_batches=1, num_sanity_val_steps=2)
    module = Wrapped(copy.deepcopy(digits_cnn)).train()
    t.fit(module, DataLoader(TensorDataset(x[:32], y[:32]), batch_size=32), loader(digits, batch_size=25))
    # sanity check skipped; epochs 0 and 2 attacked, one batch of 25 each
    assert calls == [25, 25]
    t.test(module, dataloaders=loader(digits, batch_size=25), verbose=False)
    assert calls == [25, 25, 25]  # test after fit (current_epoch 3) is not subject to every_n_epochs
    assert "test/robust_acc" in t.callback_metrics
    t.validate(module, dataloaders=loader(digits, batch_size=25), verbose=False)
    assert calls == [25, 25, 25, 25]  # nor is a standalone validation run


def test_evaluate_reads_custom_batches_through_the_adapter(digits, digits_cnn, capsys):
    from mmrobust.adapters import TensorAdapter

    _, _, xt, yt = digits
    batches = [{"pixels": xt[i:i + 40], "digit": yt[i:i + 40]} for i in range(0, 80, 40)]
    with pytest.raises(TypeError, match="adapter"):
        mmrobust.evaluate(digits_cnn, batches, pgd(), progress=False)
    out = mmrobust.evaluate(digits_cnn, batches, {"strong": pgd()}, device="cpu", progress=True,
                            adapter=TensorAdapter(input_key="pixels", target_key="digit"))
    assert out["num_examples"] == 80 and set(out["per_attack"]) == {"strong"}
    assert out["robust_accuracy"] < out["clean_accuracy"]
    assert "robustness evaluation" not in capsys.readouterr().err  # no bar: stderr is not a terminal here


def test_callback_feeds_result_metrics_such_as_boundary_distance(tmp_path, digits, digits_cnn):
    from mmrobust.attacks import FMN
    from mmrobust.metrics import BoundaryDistance
    from mmrobust.threats import L2Ball

    fmn = FMN(L2Ball(1.0, lower=0.0, upper=1.0), steps=20, seed=0)
    callback = RobustnessEvaluation({"fmn": fmn}, result_metrics={"boundary": ("fmn", BoundaryDistance())})
    t = trainer(tmp_path, [callback])
    t.validate(Wrapped(copy.deepcopy(digits_cnn)), dataloaders=loader(digits, n=100), verbose=False)
    logged = t.callback_metrics
    direct = BoundaryDistance()
    for batch in loader(digits, n=100):
        direct.update(FMN(L2Ball(1.0, lower=0.0, upper=1.0), steps=20, seed=0)(digits_cnn, batch))
    # the callback's FMN continues one seeded stream over batches; compare the statistic loosely
    assert logged["val/boundary/median"].item() == pytest.approx(direct.compute()["median"].item(), rel=0.25)
    assert 0 < logged["val/boundary/median"].item() < 5
    with pytest.raises(KeyError, match="names attack 'pgd'"):
        RobustnessEvaluation({"fmn": fmn}, result_metrics={"b": ("pgd", BoundaryDistance())})
    with pytest.raises(TypeError, match="must be a pair"):
        RobustnessEvaluation({"fmn": fmn}, result_metrics={"b": BoundaryDistance()})


def test_callback_stops_early_except_for_attacks_feeding_result_metrics(digits):
    from mmrobust.metrics import ConfidenceThresholdedError

    mine = pgd()
    callback = RobustnessEvaluation({"fast": mine, "read": pgd()},
                                    result_metrics={"conf": ("read", ConfidenceThresholdedError())})
    assert callback.attacks["fast"].early_stop and not callback.attacks["read"].early_stop
    assert mine.early_stop is False  # the user's attack is untouched
    assert not RobustnessEvaluation({"pgd": pgd()}, early_stop=False).attacks["pgd"].early_stop
