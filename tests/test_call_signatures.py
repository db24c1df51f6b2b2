"""Models written the usual ways are attacked as written (issue 19): the PyG tutorial GCN
``forward(x, edge_index)``, weighted ``forward(x, edge_index, edge_weight=None)``, ``forward(data)``,
graph classification ``forward(x, edge_index, batch)``; fusion models ``forward(batch)`` and
``forward(image=..., audio=...)``. Where a call cannot work, the error says what to write."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmrobust import PGD, LinfBall, evaluate
from mmrobust.adapters import MultimodalAdapter

pytest.importorskip("torch_geometric")

from torch_geometric.data import Batch, Data  # noqa: E402
from torch_geometric.nn import GCNConv, global_mean_pool  # noqa: E402

from mmrobust.adapters.graph import GraphAdapter  # noqa: E402
from mmrobust.attacks.graph_baselines import DICE  # noqa: E402
from mmrobust.attacks.prbcd import PRBCD  # noqa: E402
from mmrobust.graph.data import sbm_graph  # noqa: E402
from mmrobust.threats.graph import EdgeFlips, FeatureBall  # noqa: E402


class TutorialGCN(nn.Module):
    """The PyG tutorial's GCN: no edge weights."""

    def __init__(self, f, c):
        super().__init__()
        self.conv1, self.conv2 = GCNConv(f, 16), GCNConv(16, c)

    def forward(self, x, edge_index):
        return self.conv2(self.conv1(x, edge_index).relu(), edge_index)


class WeightedGCN(TutorialGCN):
    def forward(self, x, edge_index, edge_weight=None):
        return self.conv2(self.conv1(x, edge_index, edge_weight).relu(), edge_index, edge_weight)


class DataGCN(TutorialGCN):
    def forward(self, data):
        x, ei, ew = data.x, data.edge_index, data.edge_weight
        return self.conv2(self.conv1(x, ei, ew).relu(), ei, ew)


class DataGCNNoWeights(TutorialGCN):
    def forward(self, data):
        return self.conv2(self.conv1(data.x, data.edge_index).relu(), data.edge_index)


class GraphClassifier(TutorialGCN):
    """PyG's graph-classification tutorial layout: ``forward(x, edge_index, batch)``."""

    def forward(self, x, edge_index, batch):
        return global_mean_pool(self.conv2(self.conv1(x, edge_index).relu(), edge_index), batch)


@pytest.fixture(scope="module")
def graph():
    return sbm_graph(num_nodes=60, num_classes=3, p_in=0.2, p_out=0.02, feature_noise=1.0, seed=0)


def pairs(edge_index):
    return {(min(a, b), max(a, b)) for a, b in edge_index.t().tolist()}


def build(cls, data, seed=0):
    torch.manual_seed(seed)
    return cls(data.num_features, 3).eval()


def prbcd(budget=0.1):
    return PRBCD(EdgeFlips(budget), epochs=20, epochs_resampling=15, block_size=1000, seed=0,
                 adapter=GraphAdapter(mask="test"))


def test_tutorial_gcn_runs_feature_attacks_and_discrete_flips(graph):
    model = build(TutorialGCN, graph)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = evaluate(model, [graph], PGD(FeatureBall(0.1), steps=5, adapter=GraphAdapter(mask="test")))
    assert 0 <= out["robust_accuracy"] <= out["clean_accuracy"]
    result = DICE(EdgeFlips(5), seed=0, adapter=GraphAdapter(mask="test"))(model, graph)
    assert len(pairs(graph.edge_index) ^ pairs(result.batch.edge_index)) == 5
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_tutorial_gcn_under_prbcd_says_what_to_write(graph):
    model = build(TutorialGCN, graph)
    with pytest.raises(TypeError) as err:
        prbcd()(model, graph)
    msg = str(err.value)
    assert "TutorialGCN.forward(x, edge_index)" in msg and "edge_weight=None" in msg
    assert "GraphAdapter(forward=" in msg


def test_weighted_and_data_signatures_give_the_same_attack(graph):
    """The same weights called as ``(x, edge_index, edge_weight)`` and as ``(data)`` must give the same
    perturbed graph: the call only changes how the model is reached."""
    weighted, data_model = build(WeightedGCN, graph), build(DataGCN, graph)
    data_model.load_state_dict(weighted.state_dict())
    a, b = prbcd()(weighted, graph), prbcd()(data_model, graph)
    assert torch.equal(a.batch.edge_index, b.batch.edge_index)
    assert torch.equal(a.success, b.success)
    assert pairs(a.batch.edge_index) != pairs(graph.edge_index)


def test_data_model_that_ignores_edge_weight_is_refused_under_prbcd(graph):
    with pytest.raises(TypeError, match=r"ignores data.edge_weight.*data.edge_weight\)"):
        prbcd()(build(DataGCNNoWeights, graph), graph)


def test_graph_classification_with_batch_argument(graph):
    graphs = [sbm_graph(num_nodes=20, num_classes=3, p_in=0.3, p_out=0.05, seed=s) for s in range(4)]
    for i, g in enumerate(graphs):
        g.y = torch.tensor([i % 3])
    batch = Batch.from_data_list([Data(x=g.x, edge_index=g.edge_index, y=g.y) for g in graphs])
    model = build(GraphClassifier, batch)
    out = evaluate(model, [batch], PGD(FeatureBall(0.1), steps=3, adapter=GraphAdapter()))
    assert out["num_examples"] == 4
    assert 0 <= out["robust_accuracy"] <= out["clean_accuracy"]


# -- multimodal ------------------------------------------------------------------------------------
class KwargsFusion(nn.Module):
    def __init__(self):
        super().__init__()
        self.img, self.aud = nn.Linear(16, 3), nn.Linear(32, 3)

    def forward(self, image, audio):
        return self.img(image.flatten(1)) + self.aud(audio.flatten(1))


class DictFusion(KwargsFusion):
    def forward(self, batch):
        return self.img(batch["image"].flatten(1)) + self.aud(batch["audio"].flatten(1))


class PositionalFusion(KwargsFusion):
    def forward(self, x, a):
        return self.img(x.flatten(1)) + self.aud(a.flatten(1))


def fusion_batch():
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(8, 1, 4, 4, generator=g), "audio": torch.rand(8, 32, generator=g) * 0.5,
            "y": torch.randint(0, 3, (8,), generator=g)}


def test_dict_and_kwargs_fusion_models_give_the_same_attack():
    from mmrobust.threats import Joint, SNRBall

    kw = KwargsFusion()
    dm = DictFusion()
    dm.load_state_dict(kw.state_dict())
    batch = fusion_batch()
    joint = Joint({"image": LinfBall(0.1, lower=0, upper=1), "audio": SNRBall(20)})
    a = PGD(joint, steps=5, seed=0)(kw, batch)
    b = PGD(joint, steps=5, seed=0)(dm, batch)
    assert torch.equal(a.batch["image"], b.batch["image"]) and torch.equal(a.batch["audio"], b.batch["audio"])
    assert not torch.equal(a.batch["image"], batch["image"])


def test_positional_fusion_model_error_names_the_adapter_to_write():
    with pytest.raises(TypeError) as err:
        PGD(LinfBall(0.1), steps=2, adapter=MultimodalAdapter())(PositionalFusion(), fusion_batch())
    msg = str(err.value)
    assert "PositionalFusion.forward(x, a)" in msg
    assert "MultimodalAdapter(forward=lambda model, inputs, batch: model(inputs['image'], inputs['audio']))" in msg
    out = PGD(LinfBall(0.1, lower=0, upper=1), steps=2, adapter=MultimodalAdapter(
        inputs=["image"], forward=lambda model, inputs, batch: model(inputs["image"], batch["audio"])))(
        PositionalFusion(), fusion_batch())
    assert out.batch["image"].shape == (8, 1, 4, 4)


def test_multimodal_call_argument_is_checked():
    with pytest.raises(ValueError, match="call must be 'auto'"):
        MultimodalAdapter(call="positional")
