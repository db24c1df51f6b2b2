"""The ``mmrobust`` command: recipe YAMLs build every object and train a step, ``evaluate`` reports the
numbers ``mmrobust.evaluate`` computes, ``report`` merges runs, ``validate`` writes a metrics report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint

from mmrobust.cli import _lightning_cli, main
from _digits_checkpoint import train_digits_cnn  # noqa: E402

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def _in_tmp(config: Path, tmp_path: Path, edit=None) -> Path:
    """A copy of a recipe whose checkpoints go to ``tmp_path`` (tests never write into the checkout)."""
    recipe = yaml.safe_load(config.read_text())
    for cb in recipe["trainer"].get("callbacks", []):
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"]["dirpath"] = str(tmp_path / "checkpoints")
        if edit is not None:
            edit(cb)
    path = tmp_path / config.name
    path.write_text(yaml.safe_dump(recipe))
    return path


def _fit_one_step(config: Path, tmp_path: Path, *overrides: str, edit=None):
    return _lightning_cli(["fit", "--config", str(_in_tmp(config, tmp_path, edit)), "--trainer.fast_dev_run=1",
                           f"--trainer.default_root_dir={tmp_path}", *QUIET, *overrides])


def _callback(cli, cls):
    found = [c for c in cli.trainer.callbacks if isinstance(c, cls)]
    assert found, f"{cls.__name__} missing from {[type(c).__name__ for c in cli.trainer.callbacks]}"
    return found[0]


def test_every_recipe_yaml_is_covered_here():
    """A new YAML recipe must get a test below (and an entry in recipes/README.md)."""
    found = {p.relative_to(RECIPES).as_posix() for p in RECIPES.rglob("*.yaml") if not p.name.endswith(".quick.yaml")}
    tested = {"image/digits_at.yaml", "image/mnist_trades.yaml", "image/evaluate_digits.yaml",
              "image/evaluate_digits_sweep.yaml",  # tests/test_cli_sweep.py
              "cli/speech_at.yaml", "cli/graph_at.yaml", "multimodal/fit.yaml"}
    assert found == tested


def test_digits_at_builds_robust_selection_and_trains(tmp_path):
    from mmrobust.attacks import PGD
    from mmrobust.callbacks import RobustnessEvaluation
    from mmrobust.image import SmallCNN
    from mmrobust.threats import LinfBall
    from mmrobust.training import RobustClassifier

    cli = _fit_one_step(RECIPES / "image" / "digits_at.yaml", tmp_path)
    assert isinstance(cli.model, RobustClassifier) and isinstance(cli.model.model, SmallCNN)
    attack = cli.model.attack
    assert isinstance(attack, PGD) and isinstance(attack.threat, LinfBall) and attack.threat.eps == 0.1
    assert (attack.threat.lower, attack.threat.upper) == (0.0, 1.0)
    evaluation = _callback(cli, RobustnessEvaluation)
    assert [type(a).__name__ for a in evaluation.attacks.values()] == ["PGD"]
    checkpoint = _callback(cli, ModelCheckpoint)
    assert (checkpoint.monitor, checkpoint.mode) == ("val/robust_acc", "max")
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    # the robust metric the checkpoint monitors was logged by the validation step of fast_dev_run
    assert "val/robust_acc" in cli.trainer.callback_metrics


def test_speech_yaml_builds_waveform_training(tmp_path):
    from mmrobust.adapters import WaveformAdapter
    from mmrobust.audio import M5
    from mmrobust.threats import SNRBall

    cli = _fit_one_step(RECIPES / "cli" / "speech_at.yaml", tmp_path, "--data.init_args.num_train=32",
                        "--data.init_args.num_val=16", "--data.init_args.num_test=16", "--data.init_args.batch_size=16")
    assert isinstance(cli.model.model, M5) and isinstance(cli.model.adapter, WaveformAdapter)
    assert isinstance(cli.model.attack.threat, SNRBall) and cli.model.attack.threat.snr_db == 30.0
    assert cli.trainer.global_step == 1 and "val/robust_acc" in cli.trainer.callback_metrics


def test_graph_yaml_builds_prbcd_adversarial_training(tmp_path):
    from mmrobust.attacks import PRBCD
    from mmrobust.callbacks import AdversarialTraining, RobustnessEvaluation
    from mmrobust.graph import GCN, NodeClassifier

    def attack_from_the_first_step(cb):  # so that one step exercises adversarial training
        if cb["class_path"].endswith("AdversarialTraining"):
            cb["init_args"]["start_epoch"] = 0

    cli = _fit_one_step(RECIPES / "cli" / "graph_at.yaml", tmp_path, edit=attack_from_the_first_step)
    assert isinstance(cli.model, NodeClassifier) and isinstance(cli.model.model, GCN)
    training = _callback(cli, AdversarialTraining)
    assert isinstance(training.attack, PRBCD) and training.attack.adapter.mask == "train"
    assert training.adversarial_steps == 1
    evaluation = _callback(cli, RobustnessEvaluation)
    assert next(iter(evaluation.attacks.values())).adapter.mask == "test"
    assert "val/robust_acc" in cli.trainer.callback_metrics


def test_multimodal_yaml_builds_a_joint_threat_from_a_mapping(tmp_path):
    from mmrobust.callbacks import AdversarialTraining, RobustnessEvaluation
    from mmrobust.multimodal import LateFusionClassifier
    from mmrobust.threats import LinfBall, SNRBall

    cli = _fit_one_step(RECIPES / "multimodal" / "fit.yaml", tmp_path, "--data.init_args.num_train=64",
                        "--data.init_args.num_val=32", "--data.init_args.num_test=32")
    assert isinstance(cli.model.model, LateFusionClassifier) and cli.model.model.fusion == "sum"
    training = _callback(cli, AdversarialTraining)
    threat = training.attack.threat
    assert isinstance(threat["image"], LinfBall) and isinstance(threat["audio"], SNRBall)
    assert training.adversarial_steps == 1
    evaluation = _callback(cli, RobustnessEvaluation)
    assert set(evaluation.attacks) == {"joint", "image_only"}
    assert set(evaluation.attacks["image_only"].threat) == {"image"}
    metrics = cli.trainer.callback_metrics
    assert {"val/robust_acc/joint", "val/robust_acc/image_only"} <= set(metrics)
    assert float(metrics["val/robust_acc"]) <= float(metrics["val/robust_acc/image_only"])


@pytest.mark.data
def test_mnist_trades_yaml_reads_the_local_archives(tmp_path, shared_data):
    from mmrobust.objectives import TradesAttack

    raw = shared_data / "MNIST" / "raw"
    if not raw.is_dir():
        pytest.skip("no MNIST archives in the shared data")
    cli = _fit_one_step(RECIPES / "image" / "mnist_trades.yaml", tmp_path,
                        f"--data.init_args.copy_raw_from={raw}", f"--data.init_args.root={tmp_path / 'data'}",
                        "--data.init_args.batch_size=16", "--data.init_args.eval_batch_size=16",
                        "--trainer.accelerator=cpu")
    assert cli.model.objective == "trades" and isinstance(cli.model.attack, TradesAttack)
    assert cli.trainer.global_step == 1


def test_validate_writes_a_metrics_report(tmp_path):
    main(["validate", "--config", str(_in_tmp(RECIPES / "image" / "digits_at.yaml", tmp_path)),
          f"--trainer.default_root_dir={tmp_path}",
          "--trainer.limit_val_batches=1", "--trainer.logger=false", *QUIET])
    report = tmp_path / "report_validate"
    data = json.loads((report / "results.json").read_text())
    metrics = {r["metric"]: r["value"] for r in data["tables"][0]["rows"]}
    assert {"val/clean_acc", "val/robust_acc"} <= set(metrics)
    assert 0.0 <= metrics["val/robust_acc"] <= metrics["val/clean_acc"] <= 1.0
    assert "val/robust_acc" in (report / "report.md").read_text()


@pytest.fixture(scope="module")
def trained_digits_cnn(tmp_path_factory):
    """A SmallCNN trained for three epochs on the digits split the evaluate config reads, saved as state_dict."""
    return train_digits_cnn(tmp_path_factory.mktemp("ckpt"), dict(image_size=8, width=0.5, hidden=64), lr=3e-3)


def _evaluate_config(tmp_path: Path, checkpoint: Path, out: Path, eps: float) -> Path:
    config = {
        "model": {"class_path": "mmrobust.image.SmallCNN",
                  "init_args": {"image_size": 8, "width": 0.5, "hidden": 64}},
        "checkpoint": str(checkpoint),
        "data": {"class_path": "mmrobust.image.DigitsDataModule",
                 "init_args": {"batch_size": 60, "seed": 0, "limit_test": 120}},
        "attacks": [{"class_path": "mmrobust.attacks.PGD",
                     "init_args": {"threat": {"class_path": "mmrobust.threats.LinfBall",
                                              "init_args": {"eps": eps, "lower": 0.0, "upper": 1.0}},
                                   "steps": 5, "seed": 0}},
                    {"class_path": "mmrobust.attacks.FGSM",
                     "init_args": {"threat": {"class_path": "mmrobust.threats.LinfBall",
                                              "init_args": {"eps": eps, "lower": 0.0, "upper": 1.0}}}}],
        "out": str(out),
    }
    path = tmp_path / f"evaluate_{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_evaluate_report_matches_the_library_function(tmp_path, trained_digits_cnn):
    from mmrobust.attacks import FGSM, PGD
    from mmrobust.evaluation import evaluate
    from mmrobust.image import DigitsDataModule
    from mmrobust.threats import LinfBall

    model, checkpoint = trained_digits_cnn
    out = tmp_path / "run_a"
    main(["evaluate", "--config", str(_evaluate_config(tmp_path, checkpoint, out, 0.1))])
    rows = json.loads((out / "results.json").read_text())["tables"][0]["rows"]
    reported = {r["attack"]: r["accuracy"] for r in rows}

    data = DigitsDataModule(batch_size=60, seed=0, limit_test=120)
    data.setup("test")
    threat = LinfBall(0.1, lower=0.0, upper=1.0)
    expected = evaluate(model, data.test_dataloader(), [PGD(threat, steps=5, seed=0), FGSM(threat)], progress=False)
    assert reported["none (clean)"] == pytest.approx(expected["clean_accuracy"])
    assert reported["pgd"] == pytest.approx(expected["per_attack"]["pgd"])
    assert reported["fgsm"] == pytest.approx(expected["per_attack"]["fgsm"])
    assert reported["worst case over all attacks"] == pytest.approx(expected["robust_accuracy"])
    # a normally trained model: clean accuracy is high and the attacks take a real bite
    assert reported["none (clean)"] > 0.8
    assert reported["worst case over all attacks"] < reported["none (clean)"] - 0.2
    assert (out / "report.md").is_file() and (out / "report.html").is_file()


def test_report_merges_two_runs(tmp_path, trained_digits_cnn):
    _, checkpoint = trained_digits_cnn
    runs = [tmp_path / "eps_0.05", tmp_path / "eps_0.2"]
    for run, eps in zip(runs, (0.05, 0.2)):
        main(["evaluate", "--config", str(_evaluate_config(tmp_path, checkpoint, run, eps)), "--max_batches=1"])
    out = tmp_path / "comparison"
    main(["report", *map(str, runs), "--out", str(out), "--title", "budget comparison"])
    merged = json.loads((out / "results.json").read_text())
    tables = {t["title"]: t["rows"] for t in merged["tables"]}
    # runs side by side, named after their config files (evaluate_eps_0.05.yaml, evaluate_eps_0.2.yaml)
    a, b = "evaluate_eps_0.05", "evaluate_eps_0.2"
    worst = next(r for r in tables["Accuracy"] if r["row"] == "worst case over all attacks")
    assert worst[b] <= worst[a]  # a larger budget never helps the model
    attack0 = next(r for r in tables["Settings"] if r["setting"] == "attack[0]")
    assert "eps=0.05" in attack0[a] and "eps=0.2" in attack0[b]
    names = next(r for r in tables["Settings"] if r["setting"] == "name")
    assert names[a] == a and names[b] == b  # the label each run gets, not None without --name
    text = (out / "report.md").read_text()
    assert "# budget comparison" in text and "eps_0.2" in text


def test_unknown_command_is_refused(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err
