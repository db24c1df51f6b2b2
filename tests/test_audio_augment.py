"""Speaker-independence augmentation: speed perturbation moves frequencies the right way, lengths stay true,
padding stays zero, and the datamodule applies it to training batches only."""

from __future__ import annotations

import math

import pytest
import torch

from mmrobust.audio import SpeechAugmentation, SyntheticSpeechDataModule
from mmrobust.audio.transforms import RandomSpeed


def _peak_hz(wave, sr):
    spec = torch.fft.rfft(wave * torch.hann_window(wave.shape[-1]))
    return float(spec.abs().argmax()) * sr / wave.shape[-1]


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_speed_moves_every_frequency_by_the_factor(factor):
    sr, t = 8000, 8000
    x = torch.sin(2 * math.pi * 500 * torch.arange(t) / sr)[None].repeat(2, 1)
    x[:, 4000:] = 0  # half a second of tone, then padding
    y = RandomSpeed((factor, factor))(x)
    assert y.shape == x.shape
    assert abs(_peak_hz(y[0, :int(4000 / factor) - 200], sr) - 500 * factor) < 10
    energy = y[0].pow(2)
    end = int(4000 / factor)
    assert energy[end + 20:].sum() < 1e-3 * energy.sum() < energy[end - 20:end].sum()  # lasts 1/factor as long


def test_speed_factors_are_drawn_from_the_range_on_the_grid():
    g = torch.Generator().manual_seed(0)
    f = RandomSpeed((0.9, 1.1)).draw(1000, g, torch.zeros(1))
    assert f.min() >= 0.9 - 1e-6 and f.max() <= 1.1 + 1e-6
    assert set((f * 20).round().long().tolist()) == {18, 19, 20, 21, 22}
    with pytest.raises(ValueError, match="factors"):
        RandomSpeed((0.0, 1.1))


def test_speech_augmentation_keeps_lengths_true_padding_zero_and_box():
    g = torch.Generator().manual_seed(1)
    n, t = 16, 4000
    lengths = torch.randint(500, 2000, (n,), generator=g)
    wave = (torch.rand(n, t, generator=g) * 2 - 1) * (torch.arange(t)[None] < lengths[:, None])
    before = wave.clone()
    aug = SpeechAugmentation(speed=(0.5, 0.5), reverb_probability=1.0, sample_rate=8000)
    out, new = aug(wave, lengths, torch.Generator().manual_seed(2))
    assert out.shape == wave.shape and out.abs().max() <= 1
    assert (new >= 2 * lengths).all() and (new <= t).all()  # half speed: twice as long, plus the shift
    assert torch.all(out * (torch.arange(t)[None] >= new[:, None]) == 0)  # padding untouched
    assert (out.pow(2).sum(1) > 0).all()
    again, new2 = aug(wave, lengths, torch.Generator().manual_seed(2))
    assert torch.equal(again, out) and torch.equal(new, new2)  # a seeded generator reproduces the draw
    assert torch.equal(wave, before)  # the input is not modified
    with pytest.raises(ValueError, match="lengths"):
        aug(wave, lengths[:3])


def test_noise_snr_is_measured_on_the_valid_part():
    n, t = 64, 8000
    lengths = torch.full((n,), 1000)
    wave = torch.zeros(n, t)
    wave[:, :1000] = 0.5 * torch.sin(torch.arange(1000) * 0.3)
    aug = SpeechAugmentation(speed=None, max_shift=0, gain_db=(0, 0), reverb_probability=0.0, noise_snr_db=(20, 20))
    out, new = aug(wave, lengths, torch.Generator().manual_seed(0))
    assert torch.equal(new, lengths)
    noise = (out - wave)[:, :1000]
    snr = 10 * torch.log10(wave[:, :1000].pow(2).sum() / noise.pow(2).sum())
    assert abs(float(snr) - 20) < 0.3


def test_datamodule_applies_the_augmentation_to_training_batches_only():
    class Trainer:
        training = True

    dm = SyntheticSpeechDataModule(num_train=8, num_val=4, num_test=4, batch_size=8, max_length=8000,
                                   augment=SpeechAugmentation(speed=(0.5, 0.5)))
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    dm.trainer = Trainer()
    wave, y, lengths = dm.on_after_batch_transfer(list(batch), 0)
    assert (lengths >= torch.clamp(2 * batch[2], max=8000)).all() and torch.equal(y, batch[1])
    Trainer.training = False
    same = dm.on_after_batch_transfer(list(batch), 0)
    assert torch.equal(same[0], batch[0]) and torch.equal(same[2], batch[2])
    with pytest.raises(TypeError, match="augment must be True"):
        SyntheticSpeechDataModule(augment="yes")
