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
from mmrobust.cli_runs import list_option

MODEL = {"class_path": "mmrobust.image.SmallCNN", "init_args": {"image_size": 8, "width": 0.25, "hidden": 32}}
DATA = {"class_path": "mmrobust.image.DigitsDataModule", "init_args": {"batch_size": 40, "seed": 0, "limit_test": 80}}


def _threat(eps, norm="LinfBall"):
    return {"class_path": f"mmrobust.threats.{norm}", "init_args": {"eps": eps, "lower": 0.0, "upper": 1.0}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny SmallCNN trained briefly on digits (state_dict)."""
    from mmrobust.image import DigitsDataModule, SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(**MODEL["init_args"])
    data = DigitsDataModule(batch_size=64, seed=0, limit_train=500)
    data.setup("fit")
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(3):
        for x, y in data.train_dataloader():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "cnn.pt"
    torch.save(model.state_dict(), path)
    return path


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
                              budgets, progress=False)
    assert [r["pgd"] for r in table["rows"]] == pytest.approx(expected.per_attack["pgd"])
    assert [r["worst case"] for r in table["rows"]] == pytest.approx(expected.robust_accuracy)
    assert table["rows"][0]["clean"] > 0.5 and table["rows"][1]["worst case"] < table["rows"][0]["clean"]
    # the plot is a PNG beside the report, shown in both formats
    assert (out / "accuracy_vs_budget.png").read_bytes()[:4] == b"\x89PNG"
    assert "accuracy_vs_budget.png" in (out / "report.md").read_text()
    assert '<img src="accuracy_vs_budget.png"' in (out / "report.html").read_text()


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
