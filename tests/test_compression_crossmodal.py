"""Compression training losses and callbacks on graph and speech batches (found by the cross-modal benchmarks)."""

import pytorch_lightning as pl
import torch
from torch import nn

from _reliability_common import LitClassifier
from mmrobust.adapters import WaveformAdapter
from mmrobust.attacks import PGD
from mmrobust.audio import M5, SyntheticSpeechDataModule
from mmrobust.callbacks import AdversarialTraining
from mmrobust.objectives import batch_cross_entropy
from mmrobust.compression import hydra_prune, pruning_mask, weight_sparsity
from mmrobust.graph import GCN, sbm_graph
from mmrobust.threats import SNRBall


def test_default_training_loss_on_a_node_graph_never_sees_test_labels():
    # RandBET's and HYDRA's default loss: the inferred GraphAdapter scores test nodes, a training loss must not
    data = sbm_graph(num_nodes=60, seed=0)
    torch.manual_seed(0)
    model = GCN(data.num_features, 3, hidden=8).eval()
    loss = batch_cross_entropy(model, data)
    with torch.no_grad():
        out = model(data.x, data.edge_index)
    expected = nn.functional.cross_entropy(out[data.train_mask], data.y[data.train_mask])
    assert torch.allclose(loss, expected)
    scrambled = data.clone()
    scrambled.y = data.y.clone()
    scrambled.y[~data.train_mask] = (data.y[~data.train_mask] + 1) % 3
    assert torch.allclose(batch_cross_entropy(model, scrambled), loss)


def test_hydra_scores_on_a_node_graph_ignore_test_labels():
    data = sbm_graph(num_nodes=60, seed=0)
    scrambled = data.clone()
    scrambled.y = data.y.clone()
    scrambled.y[~data.train_mask] = (data.y[~data.train_mask] + 1) % 3
    masks = []
    for graph in (data, scrambled):
        torch.manual_seed(0)
        model = GCN(data.num_features, 3, hidden=8)
        hydra_prune(model, [graph], 0.5, epochs=20, lr=1.0)
        assert abs(weight_sparsity(model) - 0.5) < 0.02
        masks.append([pruning_mask(conv.lin).clone() for conv in model.convs])
    for a, b in zip(*masks):
        assert torch.equal(a, b)


def test_augmenting_speech_datamodule_works_with_adversarial_training():
    # the datamodule's train-time augmentation used to return a tuple, which the callback cannot update in place
    dm = SyntheticSpeechDataModule(num_train=16, num_val=4, num_test=4, num_classes=4, batch_size=8,
                                   max_length=2000, augment=True)
    seen = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch[0].clone())

    at = AdversarialTraining(PGD(SNRBall(30), steps=2, seed=0, adapter=WaveformAdapter(sample_rate=8000)))
    trainer = pl.Trainer(max_steps=2, callbacks=[at, Record()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         limit_val_batches=0, num_sanity_val_steps=0)
    pl.seed_everything(0)
    trainer.fit(LitClassifier(M5(4, width=4), 1e-3), datamodule=dm)
    assert at.adversarial_steps == 2
    assert len(seen) == 2 and all(torch.isfinite(w).all() for w in seen)
