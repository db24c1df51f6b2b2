"""The checks run by default in evaluate(), RobustnessEvaluation and `mmrobust evaluate`'s report, change no
number, and leave the user's model as it was (also when a check raises)."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from _checks_models import Quantised, WithBatchNorm
from mmrobust import PGD, LinfBall, evaluate
from mmrobust.callbacks import RobustnessEvaluation
from mmrobust.checks import CHECKS, FailureChecks
from mmrobust.checks import model as model_checks
from mmrobust.training import RobustClassifier

THREAT = LinfBall(0.1, lower=0, upper=1)


@pytest.fixture(scope="module")
def batches(digits):
    _, _, xt, yt = digits
    return [(xt[:40], yt[:40]), (xt[40:80], yt[40:80])]


def test_evaluate_reports_flags_with_evidence_and_changes_no_number(digits_cnn, batches):
    attack = PGD(THREAT, steps=5, seed=0)
    with pytest.warns(UserWarning, match="zero_gradients"):
        out = evaluate(Quantised(digits_cnn), batches, attack, progress=False)
    assert {"zero_gradients", "gradient_masking", "budget_curve"} <= set(out["check_flags"])
    by_name = {c["name"]: c for c in out["checks"]}
    assert list(by_name) == [n for kind in ("model", "rerun", "results") for n, c in CHECKS.items() if c.kind == kind]
    flag = by_name["zero_gradients"]
    assert flag["fired"] and flag["status"] == "FIRED" and "32 zero" in flag["evidence"] and flag["advice"]
    off = evaluate(Quantised(digits_cnn), batches, attack, progress=False, checks=False)
    assert "checks" not in off and "check_flags" not in off
    for key in ("clean_accuracy", "robust_accuracy", "per_attack", "num_examples"):
        assert out[key] == off[key]
    with pytest.raises(ValueError, match="checks names unknown checks"):
        evaluate(digits_cnn, batches, attack, progress=False, checks=["no_such_check"])


def test_checks_leave_model_modes_weights_and_bn_stats_unchanged_also_when_a_check_raises(digits_cnn, batches,
                                                                                         monkeypatch):
    model = WithBatchNorm(copy.deepcopy(digits_cnn)).train()
    model.net.eval()  # mixed modes must come back as they were
    model.net[0].weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]

    def broken(*args, **kwargs):
        raise RuntimeError("a check that breaks")

    monkeypatch.setitem(CHECKS, "gradient_masking", CHECKS["gradient_masking"])
    monkeypatch.setattr(model_checks, "gradient_masking", broken)
    out = evaluate(model, batches, PGD(THREAT, steps=3, seed=0), progress=False)
    failed = {c["name"]: c for c in out["checks"]}["gradient_masking"]
    assert not failed["ran"] and "a check that breaks" in failed["evidence"]
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    assert all(p.grad is None for p in model.parameters())


def test_failure_checks_restore_the_global_random_state(digits_cnn, batches):
    named = {"pgd": PGD(THREAT, steps=2)}  # global RNG
    results = [named["pgd"](digits_cnn, batches[0])]
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    FailureChecks().observe(digits_cnn, batches[0], named, results)
    assert torch.equal(torch.rand(3), expected)


def test_callback_logs_flags_and_warns_once(tmp_path, digits_cnn, batches):
    module = RobustClassifier(Quantised(copy.deepcopy(digits_cnn)))
    callback = RobustnessEvaluation({"pgd": PGD(THREAT, steps=3, seed=0)}, max_batches=1)
    trainer = pl.Trainer(default_root_dir=tmp_path, callbacks=[callback], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    loader = DataLoader(TensorDataset(*batches[0]), batch_size=40)
    with pytest.warns(UserWarning, match="attack-failure checks fired") as record:
        metrics = trainer.validate(module, dataloaders=loader, verbose=False)[0]
        trainer.validate(module, dataloaders=loader, verbose=False)
    assert sum("attack-failure checks fired" in str(w.message) for w in record) == 1  # once per stage
    assert metrics["val/checks/zero_gradients"] == 1.0
    assert metrics["val/checks/randomised_forward"] == 0.0
    fired = {c.name for c in callback.check_results["validate"] if c.fired}
    assert {"zero_gradients", "gradient_masking"} <= fired
    quiet = RobustnessEvaluation({"pgd": PGD(THREAT, steps=3, seed=0)}, max_batches=1, checks=False)
    trainer = pl.Trainer(default_root_dir=tmp_path, callbacks=[quiet], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    metrics = trainer.validate(module, dataloaders=loader, verbose=False)[0]
    assert not any("checks/" in k for k in metrics)


def test_report_section_lists_checks_above_the_results(tmp_path, digits_cnn, batches):
    from mmrobust.reporting import Report
    from mmrobust.reporting.checks import add_checks_section

    out = evaluate(Quantised(digits_cnn), batches[:1], PGD(THREAT, steps=3, seed=0), progress=False)
    report = Report("r", tmp_path)
    add_checks_section(report, out["checks"])
    report.section("Accuracy under attack")
    report.table("Accuracy", [{"attack": "pgd", "accuracy": out["robust_accuracy"]}])
    text = report.write().read_text()
    assert text.index("## Checks") < text.index("## Accuracy under attack")
    assert "FIRED: " in text and "zero_gradients" in text and "| FIRED |" in text
    import json

    assert [t["title"] for t in json.loads((tmp_path / "results.json").read_text())["tables"]] == ["Accuracy"]
    none = Report("r", tmp_path / "off")
    add_checks_section(none, None)
    assert "No attack-failure checks ran" in none.markdown()


def test_sweep_checks_merge_budgets_and_check_the_curve():
    from mmrobust.checks import sweep_checks

    def check(name, fired, evidence):
        return {"name": name, "fired": fired, "ran": True, "status": "FIRED" if fired else "passed",
                "evidence": evidence, "advice": "do something" if fired else "", "values": {}}

    results = [{"checks": [check("zero_gradients", False, "none zero")]},
               {"checks": [check("zero_gradients", True, "3 zero")]}]
    merged = {c["name"]: c for c in sweep_checks([0.1, 0.2], results, [0.3, 0.4])}
    assert merged["zero_gradients"]["fired"] and merged["zero_gradients"]["evidence"] == "at budget 0.2: 3 zero"
    assert merged["sweep_monotone"]["fired"] and "rises from 0.1 to 0.2" in merged["sweep_monotone"]["evidence"]
    assert not {c["name"]: c for c in sweep_checks([0.1, 0.2], results, [0.4, 0.3])}["sweep_monotone"]["fired"]
    assert sweep_checks([0.1], [{"clean_accuracy": 1.0}], [0.5]) is None
