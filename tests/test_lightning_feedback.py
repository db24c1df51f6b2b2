"""What a Lightning user expects to see (issue 19): robust accuracy in the progress bar, AdversarialTraining
logging what it does, the same number from the same weights (``validate()`` after ``fit`` reproduces the
last logged value; ``Attack.reseed``), and an ``evaluate`` progress bar that moves per attack and stays
quiet off a terminal."""

from __future__ import annotations

import io

import pytest
import pytorch_lightning as pl
import torch

from mmrobust import PGD, LinfBall, evaluate
from mmrobust.callbacks import AdversarialTraining, RobustnessEvaluation
from mmrobust.image import DigitsDataModule, SmallCNN
from mmrobust.training import RobustClassifier

THREAT = LinfBall(0.1, lower=0.0, upper=1.0)


def _trainer(callbacks, **kw):
    kw = {"max_epochs": 2, "limit_train_batches": 3, "limit_val_batches": 2, "log_every_n_steps": 1,
          "num_sanity_val_steps": 0, "enable_model_summary": False, "enable_progress_bar": False,
          "logger": False, "enable_checkpointing": False, "accelerator": "cpu", "deterministic": True, **kw}
    return pl.Trainer(callbacks=callbacks, **kw)


def _module_and_data():
    pl.seed_everything(0, verbose=False)
    module = RobustClassifier(SmallCNN(image_size=8, width=0.5, hidden=32), optimizer="adam", lr=3e-3,
                              weight_decay=0.0)
    return module, DigitsDataModule(batch_size=32, seed=0)


def test_validate_after_fit_reproduces_the_logged_robust_accuracy_and_prog_bar():
    module, data = _module_and_data()
    # a small eps with a random start and 2 steps: the random starts change the number
    evaluation = RobustnessEvaluation({"pgd": PGD(LinfBall(0.05, lower=0, upper=1), steps=2, seed=0)},
                                      prog_bar=True)
    trainer = _trainer([evaluation])
    trainer.fit(module, datamodule=data)
    logged = float(trainer.callback_metrics["val/robust_acc"])
    assert "val/robust_acc" in trainer.progress_bar_metrics
    again = trainer.validate(module, datamodule=data, verbose=False)[0]["val/robust_acc"]
    assert again == logged
    assert trainer.validate(module, datamodule=data, verbose=False)[0]["val/robust_acc"] == logged


def test_without_prog_bar_the_bar_stays_clean():
    module, data = _module_and_data()
    trainer = _trainer([RobustnessEvaluation(PGD(THREAT, steps=1, seed=0))], max_epochs=1)
    trainer.fit(module, datamodule=data)
    assert "val/robust_acc" in trainer.callback_metrics
    assert "val/robust_acc" not in trainer.progress_bar_metrics


def test_reseed_restarts_the_random_stream(digits, digits_cnn):
    _, _, xt, yt = digits
    batch = (xt[:16], yt[:16])
    attack = PGD(THREAT, steps=1, seed=3)
    first = attack.generate(digits_cnn, batch)[0]
    second = attack.generate(digits_cnn, batch)[0]
    assert not torch.equal(first, second)  # the generator moved on: other random starts
    assert torch.equal(attack.reseed().generate(digits_cnn, batch)[0], first)
    assert PGD(THREAT, steps=1).reseed().seed is None  # no seed: the global RNG, nothing to restart


def test_evaluate_gives_the_same_number_every_call(digits, digits_cnn):
    _, _, xt, yt = digits
    attack = PGD(LinfBall(0.05, lower=0, upper=1), steps=1, seed=0)
    attack.generate(digits_cnn, (xt[:16], yt[:16]))  # the user used the attack before: its stream moved on
    loader = [(xt[:60], yt[:60])]
    runs = [evaluate(digits_cnn, loader, attack, progress=False)["robust_accuracy"] for _ in range(2)]
    fresh = evaluate(digits_cnn, loader, PGD(LinfBall(0.05, lower=0, upper=1), steps=1, seed=0), progress=False)
    assert runs[0] == runs[1] == fresh["robust_accuracy"]


def test_adversarial_training_logs_accuracy_budget_and_time():
    module, data = _module_and_data()
    seen = []

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})

    at = AdversarialTraining(PGD(THREAT, steps=2, seed=0), warmup_epochs=1)
    trainer = _trainer([at, Spy()], limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    budgets = [s["train/at/budget"] for s in seen]
    assert len(budgets) == 6 and budgets[0] == 0.0 and budgets[-1] == 1.0 and budgets == sorted(budgets)  # warm-up
    assert 0 < budgets[1] < 1
    assert "train/at/adv_acc" not in seen[0]  # budget 0: no attack ran
    assert all(0.0 <= s["train/at/adv_acc"] <= 1.0 for s in seen[1:])
    assert all(s["train/at/attack_time_s"] > 0 for s in seen[1:])
    quiet = AdversarialTraining(PGD(THREAT, steps=1, seed=0), log_metrics=False)
    module, data = _module_and_data()
    trainer = _trainer([quiet], max_epochs=1, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    assert not [k for k in trainer.callback_metrics if k.startswith("train/at/")]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_evaluate_progress_moves_per_attack_and_is_quiet_off_a_terminal(digits, digits_cnn, monkeypatch, capsys):
    _, _, xt, yt = digits
    attacks = {"a": PGD(THREAT, steps=1, seed=0), "b": PGD(THREAT, steps=1, seed=1)}
    evaluate(digits_cnn, [(xt[:8], yt[:8])], attacks, progress=True)  # pytest's stderr is no terminal
    assert "robustness evaluation" not in capsys.readouterr().err
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    evaluate(digits_cnn, [(xt[:8], yt[:8])], attacks, progress=True)
    text = term.getvalue()
    assert "robustness evaluation" in text and "2/2" in text and "batch 1: b" in text
    term2 = _Terminal()
    monkeypatch.setattr("sys.stderr", term2)
    evaluate(digits_cnn, [(xt[:8], yt[:8])], attacks, progress=False)
    assert term2.getvalue() == ""
