"""Image modality: datamodules and reference models."""

from .data import CIFAR10DataModule, DigitsDataModule, FashionMNISTDataModule, MNISTDataModule
from .models import InputNormalization, PreActResNet18, SmallCNN, StridedCNN, WideResNet
from .normalization import normalized_threat

__all__ = ["SmallCNN", "StridedCNN", "PreActResNet18", "WideResNet", "InputNormalization", "normalized_threat",
           "DigitsDataModule",
           "MNISTDataModule", "FashionMNISTDataModule", "CIFAR10DataModule"]
