"""Robust training LightningModules."""

from .classifier import RobustClassifier

__all__ = ["RobustClassifier"]
