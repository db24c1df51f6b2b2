"""Red team follow-up: seeded geometry estimates draw on the CPU, so a seed gives the same result on CPU and
CUDA (the convention of mmrobust.utils.SeededStream); and the geometry metrics' quantiles are the library's
one definition (metrics.functional.size_quantile)."""

from __future__ import annotations

import math

import pytest
import torch

from mmrobust.geometry import decision_slice, local_lipschitz
from mmrobust.metrics import BoundaryDistance, GeometryStatistic
from mmrobust.metrics.functional import minimal_perturbation_compute, size_quantile
from mmrobust.threats import L2Ball
from mmrobust.utils import toy_problem


def test_geometry_quantiles_are_size_quantile():
    inf = math.inf
    d = torch.tensor([0.3, 0.1, inf, 0.2, 0.4, inf])
    metric = BoundaryDistance(quantiles=(0.1, 0.25, 0.5, 0.75, 0.9))
    metric.update(distances=d, confidence=torch.rand(6), correct=torch.ones(6, dtype=torch.bool))
    out = metric.compute()
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert float(out[f"q{round(q * 100):02d}"]) == pytest.approx(float(size_quantile(d, q)))
    assert float(out["median"]) == pytest.approx(float(minimal_perturbation_compute(d)))
    stat = GeometryStatistic()
    stat.update(torch.tensor([1.0, 2.0, 4.0, 3.0]))
    assert float(stat.compute()["median"]) == pytest.approx(2.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_seed_same_estimates_on_cpu_and_cuda():
    model, x, y = toy_problem()
    threat = L2Ball(0.5)
    on_cpu = local_lipschitz(model, (x, y), threat, steps=0, seed=3)
    on_cuda = local_lipschitz(model.cuda(), (x.cuda(), y.cuda()), threat, steps=0, seed=3)
    assert torch.allclose(on_cpu, on_cuda.cpu(), rtol=1e-4, atol=1e-6)
    a = decision_slice(model.cpu(), (x, y), resolution=5, seed=3)
    b = decision_slice(model.cuda(), (x.cuda(), y.cuda()), resolution=5, seed=3)
    assert torch.allclose(a.v, b.v, atol=1e-5)
