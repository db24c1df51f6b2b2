"""The attack-failure checks that apply to waveforms (WaveformAdapter) and graphs (PyG, edge flips)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _checks_models import NoisyInput, Quantised
from mmrobust import evaluate
from mmrobust.adapters import WaveformAdapter
from mmrobust.attacks import PGD
from mmrobust.attacks.base import attack_mode
from mmrobust.audio import M5, synth_digits
from mmrobust.checks import gradient_masking, randomised_forward, zero_gradients
from mmrobust.threats import SNRBall


@pytest.fixture(scope="module")
def speech_batch():
    waves, labels, _ = synth_digits(16, seed=1, length=2000)
    torch.manual_seed(0)
    return M5(width=8).eval(), (waves, labels)


def waveform_check(check, model, batch, *args):
    with attack_mode(model):
        victim = WaveformAdapter().victim(model, batch)
        return check(victim, *args)


def test_waveform_model_checks_fire_on_purpose_built_models(speech_batch):
    model, batch = speech_batch
    threats = {"audio": SNRBall(30)}
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert not waveform_check(randomised_forward, model, batch).fired
    assert waveform_check(randomised_forward, NoisyInput(model, std=0.01), batch).fired
    assert not waveform_check(zero_gradients, model, batch, threats, gen()).fired
    quantised = Quantised(model, levels=255, low=-1.0, high=1.0)  # 8-bit audio inside the model
    assert waveform_check(zero_gradients, quantised, batch, threats, gen()).fired
    silent = waveform_check(gradient_masking, model, batch, threats, gen())
    assert silent.ran and not silent.fired, silent.evidence
    assert waveform_check(gradient_masking, quantised, batch, threats, gen()).fired


def test_evaluate_flags_a_randomised_waveform_model(speech_batch):
    model, batch = speech_batch
    attack = PGD(SNRBall(30), steps=3, adapter=WaveformAdapter(), seed=0)
    with pytest.warns(UserWarning, match="randomised_forward"):
        out = evaluate(NoisyInput(model, std=0.01), [batch], attack, progress=False)
    assert "randomised_forward" in out["check_flags"]
    plain = evaluate(model, [batch], attack, progress=False, checks=["randomised_forward", "zero_gradients"])
    assert plain["check_flags"] == [] and [c["name"] for c in plain["checks"]] == ["randomised_forward",
                                                                                 "zero_gradients"]


# -- graphs ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sbm():
    pytest.importorskip("torch_geometric")
    from mmrobust.graph.data import sbm_graph
    from mmrobust.graph.models import GCN
    from mmrobust.graph.training import train_node_classifier

    data = sbm_graph(num_nodes=90, num_classes=3, p_in=0.15, p_out=0.01, feature_noise=1.5, seed=0)
    torch.manual_seed(0)
    model = GCN(data.num_features, 3, hidden=16)
    train_node_classifier(model, data, epochs=60, lr=0.02)
    return model.eval(), data


class DropoutGCN(nn.Module):
    """Feature dropout left on at evaluation."""

    def __init__(self, gcn):
        super().__init__()
        self.gcn = gcn

    def forward(self, x, edge_index, edge_weight=None):
        return self.gcn(nn.functional.dropout(x, 0.5, training=True), edge_index, edge_weight)


class RoundedEdgesGCN(nn.Module):
    """Rounds edge weights (and features) before the GCN: no gradient reaches a relaxed edge attack."""

    def __init__(self, gcn):
        super().__init__()
        self.gcn = gcn

    def forward(self, x, edge_index, edge_weight=None):
        return self.gcn(x.detach() + 0 * x, edge_index, None if edge_weight is None else edge_weight.round())


def graph_check(check, model, data, *args, **kwargs):
    from mmrobust.adapters.graph import GraphAdapter

    with attack_mode(model):
        victim = GraphAdapter(mask="test").victim(model, data)
        return check(victim, *args, **kwargs)


def test_graph_model_checks(sbm):
    model, data = sbm
    assert not graph_check(randomised_forward, model, data).fired
    assert graph_check(randomised_forward, DropoutGCN(model), data).fired
    assert not graph_check(zero_gradients, model, data, {}, edge_weights=True).fired
    fired = graph_check(zero_gradients, RoundedEdgesGCN(model), data, {}, edge_weights=True)
    assert fired.fired and fired.values["zero"] == 1  # one graph


def prbcd(budget):
    from mmrobust.adapters.graph import GraphAdapter
    from mmrobust.attacks import PRBCD

    return PRBCD(budget, block_size=2000, epochs=30, epochs_resampling=20, adapter=GraphAdapter(mask="test"), seed=0)


def test_evaluate_runs_the_graph_checks_and_sees_unused_edge_budget(sbm):
    from mmrobust.attacks.graph_baselines import RandomFlips
    from mmrobust.threats.graph import EdgeFlips
    from mmrobust.adapters.graph import GraphAdapter

    model, data = sbm
    out = evaluate(model, [data], prbcd(EdgeFlips(0.05)), progress=False)
    found = {c["name"]: c for c in out["checks"]}
    assert out["check_flags"] == [], out["checks"]
    assert found["budget_curve"]["ran"] and found["edge_budget_unused"]["ran"]
    assert found["zero_gradients"]["ran"] and found["randomised_forward"]["ran"]
    assert not found["transfer_gap"]["ran"] and not found["gradient_masking"]["ran"]

    class HalfBudgetFlips(RandomFlips):
        """Spends half of the budget it is given (a lazy edge attack)."""

        def edge_budget(self, graph, threat, pairs):
            return super().edge_budget(graph, threat, pairs) // 2

    lazy = HalfBudgetFlips(EdgeFlips(0.1), adapter=GraphAdapter(mask="test"), seed=0)
    with pytest.warns(UserWarning, match="edge_budget_unused"):
        out = evaluate(model, [data], lazy, progress=False, checks=["edge_budget_unused"])
    assert out["check_flags"] == ["edge_budget_unused"]
