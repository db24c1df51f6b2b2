"""Red team follow-up: one median of minimal perturbation sizes, shared by the sweep's summary and the metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmrobust.budget_sweep import BudgetSweep
from mmrobust.metrics.functional import minimal_perturbation_compute, size_quantile


def _sweep(sizes):
    return BudgetSweep(budgets=[0.1], budget_name="eps (l2)", attacks={"fmn": "FMN"}, clean_accuracy=1.0, robust_accuracy=[0.5], per_attack={"fmn": [0.5]},
                       num_examples=len(sizes), results=[], min_norms={"fmn": list(sizes)})


def test_summary_median_is_the_metrics_median_for_an_even_count():
    # four found points: the metric's median is (0.2 + 0.3) / 2 = 0.25; the summary took the upper middle 0.3
    sizes = [0.4, 0.1, 0.3, 0.2]
    row = _sweep(sizes + [math.inf]).min_norm_summary()[0]
    assert row["found"] == 4 and row["clean-correct outputs"] == 5
    assert row["median"] == pytest.approx(0.25)
    assert row["median"] == pytest.approx(float(minimal_perturbation_compute(torch.tensor(sizes))))
    assert (row["25%"], row["75%"]) == (pytest.approx(np.quantile(sizes, 0.25)), pytest.approx(np.quantile(sizes, 0.75)))


def test_summary_with_nothing_found_is_nan():
    row = _sweep([math.inf, math.inf]).min_norm_summary()[0]
    assert row["found"] == 0 and all(math.isnan(row[k]) for k in ("25%", "median", "75%"))


def test_quantile_keeps_never_broken_outputs_infinite():
    inf = math.inf
    assert float(size_quantile(torch.tensor([0.1, inf, inf]), 0.5)) == inf     # torch.quantile gives NaN
    assert float(size_quantile(torch.tensor([0.1, inf]), 0.5)) == inf
    assert float(size_quantile(torch.tensor([0.1, 0.2, inf]), 0.5)) == pytest.approx(0.2)
    assert float(minimal_perturbation_compute(torch.tensor([0.1, 0.2, 0.3, inf]))) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="q must be"):
        size_quantile(torch.tensor([1.0]), 50)
