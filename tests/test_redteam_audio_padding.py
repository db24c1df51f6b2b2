"""Red team: budgets measured relative to the signal (SNR, peak dB) never count padding as signal."""

from __future__ import annotations

import pytest
import torch

from mmrobust import evaluate
from mmrobust.adapters import WaveformAdapter
from mmrobust.attacks import PGD, CTCTargetedAttack
from mmrobust.threats import L2Ball, PeakDBBall, SNRBall


def padded_batch(pad_value: float):
    g = torch.Generator().manual_seed(0)
    wave = 0.05 * torch.randn(3, 400, generator=g)
    lengths = torch.tensor([400, 250, 100])
    pad = torch.arange(400)[None] >= lengths[:, None]
    wave = torch.where(pad, torch.full_like(wave, pad_value), wave)   # e.g. a DC offset or a noise floor
    model = torch.nn.Linear(400, 3).eval()
    y = model(wave).argmax(1)
    return model, wave, y, lengths, pad


def valid_snr(delta, wave, pad):
    keep = (~pad).to(wave.dtype)
    return 10 * torch.log10((wave * keep).pow(2).sum(1) / delta.pow(2).sum(1))


@pytest.mark.parametrize("threat", [SNRBall(30), PeakDBBall(-20)], ids=["snr", "peak_db"])
def test_non_zero_padding_is_refused_instead_of_inflating_the_budget(threat):
    model, wave, y, lengths, pad = padded_batch(0.8)
    attack = PGD(threat, steps=3, adapter=WaveformAdapter(), seed=0)
    # was: the radius came from the padded tensor, so the 100-sample clip got an SNR of ~3 dB instead of 30 dB
    # over its own samples, and evaluate()'s independent check (the same radius) agreed
    with pytest.raises(ValueError, match=r"audio holds non-zero samples in its padding.*valid samples.*Zero the padding"):
        attack(model, [wave, y, lengths])
    with pytest.raises(ValueError, match=r"non-zero samples in its padding"):
        evaluate(model, [[wave, y, lengths]], attack, progress=False, checks=False)


def test_zero_padding_and_budgets_that_ignore_the_signal_still_run():
    model, wave, y, lengths, pad = padded_batch(0.0)
    result = PGD(SNRBall(30), steps=3, adapter=WaveformAdapter(), seed=0)(model, [wave, y, lengths])
    delta = result.inputs["audio"] - wave
    assert bool((valid_snr(delta, wave, pad) >= 30 - 1e-3).all()) and bool((delta[pad] == 0).all())
    model, wave, y, lengths, pad = padded_batch(0.8)           # an L2 ball's radius does not read the signal
    result = PGD(L2Ball(0.1), steps=3, adapter=WaveformAdapter(), seed=0)(model, [wave, y, lengths])
    assert bool(((result.inputs["audio"] - wave)[pad] == 0).all())


def test_the_ctc_attack_refuses_non_zero_padding_too():
    model = torch.nn.Sequential(torch.nn.Unflatten(1, (10, 40)), torch.nn.Linear(40, 5)).eval()
    _, wave, _, lengths, _ = padded_batch(0.8)
    with pytest.raises(ValueError, match=r"wave holds non-zero samples in its padding"):
        CTCTargetedAttack(PeakDBBall(-20.0), steps=2)(model, wave, [[1], [2], [3]], lengths=lengths)
