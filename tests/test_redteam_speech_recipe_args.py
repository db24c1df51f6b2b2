"""Red team: recipes/speech/keywords.py refuses bad arguments before it trains, naming the flag."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def load(relative: str):
    spec = importlib.util.spec_from_file_location("recipe_redteam_" + relative.replace("/", "_")[:-3],
                                                  RECIPES / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipe():
    return load("speech/keywords.py")


@pytest.mark.parametrize("flags, named", [
    (["--epochs", "-1"], "--epochs"),          # Lightning's max_epochs=-1: an endless run
    (["--adv-epochs", "-1"], "--adv-epochs"),  # truthy: an endless adversarial run after the normal one
    (["--epochs", "0"], "--epochs"),           # trained nothing, reported as a model
    (["--eval-batches", "0"], "--eval-batches"),  # ZeroDivisionError after the whole training run
    (["--steps", "0"], "--steps"),             # refused by PGD only after training
    (["--train-steps", "0", "--adv-epochs", "1"], "--train-steps"),
    (["--snrs"], "--snrs"),                    # no budget: a report without any robust accuracy
])
def test_bad_flags_are_refused_before_any_work(recipe, capsys, flags, named):
    with pytest.raises(SystemExit):
        recipe.parse_args(["--root", "/nowhere", *flags])
    err = capsys.readouterr().err
    assert named in err and "must" in err


def test_good_flags_still_parse(recipe):
    args = recipe.parse_args(["--root", "/nowhere", "--quick", "--adv-epochs", "1", "--eval-batches", "2"])
    assert args.epochs == 1 and args.adv_epochs == 1 and args.eval_batches == 2 and args.snrs == [30]


@pytest.mark.parametrize("relative, root", [("speech/run.py", []), ("graph/run.py", [])])
def test_the_other_recipes_refuse_endless_epochs_too(capsys, relative, root):
    if relative.startswith("graph"):
        pytest.importorskip("torch_geometric")
    module = load(relative)
    with pytest.raises(SystemExit):
        module.parse_args([*root, "--epochs", "-1"])    # Lightning's max_epochs=-1 trains forever
    assert "--epochs must be an integer >= 1, got -1" in capsys.readouterr().err
