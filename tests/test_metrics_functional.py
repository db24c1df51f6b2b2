"""Every metric class has a functional twin in mmrobust.metrics.functional (torchmetrics' style): one batch in,
the same value the class computes after updating with that batch."""

from __future__ import annotations

import inspect
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import mmrobust.metrics as metrics
import mmrobust.metrics.functional as F
from mmrobust.compression import QuantizerConfig
from mmrobust.threats import WeightBall

from test_metrics import result


def _same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
        return
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    assert torch.allclose(a.double(), b.double(), equal_nan=True), (a, b)


def _class_value(metric, *args, **kwargs):
    metric.update(*args, **kwargs)
    return metric.compute()


def test_every_metric_class_has_a_twin():
    classes = [n for n in metrics.__all__ if inspect.isclass(getattr(metrics, n))]
    snake = {n: "".join("_" + c.lower() if c.isupper() else c for c in n).lstrip("_") for n in classes}
    snake.update(BitErrorAccuracy="bit_error_accuracy")
    missing = [n for n in classes if not callable(getattr(F, snake[n], None))]
    assert not missing, f"metric classes without a functional twin: {missing}"


def test_result_metrics_equal_their_twins():
    y, clean, adv = [0, 0, 1, 1, 2, 2], [0, 0, 1, 2, 2, 2], [1, 0, 1, 2, 0, 2]
    r = result(y, clean, adv, size=[0.1, 0.3, 0.2, 0.4, 0.05, 0.7], clean_conf=[.9, .8, .7, .6, .95, .5],
               adv_conf=[.6, .9, .5, .7, .8, .4])
    _same(_class_value(metrics.RobustAccuracy(), r), F.robust_accuracy(r))
    _same(_class_value(metrics.CleanAccuracy(), r), F.clean_accuracy(r))
    _same(_class_value(metrics.AttackSuccessRate(), r), F.attack_success_rate(r))
    _same(_class_value(metrics.MinimalPerturbation(), r), F.minimal_perturbation(r))
    _same(_class_value(metrics.ConfidenceThresholdedError(tpr=0.8), r), F.confidence_thresholded_error(r, tpr=0.8))
    _same(_class_value(metrics.ConfidenceThresholdedError(threshold=0.7), [r, r]),
          F.confidence_thresholded_error([r, r], threshold=0.7))
    assert F.minimal_perturbation(r).item() == math.inf  # sizes 0 .05 .1 inf inf inf


def test_tensor_metrics_equal_their_twins():
    pred, target = torch.tensor([0, 1, 2, -1]), torch.tensor([0, 1, 1, 0])
    radius = torch.tensor([0.3, 0.8, 1.0, 0.0])
    _same(_class_value(metrics.CertifiedAccuracy(), pred, radius, target), F.certified_accuracy(pred, radius, target))
    assert F.certified_accuracy(pred, radius, target, radii=[0.0, 0.5]).tolist() == [0.5, 0.25]
    cert = SimpleNamespace(prediction=pred, certified=lambda a, d: radius >= 0.5 * (a + d))
    _same(_class_value(metrics.SparseCertifiedAccuracy(), cert, target),
          F.sparse_certified_accuracy(cert, target))
    d, c, ok = torch.tensor([0.1, 0.5, math.inf, 0.3]), torch.tensor([0.5, 0.9, 0.99, 0.6]), torch.tensor([1, 1, 1, 0])
    _same(_class_value(metrics.BoundaryDistance(), distances=d, confidence=c, correct=ok),
          F.boundary_distance(distances=d, confidence=c, correct=ok))
    values = torch.tensor([1.0, 3.0, 2.0])
    _same(_class_value(metrics.GeometryStatistic(), values), F.geometry_statistic(values))
    assert F.geometry_statistic(values)["mean"].item() == pytest.approx(2.0)
    with pytest.raises(RuntimeError, match="no examples"):
        F.certified_accuracy(pred[:0], radius[:0], target[:0])


def test_model_metrics_equal_their_twins():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(8, 1, 2, 2), torch.randint(0, 3, (8,))
    kw = dict(rates=(0.01, 0.1), patterns=2, quantizer=QuantizerConfig(bits=8))
    _same(_class_value(metrics.BitErrorAccuracy(**kw), model, [x, y]), F.bit_error_accuracy(model, [x, y], **kw))
    kw = dict(samples=2, steps=2, seed=0)
    _same(_class_value(metrics.WeightFlatness(WeightBall(0.1), **kw), model, [x, y]),
          F.weight_flatness(model, [x, y], average_ball=WeightBall(0.1), **kw))
