"""Image modality: datamodules and reference models."""

from .models import SmallCNN

__all__ = ["SmallCNN"]
