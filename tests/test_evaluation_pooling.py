"""evaluate() pools an Ensemble's survivors across batches (issue 20): the members after the first run on the
units still robust in several consecutive batches, in full chunks, and the results go back per batch."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mmrobust import evaluate
from mmrobust.adapters import WaveformAdapter
from mmrobust.attacks import APGD, FGSM, PGD, Ensemble
from mmrobust.attacks.survivors import concat_batches
from mmrobust.errors import BudgetViolation
from mmrobust.threats import LinfBall, SNRBall

EPS = 0.1
BOX = LinfBall(EPS, lower=0.0, upper=1.0)


def batches(digits, n=60, size=10, dtype=torch.float32):
    _, _, xt, yt = digits
    return [(xt[i:i + size].to(dtype), yt[i:i + size]) for i in range(0, n, size)]


class CountingPGD(PGD):
    """PGD that records how many units each of its runs gets (the list is shared by private copies)."""

    def __init__(self, *args, calls=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = calls if calls is not None else []

    def run(self, victim, *args, **kwargs):
        self.calls.append(victim.num_units)
        return super().run(victim, *args, **kwargs)


def ensemble(calls=None, threat=BOX):
    # FGSM first leaves some units robust; the deterministic PGD (no random start) after it is the one pooled
    return Ensemble([FGSM(threat), CountingPGD(threat, steps=5, random_start=False, calls=calls),
                     APGD(threat, steps=5, seed=0)], progress=False)


def test_the_member_after_the_first_runs_on_pooled_survivors_in_fewer_calls(digits_cnn, digits):
    data = batches(digits)
    per_batch, pooled = [], []
    alone = evaluate(digits_cnn, data, ensemble(per_batch), pool_units=None, progress=False, checks=False)
    out = evaluate(digits_cnn, data, ensemble(pooled), progress=False, checks=False)
    survivors = sum(per_batch)
    assert len(per_batch) == len(data) and survivors > 10  # every batch has survivors, more than one chunk
    assert sum(pooled) == survivors and max(pooled) <= 10  # the same units, in chunks of the batch size
    assert len(pooled) == -(-survivors // 10) < len(per_batch)
    # deterministic members: the same numbers (chunks only regroup the units)
    assert out["robust_accuracy"] == pytest.approx(alone["robust_accuracy"], abs=1 / 60 + 1e-9)
    assert out["per_attack"] == pytest.approx(alone["per_attack"], abs=1 / 60 + 1e-9)
    assert out["attack_success_rate"] == pytest.approx(alone["attack_success_rate"], abs=1 / 60 + 1e-9)
    assert out["num_examples"] == 60 and out["num_batches"] == len(data)


def test_pooled_is_deterministic_at_most_per_batch_and_leaves_everything_alone(digits_cnn, digits):
    data = batches(digits, n=80, size=16)
    attack = Ensemble.standard(BOX, steps=5, n_target_classes=2, n_queries=30, progress=False)
    before = [m.state_dict() for m in attack.attacks]
    weights = {k: v.clone() for k, v in digits_cnn.state_dict().items()}
    flags = [p.requires_grad for p in digits_cnn.parameters()]
    first = evaluate(digits_cnn, data, attack, progress=False)
    again = evaluate(digits_cnn, data, attack, progress=False)
    alone = evaluate(digits_cnn, data, attack, progress=False, pool_units=None)
    assert first == again  # seeded: the same numbers, checks included
    assert first["robust_accuracy"] <= alone["robust_accuracy"] + 2 / 80
    assert [c["name"] for c in first["checks"]] == [c["name"] for c in alone["checks"]]
    assert [m.state_dict() for m in attack.attacks] == before  # the user's attack objects: not advanced
    assert all(torch.equal(v, weights[k]) for k, v in digits_cnn.state_dict().items())
    assert not digits_cnn.training and [p.requires_grad for p in digits_cnn.parameters()] == flags


def test_a_pool_smaller_than_a_batch_is_the_per_batch_evaluation(digits_cnn, digits):
    data = batches(digits, n=40, size=10)
    attack = Ensemble.standard(BOX, steps=3, n_target_classes=2, n_queries=20, progress=False)
    alone = evaluate(digits_cnn, data, attack, progress=False, checks=False, pool_units=None)
    assert evaluate(digits_cnn, data, attack, progress=False, checks=False, pool_units=5) == alone


class OutsidePGD(PGD):
    """Returns points twice as far as its budget allows."""

    def run(self, victim, *args, **kwargs):
        res = super().run(victim, *args, **kwargs)
        res.inputs = {k: (v + 2 * EPS).clamp(0, 1) for k, v in res.inputs.items()}
        return res


def test_every_pooled_point_is_checked_and_the_model_restored_after_the_error(digits_cnn, digits):
    model = copy.deepcopy(digits_cnn).train()
    bad = Ensemble([FGSM(BOX), OutsidePGD(BOX, steps=2, seed=0)], progress=False)
    with pytest.raises(BudgetViolation, match="outside its threat model"):
        evaluate(model, batches(digits, n=40), bad, progress=False, checks=False)
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_float64_and_normalised_data_pool(digits_cnn, digits):
    model64 = copy.deepcopy(digits_cnn).double().eval()
    data64 = batches(digits, n=40, dtype=torch.float64)
    calls = []
    out = evaluate(model64, data64, ensemble(calls), progress=False, checks=False)
    alone = evaluate(model64, data64, ensemble(), progress=False, checks=False, pool_units=None)
    assert len(calls) < 4 and out["robust_accuracy"] == pytest.approx(alone["robust_accuracy"], abs=1 / 40 + 1e-9)

    from mmrobust.image import normalized_threat
    mean, std = 0.3, 0.35

    class Denormalize(nn.Module):
        def forward(self, z):
            return z * std + mean

    on_normalised = nn.Sequential(Denormalize(), digits_cnn).eval()
    z_data = [((x - mean) / std, y) for x, y in batches(digits, n=40)]
    threat = normalized_threat(BOX, mean, std)
    calls = []
    z_out = evaluate(on_normalised, z_data, ensemble(calls, threat), progress=False, checks=False)
    pixel = evaluate(digits_cnn, batches(digits, n=40), ensemble(), progress=False, checks=False)
    assert len(calls) < 4
    assert z_out["robust_accuracy"] == pytest.approx(pixel["robust_accuracy"], abs=1 / 40 + 1e-9)


def test_audio_of_different_lengths_falls_back_to_each_batch(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.AdaptiveAvgPool1d(50), nn.Flatten(), nn.Linear(50, 3)).eval()
    waves = [0.5 * torch.rand(6, 1, n) - 0.25 for n in (400, 300, 400)]
    data = [(w, model(w).argmax(1)) for w in waves]
    calls = []
    threat = SNRBall(20)
    make = lambda c: Ensemble([FGSM(threat), CountingPGD(threat, steps=3, seed=0, calls=c)],  # noqa: E731
                              adapter=WaveformAdapter(), progress=False)
    out = evaluate(model, data, make(calls), progress=False, checks=False)
    alone_calls = []
    alone = evaluate(model, data, make(alone_calls), progress=False, checks=False, pool_units=None)
    assert out == alone and calls == alone_calls and len(calls) == 3  # per batch: the lengths differ


def test_graph_batches_fall_back_to_each_batch():
    pytest.importorskip("torch_geometric")
    from mmrobust.graph.data import sbm_graph
    from mmrobust.graph.models import GCN

    graphs = [sbm_graph(num_nodes=30, num_classes=2, p_in=0.2, p_out=0.02, seed=s) for s in (0, 1)]
    torch.manual_seed(0)
    model = GCN(graphs[0].num_features, 2, hidden=8).eval()
    make = lambda: Ensemble([FGSM(LinfBall(0.5)), PGD(LinfBall(0.5), steps=3, seed=0)], progress=False)  # noqa: E731
    out = evaluate(model, graphs, make(), progress=False, checks=False)
    assert out == evaluate(model, graphs, make(), progress=False, checks=False, pool_units=None)


def test_concat_batches_joins_per_unit_tensors_and_keeps_equal_entries():
    a = {"x": torch.zeros(2, 3), "y": torch.tensor([0, 1]), "scale": torch.tensor(2.0), "name": "set"}
    b = {"x": torch.ones(3, 3), "y": torch.tensor([1, 1, 0]), "scale": torch.tensor(2.0), "name": "set"}
    joined = concat_batches([a, b], [2, 3])
    assert joined["x"].shape == (5, 3) and joined["y"].tolist() == [0, 1, 1, 1, 0]
    assert joined["scale"] == 2.0 and joined["name"] == "set"
    assert concat_batches([a, dict(b, name="other")], [2, 3]) is None          # differing constants
    assert concat_batches([a, dict(b, x=torch.ones(3, 4))], [2, 3]) is None    # mixed shapes
    assert concat_batches([(a["x"], a["y"]), [b["x"], b["y"]]], [2, 3]) is None  # different containers
    assert concat_batches([object(), object()], [2, 3]) is None


def test_pool_units_is_checked(digits_cnn, digits):
    with pytest.raises(ValueError, match="pool_units"):
        evaluate(digits_cnn, batches(digits, n=10), ensemble(), pool_units=0, progress=False)
