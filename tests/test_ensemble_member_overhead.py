"""Overhead cuts in the members of Ensemble.standard (issue 20) change no number: Square's L-inf candidates
project only their new window into the box, which for a LinfBall is the projection of the whole candidate."""

from __future__ import annotations

import torch

from mmrobust.attacks import Square
from mmrobust.threats import LinfBall


class GeneralLinf(LinfBall):
    """A LinfBall that Square treats as any threat model: every candidate projected as a whole."""


def test_square_window_projection_gives_the_points_of_the_full_projection(digits_cnn, digits):
    _, _, xt, yt = digits
    x, y = xt[:24], yt[:24]
    fast = Square(LinfBall(0.15, lower=0.0, upper=1.0), n_queries=60, seed=0)(digits_cnn, (x, y))
    full = Square(GeneralLinf(0.15, lower=0.0, upper=1.0), n_queries=60, seed=0)(digits_cnn, (x, y))
    assert torch.equal(fast.inputs["image"], full.inputs["image"])
    assert torch.equal(fast.logits, full.logits) and torch.equal(fast.success, full.success)
    assert 0 < int(fast.success.sum()) < 24  # some units fooled (the search drops them), some not
    assert float((fast.inputs["image"] - x).abs().max()) <= 0.15 + 1e-6
    assert float(fast.inputs["image"].min()) >= 0 and float(fast.inputs["image"].max()) <= 1
