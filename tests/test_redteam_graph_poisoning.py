"""Red team: MetaPRBCD keeps no state of a call and refuses what it cannot return before training anything."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_geometric")

from mmrobust.graph.data import sbm_graph  # noqa: E402
from mmrobust.graph.models import GCN  # noqa: E402
from mmrobust.graph.poisoning import MetaPRBCD  # noqa: E402
from mmrobust.threats import EdgeFlips  # noqa: E402

SMALL = dict(inner_steps=3, epochs=2, epochs_resampling=1, block_size=300, clean_epochs=5, final_samples=2)


def test_meta_prbcd_leaves_the_attack_object_as_it_was():
    data = sbm_graph(num_nodes=40, num_classes=2, seed=0)
    data.x = (data.x > 2.0).float()       # 9 % non-zero: the attack takes its sparse-feature path
    attack = MetaPRBCD(EdgeFlips(0.1), **SMALL)
    before = dict(vars(attack))
    first = attack(data)
    assert vars(attack).keys() == before.keys() and all(vars(attack)[k] is v for k, v in before.items())
    again = attack(data)
    assert torch.equal(first.flipped_edges, again.flipped_edges)


def test_meta_prbcd_refuses_edge_attr_before_training_a_surrogate():
    data = sbm_graph(num_nodes=40, num_classes=2, seed=0)
    data.edge_attr = torch.ones(data.edge_index.shape[1], 3)
    built = []

    def surrogate(f, c):
        built.append(1)
        return GCN(f, c, hidden=8, dropout=0.0)

    with pytest.raises(ValueError, match="edge_attr"):
        MetaPRBCD(EdgeFlips(0.1), surrogate=surrogate, **SMALL)(data)
    assert not built   # the old check ran after the whole attack
