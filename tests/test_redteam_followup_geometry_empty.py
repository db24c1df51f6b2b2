"""Red team follow-up: the geometry metrics return the same keys with or without updates (NaN statistics)."""

from __future__ import annotations

import math
import warnings

import torch

from mmrobust.metrics import BoundaryDistance, GeometryStatistic


def _computed(metric):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # torchmetrics warns on compute() before update()
        return metric.compute()


def test_boundary_distance_without_updates_has_every_key_as_nan():
    metric = BoundaryDistance()
    metric.update(distances=torch.tensor([0.1, 0.5, 0.2, float("inf")]), confidence=torch.tensor([0.6, 0.9, 0.7, 0.99]),
                  correct=torch.tensor([True, True, False, True]))
    keys = set(metric.compute())
    empty = _computed(BoundaryDistance())
    assert set(empty) == keys                          # was {"median"} only
    assert float(empty["count_correct"]) == 0 and float(empty["count_incorrect"]) == 0
    assert all(math.isnan(float(v)) for k, v in empty.items() if not k.startswith("count"))


def test_boundary_distance_after_reset_has_every_key():
    metric = BoundaryDistance(quantiles=(0.5, 0.95))
    metric.update(distances=torch.tensor([0.1]), confidence=torch.tensor([0.6]), correct=torch.tensor([True]))
    keys = set(metric.compute())
    metric.reset()
    assert set(_computed(metric)) == keys and "q95" in keys


def test_geometry_statistic_without_values_has_every_key_as_nan():
    metric = GeometryStatistic()
    metric.update(torch.tensor([1.0, 2.0]))
    keys = set(metric.compute())
    empty = _computed(GeometryStatistic())
    assert set(empty) == keys == {"mean", "max", "median", "q90"}    # was {"mean"} only
    assert all(math.isnan(float(v)) for v in empty.values())
    only_empty_batch = GeometryStatistic()
    only_empty_batch.update(torch.zeros(0))                          # max() of nothing raised
    assert all(math.isnan(float(v)) for v in only_empty_batch.compute().values())
