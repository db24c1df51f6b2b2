"""A perturbed PyG graph that is still a whole graph.

An edge attack returns a new ``edge_index`` (and, for weighted graphs, ``edge_weight``).  Every other
per-edge attribute of the user's graph (``edge_attr``, ``edge_type``, ...) must follow: a kept edge keeps
its own row, an added edge gets a value the user chose (:class:`~mmrobust.adapters.graph.GraphAdapter`'s
``added_edge_values``), a deleted edge's row goes.  For a PyG ``Batch`` the edges of each graph must also
stay contiguous and the slice bookkeeping (``_slice_dict`` of every edge attribute) must describe the new
edge counts, so that ``to_data_list()`` and ``index_select`` return whole graphs whose node indices lie
inside each graph.  Node-level bookkeeping (``ptr``, ``batch``, ``_inc_dict``) is unchanged: edge attacks
add and delete edges, never nodes.
"""

from __future__ import annotations

import copy
from numbers import Real
from typing import Any, List, Mapping, Optional, Union

import torch
from torch import Tensor

#: ``"zeros"``, ``"refuse"`` or a mapping from attribute name to the value (a number or a row tensor)
#: that an added edge gets for that attribute (unnamed attributes get zeros).
AddedEdgeValues = Union[str, Mapping[str, Union[Real, Tensor]]]


def check_added_edge_values(values: AddedEdgeValues) -> AddedEdgeValues:
    if isinstance(values, str):
        if values not in ("zeros", "refuse"):
            raise ValueError(f"added_edge_values must be 'zeros', 'refuse' or a mapping {{attribute: value}}, "
                             f"got {values!r}")
        return values
    if not isinstance(values, Mapping) or not all(isinstance(k, str) for k in values):
        raise TypeError(f"added_edge_values must be 'zeros', 'refuse' or a mapping {{attribute name: value}}, "
                        f"got {type(values).__name__}")
    return dict(values)


def edge_attribute_keys(data: Any) -> List[str]:
    """Names of the per-edge attributes of ``data`` other than ``edge_index`` (PyG's own test)."""
    return [k for k in data.keys() if k != "edge_index" and data.is_edge_attr(k)]


def match_edges(clean: Tensor, new: Tensor, num_nodes: int) -> Tensor:
    """For every edge of ``new``, the position of the same directed edge in ``clean``, or ``-1`` if it was
    added.  Parallel edges are matched in order (the k-th copy in ``new`` to the k-th in ``clean``)."""
    clean_keys = clean[0] * num_nodes + clean[1]
    new_keys = new[0] * num_nodes + new[1]
    c_sorted, c_perm = torch.sort(clean_keys, stable=True)
    n_sorted, n_perm = torch.sort(new_keys, stable=True)
    # occurrence rank of each new edge among the new edges with the same key
    first = torch.searchsorted(n_sorted, n_sorted, side="left")
    rank = torch.arange(n_sorted.numel(), device=new.device) - first
    lo = torch.searchsorted(c_sorted, n_sorted, side="left")
    hi = torch.searchsorted(c_sorted, n_sorted, side="right")
    found = lo + rank < hi
    pos = torch.where(found, c_perm[(lo + rank).clamp_max(max(c_perm.numel() - 1, 0))],
                      torch.full_like(lo, -1))
    source = torch.empty_like(pos)
    source[n_perm] = pos
    return source


def _added_rows(key: str, value: Tensor, cat_dim: int, count: int, added: AddedEdgeValues) -> Tensor:
    shape = list(value.shape)
    shape[cat_dim] = count
    if isinstance(added, Mapping) and key in added:
        fill = torch.as_tensor(added[key], dtype=value.dtype, device=value.device)
        row_shape = shape[:cat_dim] + [1] + shape[cat_dim + 1:]
        try:
            return fill.reshape(row_shape if fill.numel() > 1 else [1] * len(shape)).expand(shape).clone()
        except RuntimeError as e:
            raise ValueError(f"added_edge_values[{key!r}] has {fill.numel()} entries; one edge's row of "
                             f"{key!r} has shape {tuple(row_shape)}") from e
    if key == "edge_weight":   # an added edge is a whole edge, as the attacks' relaxation assumes
        return torch.ones(shape, dtype=value.dtype, device=value.device)
    return torch.zeros(shape, dtype=value.dtype, device=value.device)


def edge_rows(data: Any, edge_index: Tensor, keys: List[str],
              added_edge_values: AddedEdgeValues = "zeros", owner: str = "GraphAdapter") -> dict:
    """The rows of each per-edge attribute in ``keys`` for the edges ``edge_index``: a kept edge's own row, an
    added edge's row from ``added_edge_values`` (``"refuse"`` raises, naming the attributes and ``owner``, the
    class whose ``added_edge_values`` argument to change)."""
    source = match_edges(data.edge_index, edge_index, data.num_nodes)
    added = source < 0
    n_added = int(added.sum())
    if n_added and added_edge_values == "refuse" and keys:
        raise ValueError(f"the attack added {n_added} edges, but the graph has per-edge attribute(s) {keys} with "
                         f"no value for new edges; pass {owner}(added_edge_values={{name: value}}) or 'zeros'")
    kept_src = source.clamp_min(0)
    rows_of = {}
    for key in keys:
        value = data[key]
        if not isinstance(value, Tensor):
            raise TypeError(f"per-edge attribute {key!r} is a {type(value).__name__}; edge attacks rebuild tensor "
                            "attributes only (store it as a tensor or drop it before attacking)")
        dim = data.__cat_dim__(key, value)
        dim = dim % value.dim()
        rows = value.index_select(dim, kept_src)
        if n_added:
            fill = _added_rows(key, value, dim, n_added, added_edge_values)
            index = added.nonzero().squeeze(1)
            rows = rows.index_copy(dim, index, fill)
        rows_of[key] = rows
    return rows_of


def perturbed_graph(data: Any, edge_index: Tensor, edge_weight: Optional[Tensor] = None, *,
                    added_edge_values: AddedEdgeValues = "zeros", edge_keys: Optional[List[str]] = None,
                    owner: str = "GraphAdapter") -> Any:
    """A shallow copy of ``data`` (PyG ``Data`` or ``Batch``) with ``edge_index`` and every per-edge attribute
    rebuilt for it.

    Args:
        edge_index: the perturbed ``(2, E')`` edges (node indices of ``data``).
        edge_weight: the perturbed ``(E',)`` weights, when the attack computed them; otherwise
            ``data.edge_weight`` (if any) is rebuilt like the other attributes (added edges weigh 1).
        added_edge_values: what an added edge holds in each attribute: ``"zeros"`` (default), a mapping
            ``{name: value}`` (other attributes zeros), or ``"refuse"`` (raise, naming the attributes).
        edge_keys: the per-edge attributes of the clean ``data`` (computed when ``None``).
        owner: the class whose ``added_edge_values`` a ``"refuse"`` error tells the user to change.
    """
    from torch_geometric.data import Batch

    out = copy.copy(data)
    keys = edge_attribute_keys(data) if edge_keys is None else edge_keys
    rebuilt = [k for k in keys if not (k == "edge_weight" and edge_weight is not None)]
    new_values = {"edge_index": edge_index}
    if edge_weight is not None and "edge_weight" in keys:
        new_values["edge_weight"] = edge_weight
    new_values.update(edge_rows(data, edge_index, rebuilt, added_edge_values, owner))
    if isinstance(data, Batch):
        _regroup_batch(out, data, new_values)
    for key, value in new_values.items():
        out[key] = value
    return out


def _regroup_batch(out: Any, data: Any, values: dict) -> None:
    """Order edges by graph (stable) and rewrite the per-graph edge slices of every per-edge attribute."""
    graph_of_edge = data.batch[values["edge_index"][0]]
    order = torch.sort(graph_of_edge, stable=True).indices
    for key, value in values.items():
        dim = data.__cat_dim__(key, data[key]) % value.dim()
        values[key] = value.index_select(dim, order)
    counts = torch.bincount(graph_of_edge, minlength=data.num_graphs)
    slices = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    slice_dict = dict(out._slice_dict)
    for key in values:
        if key in slice_dict:
            slice_dict[key] = slices.to(slice_dict[key].device)
    out._slice_dict = slice_dict
