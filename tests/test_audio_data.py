"""Speech datamodules: synthetic default, FSDD on ../shared/data, augmentation that keeps padding clean."""

from __future__ import annotations

import pytest
import torch

from mmrobust.audio.data import (FSDDDataModule, SyntheticSpeechDataModule, WaveformDataset, augment_batch,
                                 load_wav, pad_or_crop)
from mmrobust.audio.synth import synth_digits


def test_synthetic_data_is_deterministic_balanced_and_in_range():
    a = synth_digits(40, seed=3, length=2000)
    b = synth_digits(40, seed=3, length=2000)
    c = synth_digits(40, seed=4, length=2000)
    assert all(torch.equal(u, v) for u, v in zip(a, b)) and not torch.equal(a[0], c[0])
    waves, labels, lengths = a
    assert waves.abs().max() <= 1 and torch.bincount(labels).tolist() == [4] * 10
    pad = torch.arange(2000)[None] >= lengths[:, None]
    assert bool((waves[pad] == 0).all())


def test_synthetic_datamodule_batches_and_splits_differ():
    dm = SyntheticSpeechDataModule(num_train=40, num_val=20, num_test=20, max_length=2000, batch_size=8)
    dm.setup("fit")
    wave, y, lengths = next(iter(dm.train_dataloader()))
    assert wave.shape == (8, 2000) and wave.dtype == torch.float32 and y.dtype == torch.long
    assert lengths.shape == (8,) and bool((lengths <= 2000).all())
    assert not torch.equal(dm.train_set.waves[:20], dm.test_set.waves)
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticSpeechDataModule(num_classes=11)


def test_augmentation_keeps_padding_zero_and_box():
    waves, _, lengths = synth_digits(16, seed=0, length=3000)
    torch.manual_seed(0)
    out = augment_batch(waves * 1.0, lengths, max_shift=300)
    pad = torch.arange(3000)[None] >= lengths[:, None]
    assert bool((out[pad] == 0).all()) and out.abs().max() <= 1
    assert not torch.equal(out, waves)


def test_pad_or_crop():
    w = torch.ones(5)
    assert pad_or_crop(w, 3)[0].tolist() == [1, 1, 1] and pad_or_crop(w, 3)[1] == 3
    assert pad_or_crop(w, 7)[0].tolist() == [1] * 5 + [0, 0] and pad_or_crop(w, 7)[1] == 5
    with pytest.raises(ValueError, match="same length"):
        WaveformDataset(torch.zeros(2, 3), torch.zeros(3), torch.zeros(2))


def test_fsdd_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="recordings"):
        FSDDDataModule(root=tmp_path).setup()
    with pytest.raises(ValueError, match="split"):
        FSDDDataModule(root=tmp_path, split="random")


def test_fsdd_official_and_speaker_splits(shared_data):
    root = shared_data / "fsdd"
    wave, sr = load_wav(root / "recordings" / "3_theo_7.wav")
    assert sr == 8000 and wave.dim() == 1 and wave.abs().max() <= 1
    half, sr2 = load_wav(root / "recordings" / "3_theo_7.wav", sample_rate=4000)
    assert sr2 == 4000 and abs(len(half) - len(wave) / 2) <= 1
    dm = FSDDDataModule(root=root, split="official", batch_size=16)
    dm.setup()
    assert len(dm.test_set) == 300 and len(dm.train_set) + len(dm.val_set) == 2700
    w, y, lengths = next(iter(dm.test_dataloader()))
    assert w.shape == (16, 8000) and bool((w.abs() <= 1).all()) and bool((lengths > 1000).all())
    spk = FSDDDataModule(root=root, split="speaker", test_speakers=("theo", "lucas"))
    spk.setup()
    assert len(spk.test_set) == 1000
    with pytest.raises(ValueError, match="test_speakers"):
        FSDDDataModule(root=root, split="speaker", test_speakers=("nobody",)).setup()
