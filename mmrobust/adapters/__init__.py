"""Batch adapters: one per batch convention (modality); see :mod:`mmrobust.adapters.base`."""

from .audio import WaveformAdapter
from .base import STAGES, BatchAdapter, BatchView, Victim, infer_adapter, register_adapter, stage_adapter
from .graph import GraphAdapter, GraphStructure, edge_weight_as_edge_attr
from .multimodal import MultimodalAdapter
from .predicted import PredictedLabelAdapter
from .tensor import ImageAdapter, TensorAdapter, replace_entries, select_examples

__all__ = [
    "BatchAdapter", "BatchView", "Victim", "infer_adapter", "register_adapter", "stage_adapter", "STAGES",
    "TensorAdapter", "ImageAdapter", "replace_entries", "select_examples",
    "WaveformAdapter", "MultimodalAdapter", "PredictedLabelAdapter", "GraphAdapter", "GraphStructure", "edge_weight_as_edge_attr",
]
