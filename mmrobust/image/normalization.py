"""Attacking a model whose data is normalised in the dataloader (``transforms.Normalize(mean, std)``).

Budgets are stated in pixel units (``eps = 8/255`` of a [0, 1] image). When the dataloader hands the model
``z = (x - mean) / std``, there are two correct ways to keep that meaning:

1. **Normalise inside the model** (recommended; what RobustBench does): drop ``Normalize`` from the
   transforms and put :class:`~mmrobust.image.InputNormalization` first in the model. Data, box
   ``[0, 1]`` and ``eps`` all stay in pixel units::

       model = nn.Sequential(InputNormalization(mean, std, channels=3), net)
       PGD(LinfBall(8 / 255, lower=0, upper=1), steps=10)(model, (x, y))

2. **Keep normalised data and convert the threat model** with :func:`normalized_threat`: ``eps`` becomes
   ``eps / std`` and the box ``[(0 - mean) / std, (1 - mean) / std]``::

       threat = normalized_threat(LinfBall(8 / 255, lower=0, upper=1), mean=0.1307, std=0.3081)
       PGD(threat, steps=10)(net, (z, y))

Only changing the box (``lower=-0.42``) leaves ``eps`` in normalised units: with ``std = 0.3081`` that is a
3.2x smaller pixel budget, an attack that looks right and is far too weak.
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch

from ..threats.base import ThreatModel
from ..threats.norms import L1Ball, L2Ball, LinfBall

Stats = Union[float, Sequence[float], torch.Tensor]


def _uniform(name: str, value: Stats) -> float:
    t = torch.as_tensor(value, dtype=torch.float64).flatten()
    if t.numel() == 0 or not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be a finite number or per-channel sequence, got {value!r}")
    if not bool((t == t[0]).all()):
        raise ValueError(
            f"{name} differs between channels ({t.tolist()}): per-channel statistics turn an L-p ball in pixels "
            "into a box or ellipsoid in normalised units, which one eps cannot express. Normalise inside the "
            "model instead: nn.Sequential(mmrobust.image.InputNormalization(mean, std, channels), net), with "
            "data, eps and the box [0, 1] in pixel units")
    return float(t[0])


def normalized_threat(threat: ThreatModel, mean: Stats, std: Stats,
                      pixel_range: Tuple[float, float] = (0.0, 1.0)) -> ThreatModel:
    """``threat`` (budget in pixel units) restated for data normalised as ``(x - mean) / std``.

    Returns a copy with ``eps / std`` and the value box ``[(lo - mean) / std, (hi - mean) / std]`` where
    ``(lo, hi)`` is ``threat``'s box or, if it has none, ``pixel_range``. Exact for L-inf, L2 and L1 balls
    when ``mean`` and ``std`` are the same for every channel (e.g. MNIST's 0.1307 / 0.3081); per-channel
    statistics raise an error recommending :class:`~mmrobust.image.InputNormalization` in the model.

    Args:
        threat: a pixel-space ball (``LinfBall``, ``L2Ball``, ``L1Ball``).
        mean, std: the dataloader's normalisation (a number, or per-channel values that are all equal).
        pixel_range: the pixel box used when ``threat`` has none.
    """
    if type(threat) not in (LinfBall, L2Ball, L1Ball):  # not SNRBall etc., whose radius is relative
        raise TypeError(f"normalized_threat converts pixel-space LinfBall/L2Ball/L1Ball threat models, got "
                        f"{threat!r}")
    m, s = _uniform("mean", mean), _uniform("std", std)
    if not s > 0:
        raise ValueError(f"std must be > 0, got {s}")
    lo = pixel_range[0] if threat.lower is None else threat.lower
    hi = pixel_range[1] if threat.upper is None else threat.upper
    out = threat.scaled(1 / s)  # the radius in normalised units: 1/std times the pixel radius
    out.lower, out.upper = (lo - m) / s, (hi - m) / s
    return out
