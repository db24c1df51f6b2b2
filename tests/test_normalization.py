"""Data normalised in the dataloader (issue 19): the two correct ways give the same attack as pixel-space
data, the box error points to them, and only moving the box (the old advice) is measurably weaker."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmrobust import PGD, LinfBall, evaluate
from mmrobust.image import InputNormalization, normalized_threat
from mmrobust.threats import L2Ball

MEAN, STD = 0.3, 0.35


class Denormalize(nn.Module):
    """Turns a pixel-space model into one that expects ``(x - MEAN) / STD`` (as if trained on it)."""

    def forward(self, z):
        return z * STD + MEAN


def test_normalized_threat_converts_eps_and_box():
    t = normalized_threat(LinfBall(0.1, lower=0.0, upper=1.0), mean=[MEAN], std=[STD])
    assert isinstance(t, LinfBall)
    assert t.eps == pytest.approx(0.1 / STD)
    assert (t.lower, t.upper) == pytest.approx(((0 - MEAN) / STD, (1 - MEAN) / STD))
    l2 = normalized_threat(L2Ball(1.0), mean=MEAN, std=STD)  # no box given: pixel_range [0, 1]
    assert l2.eps == pytest.approx(1.0 / STD) and l2.lower == pytest.approx(-MEAN / STD)
    original = LinfBall(0.1, lower=0.0, upper=1.0)
    normalized_threat(original, MEAN, STD)
    assert (original.eps, original.lower, original.upper) == (0.1, 0.0, 1.0)


def test_per_channel_statistics_point_to_input_normalization():
    with pytest.raises(ValueError, match="InputNormalization"):
        normalized_threat(LinfBall(8 / 255, lower=0, upper=1), mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26])
    with pytest.raises(TypeError, match="LinfBall"):
        from mmrobust.threats import SNRBall
        normalized_threat(SNRBall(30), MEAN, STD)


def test_both_correct_ways_match_pixel_space_and_box_only_is_weaker(digits, digits_cnn):
    _, _, xt, yt = digits
    x, y = xt[:120], yt[:120]
    z = (x - MEAN) / STD
    pixel = LinfBall(0.1, lower=0.0, upper=1.0)
    ref = evaluate(digits_cnn, [(x, y)], PGD(pixel, steps=10, seed=0), progress=False)

    on_normalised = nn.Sequential(Denormalize(), digits_cnn).eval()
    # way 2: normalised data, converted budget and box
    conv = evaluate(on_normalised, [(z, y)], PGD(normalized_threat(pixel, MEAN, STD), steps=10, seed=0),
                    progress=False)
    # way 1: the same normalised-data model behind InputNormalization, fed pixels with the pixel budget
    inside = nn.Sequential(InputNormalization([MEAN], [STD], channels=1), on_normalised).eval()
    way1 = evaluate(inside, [(x, y)], PGD(pixel, steps=10, seed=0), progress=False)
    assert conv["robust_accuracy"] == pytest.approx(ref["robust_accuracy"], abs=1 / 120 + 1e-9)
    assert way1["robust_accuracy"] == pytest.approx(ref["robust_accuracy"], abs=1 / 120 + 1e-9)

    # the adversarial points of way 2, mapped back to pixels, respect the pixel budget and box
    result = PGD(normalized_threat(pixel, MEAN, STD), steps=10, seed=0)(on_normalised, (z, y))
    back = result.batch[0] * STD + MEAN
    assert float((back - x).abs().max()) <= 0.1 + 1e-5
    assert float(back.min()) >= -1e-5 and float(back.max()) <= 1 + 1e-5

    # moving only the box leaves eps in normalised units: a 1/STD times smaller pixel budget
    box_only = LinfBall(0.1, lower=(0 - MEAN) / STD, upper=(1 - MEAN) / STD)
    weak = evaluate(on_normalised, [(z, y)], PGD(box_only, steps=10, seed=0), progress=False)
    assert weak["robust_accuracy"] > ref["robust_accuracy"] + 0.1


def test_box_error_points_to_both_correct_ways(digits_cnn, digits):
    _, _, xt, yt = digits
    z = (xt[:8] - MEAN) / STD
    with pytest.raises(ValueError) as err:
        PGD(LinfBall(0.1, lower=0.0, upper=1.0), steps=2)(digits_cnn, (z, yt[:8]))
    msg = str(err.value)
    assert "InputNormalization" in msg and "normalized_threat" in msg
