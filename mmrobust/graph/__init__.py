"""The graph modality: PyG datasets, reference models and (adversarial) training for node classification."""

from .certify import SparseCertificate, SparseSmoothing
from .data import (KarateClubDataModule, PlanetoidDataModule, SBMDataModule, TUDataModule, inductive_split,
                   karate_club, load_planetoid, sbm_graph)
from .defenses import GCNSVD, RGCN, GNNGuard
from .models import GAT, GCN, APPNPNet, JaccardGCN
from .poisoning import MetaPRBCD, PoisonResult, poison, transfer_poison
from .soft_median import SoftMedianGCN, SoftMedianGDC
from .training import (NodeClassifier, node_accuracy, pseudo_label, robust_accuracy_curve,
                       train_node_classifier)

__all__ = ["PlanetoidDataModule", "KarateClubDataModule", "SBMDataModule", "TUDataModule", "inductive_split",
           "karate_club", "load_planetoid", "sbm_graph", "GCN", "GAT", "APPNPNet", "JaccardGCN", "GNNGuard", "RGCN",
           "GCNSVD", "SoftMedianGCN", "SoftMedianGDC", "SparseSmoothing", "SparseCertificate", "NodeClassifier",
           "node_accuracy", "pseudo_label", "robust_accuracy_curve", "train_node_classifier",
           # poisoning (training-time attacks: they train models, so they live with the graph models)
           "MetaPRBCD", "PoisonResult", "poison", "transfer_poison"]
