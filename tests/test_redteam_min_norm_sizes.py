"""Red team: the budget sweep's minimal-perturbation sizes count only points that are adversarial."""

from __future__ import annotations

import math

import torch

from mmrobust.attacks import FMN
from mmrobust.budget_sweep import minimal_perturbations
from mmrobust.metrics.functional import minimal_perturbation_update
from mmrobust.threats import L2Ball
from mmrobust.utils import toy_problem


class _FirstNotAdversarial(FMN):
    """FMN whose first returned point turns out not adversarial at the returned logits (e.g. float rounding
    between the search's batch and the final forward pass)."""

    def finish(self, *args, **kwargs):
        result = super().finish(*args, **kwargs)
        result.success = result.success.clone()
        result.success[0] = False
        return result


def test_a_found_point_that_is_not_adversarial_has_no_minimal_size():
    # the sweep's histogram kept the point's finite size, where MinimalPerturbation counts it as never broken
    model, x, y = toy_problem()
    keep = model(x).argmax(1) == y
    x, y = x[keep], y[keep]
    attack = _FirstNotAdversarial(L2Ball(1.0, lower=0, upper=1), steps=20, seed=0)
    sizes = minimal_perturbations(model, [(x, y)], attack)
    twin, _ = minimal_perturbation_update(attack.private_copy()(model, (x, y)))
    assert math.isinf(sizes[0]) and math.isinf(float(twin[0]))
