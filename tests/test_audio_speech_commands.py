"""SpeechCommandsDataModule on generated partial releases (v0.01 and v0.02 layouts, lists naming absent files)."""

from __future__ import annotations

import warnings

import pytest
import torch

from mmrobust.audio import ReleaseNotFound, SpeechCommandsDataModule
from mmrobust.audio.speech_commands import KEYWORDS, SILENCE, UNKNOWN, WORDS_V001, WORDS_V002

from _speech_commands_tree import LENGTH, make_release  # noqa: E402


def _items(ds):
    return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("version,words", [("v0.01", WORDS_V001), ("v0.02", WORDS_V002)])
def test_partial_release_splits_follow_the_lists_and_the_files_present(tmp_path, version, words):
    folder = tmp_path / "SpeechCommands" / f"speech_commands_{version}"
    values = make_release(folder, words)
    dm = SpeechCommandsDataModule(tmp_path, version=version, task="all", max_length=LENGTH, batch_size=8)
    with pytest.warns(UserWarning, match="2 files of validation_list.txt and 2 of testing_list.txt are absent"):
        dm.setup()
    assert dm.missing == {"validation": 2, "testing": 2}
    assert dm.num_classes == len(words) == (30 if version == "v0.01" else 35)
    assert dm.counts == {"training": len(words), "validation": len(words), "testing": len(words)}
    by_value = {round(v * 1000): rel for rel, v in values.items()}
    for ds, speaker in ((dm.train_set, "s2"), (dm.val_set, "s1"), (dm.test_set, "s0")):
        for wave, y, length in _items(ds):
            assert wave.shape == (LENGTH,) and int(length) == LENGTH
            rel = by_value[round(float(wave[0]) * 1000)]
            assert rel.split("/")[1].startswith(speaker)  # split by the lists, no clip in two splits
            assert dm.classes[int(y)] == rel.split("/")[0]  # label = its word folder
    wave, y, lengths = next(iter(dm.train_dataloader()))
    assert wave.shape == (8, LENGTH) and y.dtype == torch.long and lengths.tolist() == [LENGTH] * 8


def test_twelve_word_task_unknown_and_silence(tmp_path):
    folder = tmp_path / "speech_commands_v0.02"  # the other accepted layout
    make_release(folder, WORDS_V002, clips_per_word=3)
    dm = SpeechCommandsDataModule(tmp_path, task="12", unknown_fraction=0.5, silence_fraction=0.2,
                                  max_length=LENGTH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup()
    assert dm.classes == KEYWORDS + (UNKNOWN, SILENCE)
    labels = dm.test_set.labels
    assert (labels < 10).sum() == 10  # one testing clip per keyword
    assert (labels == 10).sum() == round(0.5 * (35 - 10))  # unknown: half of the other words' clips
    assert (labels == 11).sum() == 2  # silence: 0.2 x 10 keyword clips
    for wave, y, _ in _items(dm.test_set):
        if int(y) == 11:
            assert torch.allclose(wave, torch.full_like(wave, 0.5))  # a piece of the background recording
        else:
            assert float(wave[0]) < 0.5
    ten = SpeechCommandsDataModule(folder, task="10", max_length=LENGTH)  # root = the release folder itself
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ten.setup()
    assert ten.num_classes == 10 and sorted(ten.train_set.labels.tolist()) == list(range(10))


def test_a_300_clip_subset_and_limits(tmp_path):
    words = KEYWORDS[:5] + ("zero", "one")
    folder = tmp_path / "speech_commands_v0.01"
    make_release(folder, words, clips_per_word=43, missing_per_list=0, background=False)  # 301 clips
    dm = SpeechCommandsDataModule(tmp_path, version="v0.01", task="10", limit_per_split=50, max_length=LENGTH)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing missing, no silence asked for: no warning
        dm.setup()
    assert dm.missing == {"validation": 0, "testing": 0}
    assert dm.counts == {"training": 50, "validation": 5, "testing": 5}
    assert set(dm.train_set.labels.tolist()) <= set(range(5))


def test_wrong_version_and_task_errors(tmp_path):
    make_release(tmp_path / "SpeechCommands" / "speech_commands_v0.01", KEYWORDS, clips_per_word=2)
    with pytest.raises(FileNotFoundError, match="speech_commands_v0.01: pass version='v0.01'"):
        SpeechCommandsDataModule(tmp_path, version="v0.02").setup()
    with pytest.raises(ReleaseNotFound) as missing:  # catchable by the name mmrobust.audio exports
        SpeechCommandsDataModule(tmp_path / "empty").setup()
    assert isinstance(missing.value, FileNotFoundError) and missing.value.version == "v0.02"
    assert "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz" in str(missing.value)  # where to get it
    assert "pass root=" in str(missing.value) and "download=True" in str(missing.value)
    with pytest.raises(ValueError, match="task='35' needs version='v0.02'.*task='30'"):
        SpeechCommandsDataModule(tmp_path, version="v0.01", task="35")
    with pytest.raises(ValueError, match="version"):
        SpeechCommandsDataModule(tmp_path, version="0.02")
    with pytest.raises(ValueError, match="none of the classes"):
        SpeechCommandsDataModule(tmp_path, version="v0.01", classes=("cat", "dog")).setup()
