"""Graph datasets, reference models, adversarial training (plain loop and Lightning callback), curves."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_geometric")

import pytorch_lightning as pl  # noqa: E402
from torch_geometric.data import Batch, Data  # noqa: E402

from mmrobust.adapters.graph import GraphAdapter  # noqa: E402
from mmrobust.attacks import PGD  # noqa: E402
from mmrobust.attacks import PRBCD  # noqa: E402
from mmrobust.callbacks.adversarial import AdversarialTraining  # noqa: E402
from mmrobust.graph import (GAT, GCN, APPNPNet, JaccardGCN, NodeClassifier, SBMDataModule, TUDataModule,  # noqa: E402
                            inductive_split, karate_club, load_planetoid, node_accuracy, pseudo_label,
                            robust_accuracy_curve, sbm_graph, train_node_classifier)
from mmrobust.threats.graph import EdgeFlips, FeatureBall  # noqa: E402


def test_karate_club_is_offline_and_split():
    data = karate_club()
    assert data.num_nodes == 34 and int(data.train_mask.sum()) == 4
    assert not bool((data.train_mask & data.test_mask).any())
    assert bool((data.train_mask | data.test_mask).all())


def test_sbm_is_deterministic_and_undirected():
    a, b = sbm_graph(seed=3), sbm_graph(seed=3)
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.x, b.x)
    from torch_geometric.utils import is_undirected
    assert is_undirected(a.edge_index)
    assert not torch.equal(a.edge_index, sbm_graph(seed=4).edge_index)


def test_sbm_test_fraction_leaves_unlabelled_nodes_and_keeps_the_default_split():
    full, part = sbm_graph(num_nodes=100, seed=1), sbm_graph(num_nodes=100, seed=1, test_fraction=0.3)
    assert torch.equal(full.edge_index, part.edge_index) and torch.equal(full.train_mask, part.train_mask)
    assert int(part.test_mask.sum()) == 30 and bool((part.test_mask <= full.test_mask).all())
    assert int((~(part.train_mask | part.val_mask | part.test_mask)).sum()) == 100 - 30 - 30 - 10
    with pytest.raises(ValueError, match="test_fraction"):
        sbm_graph(num_nodes=100, train_fraction=0.5, val_fraction=0.2, test_fraction=0.5)


def test_pseudo_label_fills_unlabelled_nodes_only_and_leaves_the_graph_alone():
    data = sbm_graph(num_nodes=90, seed=0, train_fraction=0.2, test_fraction=0.3)
    y, train = data.y.clone(), data.train_mask.clone()
    model = GCN(data.num_features, 3, hidden=8).train()
    out = pseudo_label(model, data)
    assert model.training and torch.equal(data.y, y) and torch.equal(data.train_mask, train)
    unlabelled = ~(data.train_mask | data.val_mask)
    assert torch.equal(out.train_mask, data.train_mask | unlabelled)
    pred = model.eval()(data.x, data.edge_index).argmax(1)
    assert torch.equal(out.y[unlabelled], pred[unlabelled]) and torch.equal(out.y[~unlabelled], y[~unlabelled])


def test_inductive_split_hides_test_nodes():
    data = sbm_graph(num_nodes=90, seed=0)
    train, full = inductive_split(data)
    assert full is data
    assert train.num_nodes == int((~data.test_mask).sum())
    assert int(train.edge_index.max()) < train.num_nodes
    kept = (~data.test_mask).nonzero().squeeze(1)
    r, c = data.edge_index
    inside = (~data.test_mask[r]) & (~data.test_mask[c])
    assert train.edge_index.shape[1] == int(inside.sum())
    assert torch.equal(train.y, data.y[kept]) and torch.equal(train.train_mask, data.train_mask[kept])


@pytest.mark.parametrize("make", [lambda f, c: GAT(f, c, hidden=8, heads=2, dropout=0.1),
                                  lambda f, c: APPNPNet(f, c, hidden=16, k=5),
                                  lambda f, c: JaccardGCN(f, c, threshold=0.0, hidden=16)])
def test_reference_models_are_attackable(make):
    data = sbm_graph(num_nodes=90, num_classes=3, p_in=0.15, p_out=0.01, feature_noise=1.5, seed=0)
    torch.manual_seed(0)
    model = make(data.num_features, 3)
    train_node_classifier(model, data, epochs=80, lr=0.02)
    clean = node_accuracy(model, data)
    result = PRBCD(EdgeFlips(0.2), block_size=1500, epochs=30, epochs_resampling=20,
                   adapter=GraphAdapter(mask="test"), seed=0)(model, data)
    assert clean > 0.65
    assert result.adv_correct.float().mean().item() < clean - 0.1


def test_jaccard_drops_dissimilar_edges():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    edge_index = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    model = JaccardGCN(2, 2, threshold=0.5, hidden=4, dropout=0.0).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        kept = model(x, edge_index)
        ref = GCN(2, 2, hidden=4, dropout=0.0).eval()
        ref.load_state_dict({k: v for k, v in model.state_dict().items()})
        # the (1, 2) edge has Jaccard 0 and must behave as absent
        assert torch.allclose(kept, ref(x, edge_index[:, :2]), atol=1e-6)


def test_feature_adversarial_training_improves_feature_robustness():
    data = sbm_graph(num_nodes=150, num_classes=3, p_in=0.15, p_out=0.01, feature_noise=1.0, seed=2)
    threat = FeatureBall(0.3, "linf")
    adapter_test = GraphAdapter(mask="test")

    def robust(model):
        return PGD(threat, steps=10, adapter=adapter_test, seed=0)(model, data).robust.float().mean().item()

    torch.manual_seed(0)
    normal = GCN(data.num_features, 3, hidden=16)
    train_node_classifier(normal, data, epochs=100, lr=0.02)
    torch.manual_seed(0)
    robust_model = GCN(data.num_features, 3, hidden=16)
    train_node_classifier(robust_model, data, epochs=100, lr=0.02,
                          attack=PGD(threat, steps=5, adapter=GraphAdapter(mask="train"), seed=0))
    assert robust(robust_model) > robust(normal) + 0.08   # measured 0.81 vs 0.66


def test_robust_accuracy_curve_uses_spine_metrics():
    data = sbm_graph(num_nodes=90, num_classes=3, p_in=0.15, p_out=0.01, feature_noise=1.5, seed=0)
    torch.manual_seed(0)
    model = GCN(data.num_features, 3, hidden=16)
    train_node_classifier(model, data, epochs=80, lr=0.02)
    rows = robust_accuracy_curve(
        model, data, lambda b: PRBCD(EdgeFlips(b), block_size=1500, epochs=20, epochs_resampling=15,
                                     adapter=GraphAdapter(mask="test"), seed=0), [0.0, 0.1, 0.3])
    assert [r["budget"] for r in rows] == [0.0, 0.1, 0.3]
    assert rows[0]["robust_accuracy"] == pytest.approx(rows[0]["clean_accuracy"])
    assert rows[0]["flips"] == 0
    assert rows[2]["robust_accuracy"] < rows[0]["robust_accuracy"] - 0.1
    assert all(r["robust_accuracy"] <= r["clean_accuracy"] for r in rows)


def test_lightning_graph_adversarial_training_with_callback(tmp_path):
    dm = SBMDataModule(inductive=True, num_nodes=90, num_classes=3, p_in=0.15, p_out=0.01, seed=0)
    dm.setup()
    edges_before = dm.train_graph.edge_index.clone()
    torch.manual_seed(0)
    module = NodeClassifier(GCN(dm.num_features, dm.num_classes, hidden=8), lr=0.02)
    attack = PRBCD(EdgeFlips(0.1), block_size=800, epochs=5, epochs_resampling=3, final_samples=2,
                   adapter=GraphAdapter(mask="train"), seed=0)
    callback = AdversarialTraining(attack)
    trainer = pl.Trainer(max_epochs=3, callbacks=[callback], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert callback.adversarial_steps == 3
    assert torch.equal(dm.train_graph.edge_index, edges_before)   # the dataset's graph is never modified
    assert dm.train_graph.num_nodes < dm.data.num_nodes            # inductive: test nodes unseen in training
    assert "train/loss" in trainer.callback_metrics


def test_tu_datamodule_with_in_memory_graphs_and_graph_classifier():
    graphs = [Data(x=torch.randn(6, 3), edge_index=torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]]),
                   y=torch.tensor([i % 2])) for i in range(10)]
    dm = TUDataModule(dataset=graphs, batch_size=4, val_fraction=0.2, test_fraction=0.2)
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, Batch) and batch.num_graphs == 4
    model = GCN(3, 2, hidden=8, graph_level=True).eval()
    assert model(batch.x, batch.edge_index, batch=batch.batch).shape == (4, 2)
    with pytest.raises(FileNotFoundError, match="download"):
        TUDataModule(name="MUTAG", root="/nonexistent_dir").setup()


def test_planetoid_from_offline_copy(shared_data, tmp_path):
    data = load_planetoid("Cora", tmp_path, source=shared_data / "planetoid")
    assert data.num_nodes == 2708 and int(data.test_mask.sum()) == 1000
    with pytest.raises(ValueError, match="name"):
        load_planetoid("Reddit", tmp_path)


class _EdgeAttrGAT(torch.nn.Module):
    """A user's GAT that takes edge features, not edge weights (attacked through the adapter hook)."""

    def __init__(self, f, c):
        super().__init__()
        from torch_geometric.nn import GATConv
        self.conv1 = GATConv(f, 16, edge_dim=1, fill_value=1.0)
        self.conv2 = GATConv(16, c, edge_dim=1, fill_value=1.0)

    def forward(self, x, edge_index, edge_attr=None):
        return self.conv2(self.conv1(x, edge_index, edge_attr).relu(), edge_index, edge_attr)


def test_models_without_edge_weights_are_attacked_through_the_hook():
    from mmrobust.adapters.graph import edge_weight_as_edge_attr

    data = sbm_graph(num_nodes=90, num_classes=3, p_in=0.15, p_out=0.01, feature_noise=1.5, seed=0)
    torch.manual_seed(0)
    model = _EdgeAttrGAT(data.num_features, 3)
    opt = torch.optim.Adam(model.parameters(), 0.02)
    ones = torch.ones(data.edge_index.shape[1], 1)
    for _ in range(80):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data.x, data.edge_index, ones)[data.train_mask],
                                          data.y[data.train_mask]).backward()
        opt.step()
    adapter = GraphAdapter(mask="test", forward=edge_weight_as_edge_attr)
    result = PRBCD(EdgeFlips(0.2), block_size=1500, epochs=30, epochs_resampling=20, adapter=adapter,
                   seed=0)(model.eval(), data)
    assert result.clean_correct.float().mean() > 0.7
    assert result.adv_correct.float().mean() < result.clean_correct.float().mean() - 0.1


def test_adversarial_training_refuses_mixing_edge_flips():
    from mmrobust.attacks import PRBCD
    from mmrobust.callbacks import AdversarialTraining
    from mmrobust.threats import EdgeFlips

    with pytest.raises(ValueError, match="ratio must be 1 for PRBCD with edge flips"):
        AdversarialTraining(PRBCD(EdgeFlips(0.05)), ratio=0.5)
    AdversarialTraining(PRBCD(EdgeFlips(0.05)), ratio=1.0)


def test_training_code_scores_training_nodes_and_evaluation_the_split_of_its_stage():
    """Without an explicit adapter, training-time attacks and losses read a graph's train_mask nodes and
    validation reads val_mask nodes: test labels never reach training or model selection."""
    from mmrobust.adapters import GraphAdapter, infer_adapter, stage_adapter
    from mmrobust.attacks import PGD
    from mmrobust.threats import FeatureBall

    data = sbm_graph(num_nodes=60, seed=0)
    assert infer_adapter(data).mask == "test"  # evaluation default
    assert stage_adapter(data, "train").mask == "train"
    assert stage_adapter(data, "val").mask == "val"
    explicit = GraphAdapter(mask="test")
    assert stage_adapter(data, "train", explicit) is explicit  # the user's choice wins
    attack = PGD(FeatureBall(0.1), steps=1)
    assert attack.for_stage(data, "train").adapter.mask == "train"
    with_adapter = PGD(FeatureBall(0.1), steps=1, adapter=explicit)
    assert with_adapter.for_stage(data, "train") is with_adapter
    with pytest.raises(ValueError, match="stage must be one of"):
        stage_adapter(data, "fit")
