"""Red team: certified-accuracy metrics stay fractions of the nodes they count."""

from __future__ import annotations

import pytest
import torch

from mmrobust.graph.certify import SparseCertificate
from mmrobust.metrics import SparseCertifiedAccuracy
from mmrobust.metrics.functional import sparse_certified_accuracy


def _certificate():
    return SparseCertificate(prediction=torch.tensor([0, 1, 1, 0]), p_lower=torch.full((4,), 0.99),
                             counts=torch.zeros(4, 2), p_plus=0.01, p_minus=0.4)


@pytest.mark.parametrize("mask", [torch.tensor([2]), torch.tensor([1, 2]), torch.ones(5, dtype=torch.bool)])
def test_a_mask_that_is_not_one_flag_per_node_is_refused(mask):
    # node indices were turned into a broadcast mask: mask=tensor([2]) counted all 4 nodes over a total of 1
    # (certified accuracy 4.0, i.e. 400 %)
    with pytest.raises(ValueError, match="boolean node mask of shape"):
        sparse_certified_accuracy(_certificate(), torch.tensor([0, 1, 1, 0]), radii=[(0, 0)], mask=mask)
    with pytest.raises(ValueError, match="boolean node mask of shape"):
        SparseCertifiedAccuracy(radii=[(0, 0)]).update(_certificate(), torch.tensor([0, 1, 1, 0]), mask)


def test_boolean_and_zero_one_masks_select_nodes():
    target = torch.tensor([0, 1, 0, 0])
    for mask in (torch.tensor([True, True, True, False]), torch.tensor([1, 1, 1, 0])):
        out = sparse_certified_accuracy(_certificate(), target, radii=[(0, 0)], mask=mask)
        assert out.tolist() == [pytest.approx(2 / 3)]
