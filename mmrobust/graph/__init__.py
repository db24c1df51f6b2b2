"""The graph modality: PyG datasets, reference models and (adversarial) training for node classification."""

from .data import (KarateClubDataModule, PlanetoidDataModule, SBMDataModule, TUDataModule, inductive_split,
                   karate_club, load_planetoid, sbm_graph)
from .models import GAT, GCN, APPNPNet, JaccardGCN
from .training import NodeClassifier, node_accuracy, robust_accuracy_curve, train_node_classifier

__all__ = ["PlanetoidDataModule", "KarateClubDataModule", "SBMDataModule", "TUDataModule", "inductive_split",
           "karate_club", "load_planetoid", "sbm_graph", "GCN", "GAT", "APPNPNet", "JaccardGCN", "NodeClassifier",
           "node_accuracy", "robust_accuracy_curve", "train_node_classifier"]
