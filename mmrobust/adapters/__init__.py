"""Batch adapters: one per batch convention (modality); see :mod:`mmrobust.adapters.base`."""

from .base import BatchAdapter, Victim, infer_adapter, register_adapter
from .tensor import ImageAdapter, TensorAdapter, replace_entries, select_examples
from .audio import WaveformAdapter
from .multimodal import MultimodalAdapter

__all__ = ["BatchAdapter", "Victim", "infer_adapter", "register_adapter", "TensorAdapter", "ImageAdapter",
           "replace_entries", "select_examples",
           "WaveformAdapter", "MultimodalAdapter"]
from .graph import GraphAdapter, GraphStructure, edge_weight_as_edge_attr  # noqa: E402  (PyG Data/Batch)
__all__ += ["GraphAdapter", "GraphStructure", "edge_weight_as_edge_attr"]
