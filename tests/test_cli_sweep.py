"""``mmrobust evaluate --budgets``: a table with one row per budget holding the numbers of ``mmrobust.sweep``,
the accuracy-vs-budget plot and the minimal-perturbation histogram in report.md and report.html; and
``mmrobust report``: runs side by side, labels that do not collide, every run's settings kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from mmrobust.cli import main
from mmrobust.cli_runs import config_name, list_option
from _digits_checkpoint import train_digits_cnn  # noqa: E402

MODEL = {"class_path": "mmrobust.image.SmallCNN", "init_args": {"image_size": 8, "width": 0.25, "hidden": 32}}
DATA = {"class_path": "mmrobust.image.DigitsDataModule", "init_args": {"batch_size": 40, "seed": 0, "limit_test": 80}}


def _threat(eps, norm="LinfBall"):
    return {"class_path": f"mmrobust.threats.{norm}", "init_args": {"eps": eps, "lower": 0.0, "upper": 1.0}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny SmallCNN trained briefly on digits (state_dict)."""
    return train_digits_cnn(tmp_path_factory.mktemp("ckpt"), MODEL["init_args"], lr=1e-2, limit_train=500)[1]


def _config(tmp_path: Path, checkpoint: Path, out: Path, attacks) -> Path:
    path = tmp_path / f"{out.parent.name}_{out.name}.yaml"
    path.write_text(yaml.safe_dump({"model": MODEL, "checkpoint": str(checkpoint), "data": DATA,
                                    "attacks": attacks, "out": str(out)}))
    return path


PGD = {"class_path": "mmrobust.attacks.PGD", "init_args": {"threat": _threat(0.1), "steps": 3, "seed": 0}}
FMN = {"class_path": "mmrobust.attacks.FMN", "init_args": {"threat": _threat(1.0, "L2Ball"), "steps": 10, "seed": 0}}


def test_list_option_reads_several_values_and_keeps_their_types():
    assert list_option(["--budgets", "0.1", "3", "--seed", "1"], "budgets") == ["--budgets=[0.1, 3]", "--seed", "1"]
    assert list_option(["--budgets", "-20", "-10"], "budgets") == ["--budgets=[-20, -10]"]  # dB levels
    assert list_option(["--budgets=[1,2]"], "budgets") == ["--budgets=[1,2]"]
    with pytest.raises(SystemExit, match="one or more values"):
        list_option(["--budgets", "--seed", "1"], "budgets")


def test_evaluate_with_budgets_writes_table_plot_and_html(tmp_path, checkpoint):
    import mmrobust
    from mmrobust.attacks import PGD as PGDAttack
    from mmrobust.image import DigitsDataModule, SmallCNN
    from mmrobust.threats import LinfBall

    out = tmp_path / "sweep"
    budgets = [0.02, 0.1, 0.05]
    main(["evaluate", "--config", str(_config(tmp_path, checkpoint, out, [PGD])), "--budgets", *map(str, budgets)])
    results = json.loads((out / "results.json").read_text())
    table = results["tables"][0]
    assert [r["budget"] for r in table["rows"]] == budgets and table["key"] == ["budget"]
    assert results["settings"]["budgets"] == budgets and results["settings"]["budget unit"] == "eps (linf)"
    # the table holds the library's numbers at each budget
    model = SmallCNN(**MODEL["init_args"])
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    data = DigitsDataModule(**DATA["init_args"])
    data.setup("test")
    expected = mmrobust.sweep(model.eval(), data.test_dataloader(), {"pgd": PGDAttack(LinfBall(0.1, lower=0, upper=1),
                                                                                      steps=3, seed=0)},
                              budgets, progress=False, checks=False)
    assert [r["pgd"] for r in table["rows"]] == pytest.approx(expected.per_attack["pgd"])
    assert [r["worst case"] for r in table["rows"]] == pytest.approx(expected.robust_accuracy)
    assert table["rows"][0]["clean"] > 0.5 and table["rows"][1]["worst case"] < table["rows"][0]["clean"]
    # the plot is a PNG beside the report, shown in both formats
    assert (out / "accuracy_vs_budget.png").read_bytes()[:4] == b"\x89PNG"
    assert "accuracy_vs_budget.png" in (out / "report.md").read_text()
    assert '<img src="accuracy_vs_budget.png"' in (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert md.index("## Checks") < md.index("## Accuracy vs budget")  # which checks ran, above the table
    assert "sweep_monotone" in md
    assert results["settings"]["checks fired"]  # "none" or the names: compared side by side by `mmrobust report`


def test_a_minimum_norm_attack_adds_the_histogram(tmp_path, checkpoint):
    out = tmp_path / "fmn"
    main(["evaluate", "--config", str(_config(tmp_path, checkpoint, out, [FMN])), "--budgets", "0.5", "1", "2",
          "--max_batches", "1"])
    html = (out / "report.html").read_text()
    assert '<img src="minimal_adversarial_perturbation_per_example.png"' in html
    assert (out / "minimal_adversarial_perturbation_per_example.png").is_file()
    tables = {t["title"]: t for t in json.loads((out / "results.json").read_text())["tables"]}
    quantiles = tables["Minimal perturbation quantiles"]["rows"][0]
    assert quantiles["attack"] == "fmn" and 0 < quantiles["found"] <= quantiles["clean-correct outputs"] <= 40


def _sweep_run(path: Path, worst, name=None, seed=0) -> Path:
    """A run directory as `mmrobust evaluate --budgets 0.1 0.2` writes it (made without attacking)."""
    from mmrobust.budget_sweep import BudgetSweep
    from mmrobust.reporting import Report
    from mmrobust.reporting.robustness import sweep_sections

    result = BudgetSweep(budgets=[0.2, 0.1], budget_name="eps (linf)", clean_accuracy=0.9,
                         per_attack={"pgd": list(worst)}, robust_accuracy=list(worst), num_examples=10,
                         attacks={"pgd": "PGD"}, results=[])
    report = Report("run", path, name=name)
    sweep_sections(report, result, "test")
    report.settings({"seed": seed, "budgets": [0.2, 0.1], "budget unit": result.budget_name})
    report.write()
    return path


def test_report_puts_sweeps_side_by_side_with_distinct_labels_and_all_settings(tmp_path):
    a = _sweep_run(tmp_path / "digits_at" / "evaluation", [0.3, 0.6], seed=1)
    b = _sweep_run(tmp_path / "graph_at" / "evaluation", [0.1, 0.5], seed=2)
    out = tmp_path / "comparison"
    main(["report", str(a), str(b), "--out", str(out)])
    merged = json.loads((out / "results.json").read_text())
    tables = {t["title"]: t["rows"] for t in merged["tables"]}
    rows = {(r["row"], r["metric"]): r for r in tables["Robust accuracy vs budget"]}
    # one row per budget and metric (budgets in increasing order), one column per run
    assert list(rows)[:3] == [("budget 0.1", "clean"), ("budget 0.1", "pgd"), ("budget 0.1", "worst case")]
    assert rows[("budget 0.2", "worst case")] == {"row": "budget 0.2", "metric": "worst case",
                                                  "digits_at/evaluation": 0.3, "graph_at/evaluation": 0.1}
    seeds = next(r for r in tables["Settings"] if r["setting"] == "seed")
    assert (seeds["digits_at/evaluation"], seeds["graph_at/evaluation"]) == (1, 2)  # neither overwritten
    assert (out / "worst_case_accuracy_vs_budget.png").is_file()
    md = (out / "report.md").read_text()
    assert "| row | metric | digits_at/evaluation | graph_at/evaluation |" in md


def test_report_labels_runs_by_name_unless_names_collide(tmp_path):
    from mmrobust.reporting import run_labels

    a = _sweep_run(tmp_path / "x" / "evaluation", [0.3, 0.6], name="PGD-AT")
    b = _sweep_run(tmp_path / "y" / "evaluation", [0.1, 0.5], name="normal")
    c = _sweep_run(tmp_path / "z" / "evaluation", [0.1, 0.5], name="normal")
    assert run_labels([a, b], ["PGD-AT", "normal"]) == ["PGD-AT", "normal"]
    assert run_labels([a, b, c], ["PGD-AT", "normal", "normal"]) == ["PGD-AT", "y/evaluation", "z/evaluation"]
    main(["report", str(a), str(b), "--out", str(tmp_path / "cmp")])
    settings = json.loads((tmp_path / "cmp" / "results.json").read_text())["tables"][-1]
    assert set(settings["rows"][0]) == {"setting", "PGD-AT", "normal"}


def test_sweep_recipe_runs_with_its_quick_preset(tmp_path, checkpoint):
    """recipes/image/evaluate_digits_sweep.yaml (the README's sweep command), on the tiny model and a few images."""
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "image" / "evaluate_digits_sweep.yaml"
    out = tmp_path / "sweep"
    main(["evaluate", "--config", str(recipe), "--quick", "--checkpoint", str(checkpoint), "--out", str(out),
          "--model.init_args.width=0.25", "--model.init_args.hidden=32", "--data.init_args.batch_size=8",
          "--budgets", "0.05", "0.2", "--attacks.init_args.steps=2"])
    results = json.loads((out / "results.json").read_text())
    rows = results["tables"][0]["rows"]
    assert [r["budget"] for r in rows] == [0.05, 0.2] and {"pgd", "apgd", "fmn", "worst case"} <= set(rows[0])
    assert results["name"] == "digits PGD-AT" and results["settings"]["max_batches"] == 1
    assert (out / "minimal_adversarial_perturbation_per_example.png").is_file()


def test_runs_are_named_after_their_config():
    assert config_name(["fit", "--config", "recipes/image/digits_at.yaml", "--config", "x.quick.yaml"]) == "digits_at"
    assert config_name(["--config=recipes/cli/graph_at.yaml"]) == "graph_at"
    assert config_name(["--config", "eps_0.05.quick.yaml"]) == "eps_0.05"
    assert config_name(["fit", "--model=x"]) is None


def test_a_checkpoint_that_is_not_there_is_a_usage_error_naming_the_runs_beside_it(tmp_path, checkpoint, capsys):
    """`--checkpoint runs/mine` before `mmrobust fit --out runs/mine`: the option, what it accepts and the fit
    runs that do exist, not a traceback (the README's second sweep, run before its fit)."""
    fit_run = tmp_path / "runs" / "digits_at" / "checkpoints"
    fit_run.mkdir(parents=True)
    (fit_run / "best.ckpt").write_bytes(b"")
    config = _config(tmp_path, checkpoint, tmp_path / "out", [PGD])
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--config", str(config), "--checkpoint", str(tmp_path / "runs" / "mine")])
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--checkpoint:" in err and "does not exist" in err and "the --out directory of a finished" in err
    assert str(tmp_path / "runs" / "digits_at") in err
    (tmp_path / "runs" / "empty").mkdir()
    with pytest.raises(SystemExit):
        main(["evaluate", "--config", str(config), "--checkpoint", str(tmp_path / "runs" / "empty")])
    err = " ".join(capsys.readouterr().err.split())
    assert "--checkpoint: no checkpoint under" in err and "pass --checkpoint PATH/TO/FILE.ckpt" in err


def test_a_budget_no_attack_accepts_is_a_usage_error_before_anything_runs(tmp_path, checkpoint, capsys):
    config = _config(tmp_path, checkpoint, tmp_path / "out", [PGD])
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--config", str(config), "--budgets", "0.1", "-0.1"])
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--budgets: budget -0.1 does not fit" in err and "LinfBall" in err and ">= 0" in err
    assert not (tmp_path / "out").exists()  # refused before the sweep's first budget ran
