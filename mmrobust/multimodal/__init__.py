"""Multimodal tasks and models: paired spoken + handwritten digits, late-fusion classifiers.

The adapter is :class:`mmrobust.adapters.MultimodalAdapter`, the joint budget :class:`mmrobust.threats.Joint`.
"""

from .data import PairedDigits, PairedDigitsDataModule, dataset_labels, pair_by_class
from .models import FUSIONS, LateFusionClassifier, paired_digits_model

__all__ = ["PairedDigits", "PairedDigitsDataModule", "dataset_labels", "pair_by_class", "FUSIONS",
           "LateFusionClassifier", "paired_digits_model"]
