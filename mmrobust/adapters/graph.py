"""Adapter for PyTorch Geometric graphs: ``Data`` (node classification) and ``Batch`` (graph or node
classification over several graphs).

Models are called the way their ``forward`` is written (:mod:`mmrobust.adapters.calls`)::

    logits = model(x, edge_index, edge_weight)                 # node classification
    logits = model(x, edge_index, edge_weight, batch=b)        # graph classification (b: node -> graph)
    logits = model(x, edge_index)                              # no weights: feature attacks, DICE, flips
    logits = model(data)                                       # one Data/Batch argument

Edge attacks that relax edges into weights (PRBCD, GRBCD) need a model that uses them; for models whose
convolutions take edge features instead (e.g. GAT) pass ``forward=``: a callable
``forward(model, x, edge_index, edge_weight, batch)`` returning logits, for example
:func:`edge_weight_as_edge_attr` for a ``GATConv(..., edge_dim=1)`` model (what PyG's contrib
``PRBCDAttack`` example does), or :class:`mmrobust.graph.models.GAT`, which accepts ``edge_weight``.

BatchView layout:

* units are graphs: one for ``Data`` (``inputs={"x": x[None]}``), ``G`` for a ``Batch``, whose node features
  are exposed densely as ``(G, max_nodes, F)`` (:func:`torch_geometric.utils.to_dense_batch`) with
  ``masks["x"]`` marking real nodes -- so the spine's PGD runs unchanged as a feature attack;
* outputs are the scored nodes (``mask="test"`` etc.) or, for graph classification, the graphs;
  ``BatchView.unit`` maps them to their graph (all zero for one graph);
* ``BatchView.forward`` and ``BatchView.rebuild`` also accept the optional keys ``"edge_index"`` and
  ``"edge_weight"`` in the inputs dict, which replace the clean structure: this is how edge attacks run
  the model on a perturbed graph and return it.  ``BatchView.meta["graph"]`` is the
  :class:`GraphStructure` edge attacks read (clean edges, node -> graph map, targets, edge counts).
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import Tensor

from .base import BatchAdapter, BatchView, register_adapter
from .calls import graph_call
from .graph_edges import AddedEdgeValues, check_added_edge_values, edge_attribute_keys, perturbed_graph

GraphForward = Callable[..., Tensor]

_SPLITS = ("train", "val", "test")
_DENSE_NODES = "_mmrobust_dense_nodes"


def edge_weight_as_edge_attr(model, x, edge_index, edge_weight=None, batch=None):
    """Hook for models whose convolutions take edge features instead of weights (``GATConv(edge_dim=1)``):
    calls ``model(x, edge_index, edge_attr=edge_weight[:, None])``."""
    if edge_weight is None:
        edge_weight = torch.ones(edge_index.shape[1], device=x.device, dtype=x.dtype)
    kwargs = {} if batch is None else {"batch": batch}
    return model(x, edge_index, edge_attr=edge_weight[:, None], **kwargs)


@dataclass
class GraphStructure:
    """The clean structure of a victim graph, for edge attacks.

    Attributes:
        edge_index: clean ``(2, E)`` edges (both directions of each undirected edge).
        edge_weight: clean ``(E,)`` weights or ``None`` (all ones).
        num_nodes: total number of nodes.
        node_unit: ``(N,)`` graph of each node (zeros for one graph).
        ptr: ``(G + 1,)`` node offsets of the graphs (nodes of a graph are contiguous, as in PyG).
        targets: ``(T,)`` indices of the scored nodes, or ``None`` for graph classification.
        undirected_edges: ``(G,)`` number of distinct undirected non-loop edges per graph (fractional budgets).
        forward_with_edges: ``(x_nodes, edge_index, edge_weight) -> logits`` of the scored outputs.
        nodes_from_inputs: maps ``inputs["x"]`` (unit layout) to ``(N, F)`` node features.
        node_labels: ``(N,)`` labels of all nodes for node classification (label-aware baselines such as
            DICE), else ``None``.

    Example:
        >>> import torch
        >>> from torch_geometric.data import Data
        >>> from torch_geometric.nn import GCNConv
        >>> from mmrobust.adapters import GraphAdapter
        >>> ring = torch.arange(10)
        >>> edge_index = torch.cat([torch.stack([ring, (ring + 1) % 10]), torch.stack([(ring + 1) % 10, ring])], 1)
        >>> data = Data(x=torch.rand(10, 3), edge_index=edge_index, y=torch.zeros(10, dtype=torch.long))
        >>> structure = GraphAdapter(mask=None).victim(GCNConv(3, 2), data).meta["graph"]   # a 10-node ring
        >>> structure.num_nodes, structure.num_units, structure.undirected_edges, structure.target_degree()
        (10, 1, tensor([10]), tensor([20]))
    """

    edge_index: Tensor
    edge_weight: Optional[Tensor]
    num_nodes: int
    node_unit: Tensor
    ptr: Tensor
    targets: Optional[Tensor]
    undirected_edges: Tensor
    forward_with_edges: Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]
    nodes_from_inputs: Callable[[Tensor], Tensor]
    node_labels: Optional[Tensor] = None

    @property
    def num_units(self) -> int:
        return self.ptr.numel() - 1

    def target_degree(self) -> Tensor:
        """Per unit, the summed degree of the target nodes (base of local fractional budgets)."""
        if self.targets is None:
            return self.undirected_edges * 2
        from ..threats.graph import undirected_pairs

        pairs = undirected_pairs(self.edge_index)  # each distinct neighbour once (duplicate edges do not count)
        deg = torch.bincount(pairs.reshape(-1), minlength=self.num_nodes)
        return torch.zeros(self.num_units, dtype=torch.long, device=pairs.device).index_add_(
            0, self.node_unit[self.targets], deg[self.targets])


def _is_batch(data) -> bool:
    from torch_geometric.data import Batch
    return isinstance(data, Batch)


class GraphAdapter(BatchAdapter):
    """Reads PyG ``Data``/``Batch`` objects for attacks.

    Args:
        mask: which nodes are scored (attacked) in node classification: ``"train"``, ``"val"``, ``"test"``
            (the data's ``{mask}_mask``), a boolean mask or index tensor, or ``None`` for all nodes.
            Ignored for graph classification.
        forward: optional ``forward(model, x, edge_index, edge_weight, batch) -> logits`` for models
            called in none of the usual ways (see :func:`edge_weight_as_edge_attr`); by default the call
            follows the model's ``forward`` signature.
        task: ``"node"``, ``"graph"`` or ``"auto"`` (``Data`` -> node; ``Batch`` -> graph when ``y`` has one
            label per graph).
        added_edge_values: what an edge an attack adds holds in the graph's other per-edge attributes
            (``edge_attr``, ``edge_type``, ...): ``"zeros"`` (default), a mapping ``{name: value}`` (a number
            or one edge's row; attributes not named get zeros), or ``"refuse"`` (raise, naming them).  Kept
            edges always keep their own rows, and a perturbed ``Batch`` stays a valid batch
            (:func:`~mmrobust.adapters.graph_edges.perturbed_graph`).

    For a ``Batch`` the victim can select graphs (``BatchView.select``), so early stopping and
    ``AdversarialTraining(ratio < 1)`` work on graph batches as they do on images.

    Example:
        >>> import torch
        >>> from torch_geometric.data import Data
        >>> from torch_geometric.nn import GCNConv
        >>> from mmrobust.adapters import GraphAdapter
        >>> _ = torch.manual_seed(0)
        >>> ring = torch.arange(10)
        >>> edge_index = torch.cat([torch.stack([ring, (ring + 1) % 10]), torch.stack([(ring + 1) % 10, ring])], 1)
        >>> data = Data(x=torch.rand(10, 3), edge_index=edge_index, y=torch.zeros(10, dtype=torch.long),
        ...             test_mask=ring >= 6)
        >>> view = GraphAdapter(mask="test").victim(GCNConv(3, 2), data)   # the 4 test nodes are scored
        >>> view.inputs["x"].shape, view.forward(view.inputs).shape, view.meta["task"]
        (torch.Size([1, 10, 3]), torch.Size([4, 2]), 'node')
    """

    modality = "graph"

    def __init__(self, mask: Union[str, Tensor, None] = "test", forward: Optional[GraphForward] = None,
                 task: str = "auto", added_edge_values: AddedEdgeValues = "zeros"):
        if isinstance(mask, str) and mask not in _SPLITS:
            raise ValueError(f"mask must be one of {list(_SPLITS)}, a bool/index tensor or None, got {mask!r}")
        if task not in ("auto", "node", "graph"):
            raise ValueError(f"task must be one of ['auto', 'graph', 'node'], got {task!r}")
        self.mask = mask
        self.forward_fn = forward
        self.task = task
        self.added_edge_values = check_added_edge_values(added_edge_values)

    def for_stage(self, batch, stage: str) -> "GraphAdapter":
        """Score the ``{stage}_mask`` nodes when the graph has that split (node classification)."""
        if self._task(batch) == "node" and getattr(batch, f"{stage}_mask", None) is not None \
                and self.mask != stage:
            return GraphAdapter(mask=stage, forward=self.forward_fn, task=self.task,
                                added_edge_values=self.added_edge_values)
        return self

    # -- helpers -----------------------------------------------------------------------------------
    def _task(self, data) -> str:
        if self.task != "auto":
            return self.task
        if _is_batch(data) and data.y is not None and data.y.shape[0] == data.num_graphs \
                and data.y.shape[0] != data.num_nodes:
            return "graph"
        return "node"

    def _targets(self, data) -> Tensor:
        n = data.num_nodes
        device = data.x.device
        if self.mask is None:
            return torch.arange(n, device=device)
        m = self.mask
        if isinstance(m, str):
            m = getattr(data, f"{m}_mask", None)
            if m is None:
                raise KeyError(f"the graph has no '{self.mask}_mask'; pass mask=None, a tensor, or add the split")
        m = torch.as_tensor(m, device=device)
        if m.dtype == torch.bool:
            if m.shape != (n,):
                raise ValueError(f"a boolean mask must have shape ({n},) (one entry per node), got {tuple(m.shape)}")
            idx = m.nonzero().squeeze(1)
        else:
            idx = m.long().reshape(-1)
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
                raise ValueError(f"node indices in mask must lie in [0, {n - 1}]")
        if idx.numel() == 0:
            raise ValueError("the mask selects no nodes; nothing to attack")
        return idx


    @staticmethod
    def check(data) -> None:
        x = getattr(data, "x", None)
        if not isinstance(x, Tensor) or x.dim() != 2 or not torch.is_floating_point(x):
            raise TypeError("graph attacks need floating-point node features data.x of shape (num_nodes, F)")
        ei = getattr(data, "edge_index", None)
        if not isinstance(ei, Tensor) or ei.dim() != 2 or ei.shape[0] != 2:
            raise TypeError("data.edge_index must be a (2, E) integer tensor")
        if getattr(data, "y", None) is None:
            raise ValueError("data.y (labels) is needed to score an attack")

    # -- the victim --------------------------------------------------------------------------------
    def victim(self, model, data, *, max_num_nodes: Optional[int] = None) -> BatchView:
        """The victim of ``data``; ``max_num_nodes`` pads a ``Batch``'s dense node layout to that size
        (selected sub-batches keep their parent's layout)."""
        from torch_geometric.utils import to_dense_batch

        self.check(data)
        if max_num_nodes is None:   # a selected sub-batch (and batches rebuilt from it) keeps its parent's layout
            max_num_nodes = data.__dict__.get(_DENSE_NODES)
        task = self._task(data)
        x, edge_index = data.x, data.edge_index
        edge_weight = getattr(data, "edge_weight", None)
        n = data.num_nodes
        device = x.device
        batched = _is_batch(data)
        if batched:
            node_unit = data.batch
            ptr = data.ptr
            x_units, node_mask = to_dense_batch(x, node_unit, max_num_nodes=max_num_nodes)
            masks = {"x": node_mask[..., None].to(x.dtype)}

            def nodes_from_inputs(xu: Tensor) -> Tensor:
                return xu[node_mask]
        else:
            node_unit = torch.zeros(n, dtype=torch.long, device=device)
            ptr = torch.tensor([0, n], device=device)
            x_units, masks = x[None], {}

            def nodes_from_inputs(xu: Tensor) -> Tensor:
                return xu[0]

        batch_vec = node_unit if task == "graph" else None
        if task == "graph":
            targets, y, unit = None, data.y.reshape(-1).long(), None
        else:
            targets = self._targets(data)
            y = data.y.reshape(-1)[targets].long()
            unit = node_unit[targets]

        edge_keys = edge_attribute_keys(data)
        call = graph_call(model) if self.forward_fn is None else None
        if call is not None:
            call.edge_keys = [k for k in edge_keys if k != "edge_weight"]
            if self.added_edge_values != "refuse":
                call.forward_edge_values = self.added_edge_values

        def forward_with_edges(xn: Tensor, ei: Tensor, ew: Optional[Tensor]) -> Tensor:
            if call is None:
                out = self.forward_fn(model, xn, ei, ew, batch_vec)
            else:
                out = call(data, xn, ei, ew, batch_vec, clean_weight=edge_weight)
            return out if targets is None else out[targets]

        def forward(inputs: Dict[str, Tensor]) -> Tensor:
            return forward_with_edges(nodes_from_inputs(inputs["x"]), inputs.get("edge_index", edge_index),
                                      inputs.get("edge_weight", edge_weight))

        def rebuild(inputs: Dict[str, Tensor]) -> Any:
            if "edge_index" in inputs and inputs["edge_index"] is not edge_index:
                out = perturbed_graph(data, inputs["edge_index"], inputs.get("edge_weight"),
                                      added_edge_values=self.added_edge_values, edge_keys=edge_keys)
            else:
                out = copy.copy(data)
            out.x = nodes_from_inputs(inputs["x"])
            return out

        select = None
        if batched and getattr(data, "_slice_dict", None) is not None and (
                task == "graph" or self.mask is None or isinstance(self.mask, str)):
            pad = x_units.shape[1]

            def select(index: Tensor) -> BatchView:
                from torch_geometric.data import Batch

                sub = Batch.from_data_list(data.index_select(index.to("cpu")))
                object.__setattr__(sub, _DENSE_NODES, pad)   # not a graph attribute: outside PyG's store
                return self.victim(model, sub)

        from ..threats.graph import count_undirected_edges

        undirected = count_undirected_edges(edge_index, node_unit, ptr.numel() - 1)
        structure = GraphStructure(edge_index=edge_index, edge_weight=edge_weight, num_nodes=n,
                                   node_unit=node_unit, ptr=ptr, targets=targets, undirected_edges=undirected,
                                   forward_with_edges=forward_with_edges, nodes_from_inputs=nodes_from_inputs,
                                   node_labels=None if task == "graph" else data.y.reshape(-1))
        return BatchView(inputs={"x": x_units}, target=y, forward=forward, rebuild=rebuild, unit=unit, masks=masks,
                      select=select, meta={"graph": structure, "task": task})

    def batch_size(self, data) -> int:
        if self._task(data) == "graph":
            return int(data.num_graphs)
        return int(self._targets(data).numel())


def _is_pyg(batch) -> bool:
    if "torch_geometric" not in sys.modules:  # no PyG object can exist; image/audio use never imports PyG
        return False
    from torch_geometric.data import Data
    return isinstance(batch, Data)


register_adapter(_is_pyg, lambda batch: GraphAdapter(), priority=10)
