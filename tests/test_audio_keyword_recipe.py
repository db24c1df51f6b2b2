"""recipes/speech/keywords.py end to end on generated partial Speech Commands releases (v0.01 / v0.02 names,
lists naming absent files): the 10-, 12- and 35-word tasks and a subset."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from mmrobust.audio.speech_commands import KEYWORDS, SILENCE, UNKNOWN, WORDS_V001, WORDS_V002

from _speech_commands_tree import make_release  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "speech" / "keywords.py"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("recipe_speech_keywords", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("version,task,words,classes", [  # 15-45 s each on the loaded 2-core machine
    ("v0.01", "10", WORDS_V001, KEYWORDS),
    pytest.param("v0.02", "12", WORDS_V002, KEYWORDS + (UNKNOWN, SILENCE), marks=pytest.mark.slow),
    pytest.param("v0.02", "35", WORDS_V002, WORDS_V002, marks=pytest.mark.slow),
])
@pytest.mark.filterwarnings("ignore:mmrobust.evaluate")  # constant test clips: the gradient checks may fire
def test_recipe_runs_each_task_on_a_partial_release(tmp_path, capsys, recipe, version, task, words, classes):
    make_release(tmp_path / "data" / f"speech_commands_{version}", words, clips_per_word=3, missing_per_list=2)
    out = tmp_path / "out"
    res = recipe.main(["--root", str(tmp_path / "data"), "--version", version, "--task", task, "--quick",
                       "--steps", "2", "--width", "8", "--batch-size", "16", "--out", str(out)])
    assert "2 of testing_list.txt are absent" in capsys.readouterr().out
    data = res["data"]
    assert data["classes"] == list(classes) and data["version"] == version and data["task"] == task
    assert data["listed but absent"] == {"validation": 2, "testing": 2}
    n_keywords = len(classes) - 2 * (task == "12")
    assert data["clips"]["testing"] >= n_keywords  # speaker s0 of every word is in testing_list.txt
    row = res["rows"]["normal"]
    assert 0 <= row["PGD SNR 30 dB"] <= row["clean"] <= 1
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"]["normal"] == pytest.approx(row) and saved["data"]["clips"] == data["clips"]
    report = (out / "results.md").read_text()
    assert f"Speech Commands {version}, task {task} ({len(classes)} classes" in report
    assert "'testing': 2" in report  # the absent files are reported


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:mmrobust.evaluate")
def test_recipe_on_a_subset_with_adversarial_training(tmp_path, recipe):
    make_release(tmp_path, WORDS_V002, clips_per_word=4, missing_per_list=0, background=False)
    res = recipe.main(["--root", str(tmp_path), "--task", "all", "--subset", "20", "--quick", "--adv-epochs", "1",
                       "--train-steps", "1", "--steps", "2", "--width", "8", "--batch-size", "16",
                       "--out", str(tmp_path / "out")])
    assert all(n <= 20 for n in res["data"]["clips"].values()) and res["data"]["clips"]["training"] == 20
    assert res["data"]["subset"] == "at most 20 clips per split"
    assert set(res["rows"]) == {"normal", "PGD-AT 30 dB"}
    for row in res["rows"].values():
        assert 0 <= row["PGD SNR 30 dB"] <= row["clean"] <= 1


def test_a_missing_release_tells_the_recipe_user_what_to_pass_and_where_to_get_it(tmp_path, recipe):
    with pytest.raises(SystemExit) as refused:  # before any training; nothing is downloaded
        recipe.main(["--root", str(tmp_path), "--quick", "--out", str(tmp_path / "out")])
    message = str(refused.value.code)
    assert message.startswith("keywords.py: error: --root") and str(tmp_path) in message
    assert "testing_list.txt" in message and "speech_commands_v0.02" in message  # the layout --root must have
    assert "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz" in message  # where to get it
    assert "tar -xzf" in message and "downloads nothing" in message
    assert "SpeechCommandsDataModule(" in message and "download=True" in message  # only for direct library use
    assert "pass root=" not in message  # the library's wording is not this entry point's
    assert not (tmp_path / "out").exists()  # a refused run leaves no empty --out folder behind


def test_a_release_of_the_other_version_names_the_flag(tmp_path, recipe):
    make_release(tmp_path / "speech_commands_v0.01", KEYWORDS, clips_per_word=2)
    with pytest.raises(SystemExit) as refused:
        recipe.main(["--root", str(tmp_path), "--quick", "--out", str(tmp_path / "out")])
    assert "holds speech_commands_v0.01: pass --version v0.01" in str(refused.value.code)
    assert not (tmp_path / "out").exists()
