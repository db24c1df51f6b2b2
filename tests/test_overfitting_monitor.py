"""CatastrophicOverfittingMonitor: the trend rule on logged MNIST probes, and the monitor beside any adversarial training."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mmrobust.attacks import FGSM
from mmrobust.callbacks import AdversarialTraining, CatastrophicOverfittingMonitor, CollapseRule
from mmrobust.threats import LinfBall
from _plain_module import Plain  # noqa: E402

warnings.filterwarnings("ignore", ".*does not have many workers.*")

# Probes (PGD-10 / FGSM-RS accuracy on the training batch, every 50 of 6000 steps) logged by
# benchmarks/single_step_mnist.py on Wong et al.'s MNIST recipe, seed 0 (results/single_step/*_s0_before_lr_fix.json).
# FGSM-RS, healthy (PGD-50 x 10 0.840 at the end), its first 2500 steps: the signature shows for ~350 steps.
HEALTHY = ("0.0/0.0 0.04/0.07 0.06/0.06 0.12/0.12 0.07/0.07 0.14/0.17 0.07/0.3 0.05/0.36 0.03/0.5 0.11/0.47 "
           "0.1/0.49 0.09/0.63 0.21/0.58 0.08/0.66 0.24/0.74 0.18/0.59 0.31/0.7 0.34/0.71 0.31/0.62 0.36/0.72 "
           "0.41/0.67 0.36/0.68 0.47/0.77 0.6/0.82 0.5/0.77 0.6/0.83 0.57/0.78 0.58/0.77 0.57/0.83 0.64/0.79 "
           "0.68/0.85 0.68/0.85 0.66/0.84 0.71/0.91 0.74/0.92 0.76/0.83 0.77/0.89 0.7/0.86 0.71/0.89 0.8/0.93 "
           "0.72/0.9 0.71/0.85 0.74/0.87 0.8/0.88 0.79/0.86 0.72/0.86 0.83/0.97 0.76/0.86 0.84/0.95 0.39/0.87 "
           "0.62/0.92 0.8/0.93")
# FGSM-RS seed 2, healthy (PGD 0.8 on the training batch by step 3600), its first 2500 steps: the signature
# holds for ~1900 steps while PGD creeps up from 0.05.
SLOW_START = ("0.0/0.0 0.08/0.08 0.13/0.13 0.1/0.1 0.11/0.11 0.09/0.09 0.13/0.13 0.08/0.22 0.05/0.36 0.07/0.43 "
              "0.05/0.45 0.04/0.57 0.07/0.48 0.01/0.58 0.07/0.54 0.03/0.55 0.03/0.57 0.06/0.55 0.04/0.67 0.04/0.64 "
              "0.05/0.58 0.05/0.73 0.06/0.74 0.08/0.73 0.07/0.7 0.04/0.63 0.06/0.68 0.02/0.71 0.06/0.65 0.1/0.66 "
              "0.09/0.78 0.02/0.68 0.12/0.62 0.07/0.69 0.03/0.71 0.1/0.73 0.09/0.75 0.13/0.75 0.21/0.83 0.15/0.76 "
              "0.26/0.74 0.14/0.69 0.25/0.74 0.3/0.78 0.17/0.74 0.15/0.76 0.1/0.82 0.34/0.77 0.36/0.76 0.3/0.82 "
              "0.41/0.86")
# N-FGSM with the noise clipped to the box: collapsed (PGD-50 x 10 0.000), probes from step 2000 on stay at
# PGD 0.00-0.01 / FGSM 0.85-0.99 (the first 2000 steps here, then the last probe repeated).
COLLAPSED = ("0.0/0.0 0.03/0.07 0.05/0.06 0.08/0.12 0.07/0.07 0.12/0.12 0.13/0.13 0.1/0.1 0.04/0.52 0.0/0.47 "
             "0.01/0.68 0.01/0.73 0.05/0.79 0.09/0.89 0.04/0.8 0.07/0.8 0.06/0.89 0.0/0.9 0.01/0.92 0.0/0.94 "
             "0.0/0.91 0.01/0.87 0.0/0.9 0.0/0.91 0.01/0.89 0.05/0.91 0.04/0.94 0.0/0.94 0.03/0.96 0.01/0.89 "
             "0.02/0.93 0.0/0.92 0.0/0.95 0.01/0.99 0.0/0.94 0.0/0.95 0.0/0.96 0.0/0.96 0.01/0.94 0.0/0.95"
             + " 0.0/0.95" * 20)


def replay(series: str, patience_steps: int, every: int = 50, drop_patience_steps=300):
    rule = CollapseRule(patience_steps=patience_steps, drop_patience_steps=drop_patience_steps)
    for i, pair in enumerate(series.split()):
        pgd, fgsm = map(float, pair.split("/"))
        reason, _ = rule.update(i * every, pgd, fgsm)
        if reason is not None:
            return i * every, reason
    return None


def test_the_trend_rule_is_silent_on_the_healthy_recipe_and_flags_the_collapse():
    """patience 0.4 of 6000 steps (the default): the healthy runs' early signatures do not last; the
    collapse does. Shorter patience warns earlier, and falsely on seed 2's slow start."""
    assert replay(HEALTHY, 2400) is None and replay(SLOW_START, 2400) is None
    # the drop path needs its patience: one bad probe batch (PGD 0.39 after 0.84, step 2450) pulls one
    # reading 0.207 below the best
    step, reason = replay(HEALTHY, 2400, drop_patience_steps=0)
    assert step == 2550 and "dropped more than 0.2 below its best" in reason
    step, reason = replay(COLLAPSED, 2400)
    assert step == 2900 and "below 0.5 x the FGSM" in reason and "means of the last 3 probes" in reason
    assert replay(COLLAPSED, 600)[0] == 1100 and replay(HEALTHY, 600) is None
    assert replay(SLOW_START, 600)[0] == 1200  # patience 0.1: a false alarm on the slow healthy start
    # without patience (the earlier rule) the healthy run raised a false alarm at step 550
    assert replay(HEALTHY, 0)[0] == 550
    assert replay(COLLAPSED, 0)[0] == 500


RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "single_step"


def replay_run(r: dict, drop: bool = True):
    """A stored run's probes through the monitor's default rule (patience 0.4 and drop patience 0.05 of
    the planned run); the first flagged step, or ``None``. Probes taken during an eps warm-up ran below the
    full budget and are skipped, as the live monitor does not judge them."""
    planned = r["train"] // 100 * r.get("planned_epochs", 10)
    warmup_steps = r.get("warmup_epochs", 0.0) * (r["train"] // 100)
    rule = CollapseRule(patience_steps=math.ceil(0.4 * planned),
                        drop_patience_steps=math.ceil(0.05 * planned) if drop else None)
    return next((step for step, pgd, fgsm in r["probes"]
                 if step >= warmup_steps and rule.update(step, pgd, fgsm)[0] is not None), None)


def test_the_default_rule_flags_exactly_the_collapsed_runs_among_all_stored_full_length_runs():
    """Every run of benchmarks/single_step_mnist.py stored with its probes (FGSM-RS seeds 0-2 before and
    after the learning-rate fix, Wong et al.'s loop, N-FGSM, GradAlign), replayed through the default rule:
    flagged exactly when the test set shows a (partial) collapse: clean > 0.5 (it learned) and PGD-50 x 10
    < 0.5 (the healthy runs: 0.645-0.854; collapsed: 0.000, the partial collapse of GradAlign seed 1: 0.381).
    Left out: runs evaluated on weights restored by early stopping (the test set scores the restored
    weights, not where the probes ended). The patience alone (the drop path off) misses the partial
    collapse. Over all these trajectories, not one tuned run."""
    runs = {p.name: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json")) if p.name != "costs.json"}
    runs = {name: r for name, r in runs.items() if r.get("probes") and r.get("on_overfit") != "restore"}
    if len(runs) < 7:
        pytest.skip("the stored single-step results are not there")
    verdicts = {name: (replay_run(r) is not None, r["clean"] > 0.5 and r["pgd50x10"] < 0.5)
                for name, r in runs.items()}
    assert all(flagged == collapsed for flagged, collapsed in verdicts.values()), verdicts
    assert sum(collapsed for _, collapsed in verdicts.values()) >= 2  # both kinds are there
    partial = "grad_align_lam0.5_s1.json"
    if partial in runs:
        assert replay_run(runs[partial]) == 4050 and replay_run(runs[partial], drop=False) is None


def test_the_drop_path_flags_a_lost_robustness_and_not_the_early_phase_or_one_bad_batch():
    """Wong et al.'s early-stopping signature on synthetic probe sequences (window 1, drop patience 150)."""
    def run(pgd, fgsm=0.85, **kwargs):
        rule = CollapseRule(window=1, patience_steps=10_000, drop_patience_steps=150, **kwargs)
        out = [rule.update(50 * i, p, fgsm if isinstance(fgsm, float) else fgsm[i]) for i, p in enumerate(pgd)]
        return rule, next((50 * i for i, (reason, _) in enumerate(out) if reason is not None), None), out

    climb = [0.05, 0.2, 0.4, 0.6, 0.8, 0.8]
    # robust, then PGD falls to 0.3 and climbs back a little (0.45, still 0.35 below the best): flagged
    # once the drop has held 150 steps, although a long patience alone never would be reached
    rule, step, out = run(climb + [0.3, 0.35, 0.45, 0.4, 0.45])
    assert step == 450 and "dropped more than 0.2 below its best 0.800" in out[9][0] and "for 150 steps" in out[9][0]
    assert all(suspect for _, suspect in out[6:])  # never taken as the healthy copy
    again = CollapseRule(window=1, patience_steps=10_000, drop_patience_steps=150)
    again.load_state_dict(rule.state_dict())
    assert again.drop_since == rule.drop_since == 300
    # one bad batch, or a dip shorter than the drop patience: silent
    assert run(climb + [0.3, 0.8, 0.8, 0.8, 0.8])[1] is None
    assert run(climb + [0.3, 0.3, 0.3, 0.7, 0.8, 0.8])[1] is None
    # the early phase: PGD reached 0.35 only (never robust), then 0.05 with FGSM 0.7: not a drop
    assert run([0.1, 0.35, 0.35, 0.05, 0.05, 0.05, 0.05, 0.05], fgsm=0.7)[1] is None
    # PGD and FGSM fall together (FGSM below 0.5: the model forgets, the single step is not fooled): not CO
    assert run(climb + [0.3] * 5, fgsm=[0.85] * 6 + [0.35] * 5)[1] is None
    # the path off (None): silent on the lost robustness
    rule = CollapseRule(window=1, patience_steps=10_000)
    assert all(rule.update(50 * i, p, 0.85)[0] is None for i, p in enumerate(climb + [0.3] * 10))


def test_the_trend_rule_restarts_while_pgd_climbs_and_reads_drops_too():
    rule = CollapseRule(patience_steps=100, window=1)
    # signature held from step 0, but PGD reaches new bests by more than the margin: never flagged
    for step, pgd in zip(range(0, 400, 50), [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4]):
        assert rule.update(step, pgd, 0.9)[0] is None
    assert rule.since == 350
    assert rule.update(400, 0.4, 0.5)[0] is None and rule.since is None  # signature gone
    # a lasting drop of more than 0.2 below the best is flagged once it outlasts the patience
    flags = [rule.update(step, 0.15, 0.2)[0] for step in range(500, 700, 50)]
    assert flags[:2] == [None, None] and "dropped more than 0.2" in flags[2]
    state = rule.state_dict()
    again = CollapseRule(patience_steps=100, window=1)
    again.load_state_dict(state)
    assert again.since == rule.since == 500 and again.best == rule.best == 0.4


def fit(callbacks, digits, n=160, **kwargs):
    kwargs.setdefault("max_epochs", 1)
    t = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, callbacks=callbacks, **kwargs)
    module = Plain()
    t.fit(module, DataLoader(TensorDataset(digits[0][:n], digits[1][:n]), batch_size=32))
    return module, t


def test_the_monitor_watches_any_adversarial_training_and_leaves_it_alone(digits):
    """Beside AdversarialTraining(FGSM): probes every 2 steps on the clean batch, and the trained weights
    are those of the same run without the monitor."""
    threat = LinfBall(0.1, lower=0, upper=1)
    seen = []

    class Spy(CatastrophicOverfittingMonitor):
        def run_probe(self, pl_module, batch, budget_factor=1.0, step=None):
            seen.append(batch[0].detach().clone())
            return super().run_probe(pl_module, batch, budget_factor, step)

    monitor = Spy(threat, every_n_steps=2, probe_steps=2, seed=0)
    a, t = fit([monitor, AdversarialTraining(FGSM(threat, random_start=True, seed=0))], digits)
    b, _ = fit([AdversarialTraining(FGSM(threat, random_start=True, seed=0))], digits)
    assert len(seen) == 3 and torch.equal(seen[0], digits[0][:32])  # steps 0, 2, 4 on the clean batches
    assert monitor.last_probe is not None and "train/pgd_probe_acc" in t.callback_metrics
    assert monitor.rule.patience_steps == 2  # 0.4 x 5 steps, rounded up
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=0, rtol=0)


def test_the_monitor_follows_the_warmup_and_refuses_the_wrong_order(digits):
    threat = LinfBall(0.1, lower=0, upper=1)
    monitor = CatastrophicOverfittingMonitor(threat, every_n_steps=1, probe_steps=2, seed=0)
    fit([monitor, AdversarialTraining(FGSM(threat, seed=0), warmup_epochs=2)], digits)
    assert monitor.last_probe["budget_factor"] == pytest.approx(0.4)  # step 4 of 5, warm-up over 10
    assert monitor.best_probe_acc == -1.0 and not monitor.overfitting_detected  # never judged in warm-up
    with pytest.raises(ValueError, match="must be listed before the adversarial-training callback"):
        fit([AdversarialTraining(FGSM(threat, seed=0)), CatastrophicOverfittingMonitor(threat)], digits)
    with pytest.raises(ValueError, match="patience=0"):
        fit([CatastrophicOverfittingMonitor(threat)], digits, max_epochs=-1, max_steps=-1, limit_train_batches=2)
    with pytest.raises(ValueError, match="patience must lie in"):
        CatastrophicOverfittingMonitor(threat, patience=2)


def test_restore_keeps_the_weights_of_before_the_drop(monkeypatch):
    """on_overfit="restore" with the drop path: the probes (PGD / FGSM accuracy, faked) climb to 0.8 and fall
    to 0.3 with FGSM at 0.85; the run is flagged once the drop has held 100 steps, and the healthy copy is
    that of the last probe before the drop (every drop reading counts as suspect), not a later one."""
    import mmrobust.callbacks.overfitting_monitor as mod
    accs = {}

    class Fake:
        def __init__(self, probe):
            self.probe = probe

        def for_stage(self, batch, stage):
            n = len(batch[1])
            acc = accs["pgd" if self.probe is monitor.probe else "fgsm"]
            return lambda module, b: SimpleNamespace(adv_correct=torch.arange(n) < round(acc * n))

    monkeypatch.setattr(mod, "attack_at_budget", lambda probe, factor, adapter: Fake(probe))
    monitor = CatastrophicOverfittingMonitor(LinfBall(0.1, lower=0, upper=1), probe_window=1, on_overfit="restore")
    monitor.rule.patience_steps, monitor.rule.drop_patience_steps = 10_000, 100
    module = Plain()
    batch = (torch.rand(20, 64), torch.randint(0, 10, (20,)))
    weights = {}
    with pytest.warns(UserWarning, match="dropped more than 0.2 below its best 0.800"):
        for step, pgd in zip(range(0, 500, 50), [0.1, 0.4, 0.8, 0.8, 0.3, 0.35, 0.3, 0.3, 0.3, 0.3]):
            accs.update(pgd=pgd, fgsm=0.85)
            with torch.no_grad():
                module.net[1].bias.fill_(step)  # marks the weights of each step
            weights[step] = module.state_dict()["net.1.bias"].clone()
            monitor.run_probe(module, batch, step=step)
    assert monitor.overfitting_detected and monitor.healthy_step == 150
    torch.testing.assert_close(monitor.healthy_state["net.1.bias"], weights[150])
