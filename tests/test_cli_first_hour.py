"""The command line as a new user meets it (issue 19): readable help, no LightningCLI warning on every
call, one ``--out DIR`` for everything a run writes, ``--ckpt_path best`` across processes, ``--quick``
presets, report labels that do not collide and reports that name the attacks and budgets."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from mmrobust.cli import USAGE, _lightning_cli, main
from mmrobust.cli_runs import best_checkpoint, moved_path, pop_option, quick_configs
from mmrobust.reporting import Report, compare_runs
from mmrobust.reporting import run_labels

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def test_help_is_plain_text(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert text == USAGE + "\n"
    assert "``" not in text and "::" not in text and ":class:" not in text
    for word in ("fit", "evaluate", "report", "demo", "--out DIR", "--quick", "--ckpt_path best"):
        assert word in text


def test_evaluate_help_has_readable_types_and_no_module_list(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "<function" not in text and "lambda" not in text
    assert "torch.nn.Linear" not in text and "torch.nn.ReLU" not in text
    assert "--split {test,val}" in text and "which dataloader to attack" in text
    assert "Base class for all neural network modules" not in text


def test_pop_option_and_moved_paths():
    assert pop_option(["fit", "--out", "d", "--x=1"], "out") == (["fit", "--x=1"], "d")
    assert pop_option(["fit", "--out=d"], "out") == (["fit"], "d")
    assert pop_option(["fit", "--quick"], "quick", flag=True) == (["fit"], True)
    assert pop_option(["fit"], "out") == (["fit"], None)
    assert moved_path("runs/a/checkpoints", "runs/a", "/x") == str(Path("/x/checkpoints"))
    assert moved_path("elsewhere/ckpts", "runs/a", "/x") == str(Path("/x/ckpts"))


def test_quick_adds_the_preset_after_its_recipe():
    digits = str(RECIPES / "image" / "digits_at.yaml")
    argv = quick_configs(["fit", "--config", digits, "--trainer.max_epochs=3"])
    assert argv == ["fit", "--config", digits, "--config", str(RECIPES / "image" / "digits_at.quick.yaml"),
                    "--trainer.max_epochs=3"]
    with pytest.raises(SystemExit, match="quick preset"):
        quick_configs(["fit", "--trainer.max_epochs=3"])


@pytest.mark.parametrize("recipe", sorted(p.relative_to(RECIPES).as_posix() for p in RECIPES.rglob("*.yaml")
                                          if not p.name.endswith(".quick.yaml")))
def test_every_yaml_recipe_has_a_quick_preset_that_merges(recipe, capsys):
    """Each preset is a small overlay: it must merge (not replace lists such as callbacks) and shrink the run."""
    path = RECIPES / recipe
    quick = path.with_suffix(".quick.yaml")
    assert quick.is_file(), f"{recipe} has no quick preset {quick.name}"
    if "evaluate" in recipe:
        return  # evaluate's preset only sets max_batches; merged by jsonargparse like any --config
    with pytest.raises(SystemExit):
        _lightning_cli(["fit", "--config", str(path), "--quick", "--print_config"])
    merged = yaml.safe_load(capsys.readouterr().out)
    full = yaml.safe_load(path.read_text())
    preset = yaml.safe_load(quick.read_text())
    assert merged["trainer"]["max_epochs"] == preset["trainer"]["max_epochs"] < full["trainer"]["max_epochs"]
    assert len(merged["trainer"]["callbacks"]) == len(full["trainer"]["callbacks"])
    for key, value in (preset.get("data", {}).get("init_args") or {}).items():
        assert merged["data"]["init_args"][key] == value


SMALL = ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
         "--trainer.num_sanity_val_steps=0", "--data.init_args.batch_size=16",
         "--model.init_args.attack.init_args.steps=1", *QUIET]


def test_no_args_warning_and_out_moves_root_and_checkpoint_dir(tmp_path, monkeypatch):
    """``--out`` moves the root dir and the recipe's ModelCheckpoint dirpath (set inside the callbacks list,
    which flags cannot reach); LightningCLI's args-and-command-line warning never appears."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    out = tmp_path / "run"
    recipe = str(RECIPES / "image" / "digits_at.yaml")
    monkeypatch.setattr("sys.argv", ["mmrobust", "fit", "--config", recipe])  # as when typed in a shell
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = _lightning_cli(["fit", "--config", recipe, "--out", str(out), "--trainer.fast_dev_run=1", *SMALL])
    assert not [w for w in caught if "not recommended to provide both args" in str(w.message)]
    assert cli.trainer.default_root_dir == str(out)
    assert cli.trainer.checkpoint_callback.dirpath == str(out / "checkpoints")
    assert list(work.iterdir()) == []


@pytest.mark.slow
def test_test_with_ckpt_path_best_reads_what_fit_recorded(tmp_path, monkeypatch):
    """A fresh ``test --ckpt_path best`` process finds the checkpoint ``fit`` marked best under the same
    ``--out``; its report names the checkpoint, the attacks and their budgets; nothing lands in the cwd."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    out = tmp_path / "run"
    recipe = str(RECIPES / "image" / "digits_at.yaml")
    cli = _lightning_cli(["fit", "--config", recipe, "--out", str(out), "--trainer.max_epochs=2", *SMALL])
    best = Path(cli.trainer.checkpoint_callback.best_model_path)
    assert best.parent == out / "checkpoints" and best.is_file()
    assert best_checkpoint(str(out / "checkpoints")) == best
    test = _lightning_cli(["test", "--config", recipe, "--out", str(out), "--ckpt_path", "best", *SMALL])
    assert Path(test.trainer.ckpt_path) == best
    reports = list(out.rglob("report_test/results.json"))
    assert len(reports) == 1
    settings = json.loads(reports[0].read_text())["settings"]
    assert settings["checkpoint"] == str(best)
    assert "eps=0.1" in settings["RobustnessEvaluation.attacks[pgd]"] and "steps=10" in \
        settings["RobustnessEvaluation.attacks[pgd]"]
    assert "steps=1" in settings["RobustClassifier.attack"]  # the flag, not the YAML value
    assert "--out" in settings["command"]
    assert list(work.iterdir()) == []


def test_best_checkpoint_without_a_fit_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `mmrobust fit` with the same --config/--out first"):
        best_checkpoint(str(tmp_path))


def _run(path: Path, value: float, seed: int) -> Path:
    report = Report("run", path)
    report.table("Accuracy", [{"attack": "pgd", "accuracy": value}])
    report.settings({"seed": seed})
    report.write()
    return path


def test_report_labels_do_not_collide_and_keep_every_runs_settings(tmp_path):
    a = _run(tmp_path / "digits_at" / "evaluation", 0.7, 1)
    b = _run(tmp_path / "graph_at" / "evaluation", 0.5, 2)
    assert run_labels([a, b]) == ["digits_at/evaluation", "graph_at/evaluation"]
    assert run_labels([a, a]) == ["evaluation", "evaluation#2"]
    merged = json.loads((compare_runs([a, b], tmp_path / "cmp").parent / "results.json").read_text())
    tables = {t["title"]: t["rows"] for t in merged["tables"]}
    # side by side (issue 20): one row per metric, one column per run
    assert tables["Accuracy"] == [{"row": "pgd", "metric": "accuracy", "digits_at/evaluation": 0.7,
                                   "graph_at/evaluation": 0.5}]
    assert tables["Settings"] == [{"setting": "seed", "digits_at/evaluation": 1, "graph_at/evaluation": 2}]


def test_misspelt_command_names_the_likely_one(capsys):
    assert main(["evalute"]) == 2
    assert "did you mean 'evaluate'?" in capsys.readouterr().err


def test_report_of_a_folder_without_results_names_the_runs_below_it(tmp_path, capsys):
    """A user passing a fit run's --out (runs/mine) instead of its sweep (runs/mine/sweep) is told which."""
    run = _run(tmp_path / "mine" / "sweep", 0.7, 1)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / "mine"), "--out", str(tmp_path / "cmp")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "runs:" in err and "no results.json" in err and str(run) in err
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "absent")])
    assert "no such directory" in capsys.readouterr().err


@pytest.mark.parametrize("command, explained", [
    ("report", ["run directories containing results.json", "directory for report.md", "the report's title"]),
    ("demo", ["report directory", "which parts to run", "seed of data splits", "fewer epochs"])])
def test_every_option_of_report_and_demo_is_explained(command, explained, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in explained:
        assert words in text


def test_fit_help_shows_mmrobusts_own_options_above_lightnings(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    assert text.index("--out DIR") < text.index("--trainer.max_epochs") and "--quick" in text
