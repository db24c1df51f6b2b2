"""How to call a user's model: the usual ``forward`` signatures, recognised from the signature itself.

Graph models (PyG) come as::

    forward(x, edge_index)                      # the PyG tutorial GCN: edge attacks need weights, see below
    forward(x, edge_index, edge_weight=None)    # weighted: every attack works
    forward(x, edge_index, batch)               # graph classification, with or without edge_weight
    forward(data)                               # one Data/Batch argument

Multimodal fusion models come as ``forward(batch)`` (one dict) or ``forward(image=..., audio=...)``
(one keyword per input). :func:`graph_call` and :func:`multimodal_call` pick the call from the signature
and raise an error that says exactly what to write when no call fits.
"""

from __future__ import annotations

import copy
import inspect
import weakref
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

from .graph_edges import edge_attribute_keys, edge_rows

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_WEIGHTED_MODEL = ("def forward(self, x, edge_index, edge_weight=None):\n"
                   "        x = self.conv1(x, edge_index, edge_weight)  # GCNConv, SAGEConv(aggr='add'), ...")


def _signature(model) -> Optional[inspect.Signature]:
    fn = model.forward if isinstance(model, torch.nn.Module) else model
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # builtins, some C extensions
        return None


def _name(model) -> str:
    return f"{type(model).__name__}.forward" if isinstance(model, torch.nn.Module) else getattr(
        model, "__name__", repr(model))


def describe(model) -> str:
    """``Name.forward(a, b, c=None)``: the signature as the user wrote it (for error messages)."""
    sig = _signature(model)
    return f"{_name(model)}{sig if sig is not None else '(...)'}"


class GraphCall:
    """Calls a graph model with node features, edges, optional edge weights and the node -> graph map.

    ``kind`` is ``"weighted"`` (takes edge weights), ``"unweighted"`` (``forward(x, edge_index[, batch])``)
    or ``"data"`` (``forward(data)``). Instances are built by :func:`graph_call`.
    """

    def __init__(self, model, kind: str, weight_kw: Optional[str], batch_kw: bool):
        self.model, self.kind, self.weight_kw, self.batch_kw = model, kind, weight_kw, batch_kw
        #: what an added (or relaxed candidate) edge holds in the per-edge attributes a ``forward(data)`` model
        #: reads while the attack runs (``GraphAdapter.added_edge_values``; ``"refuse"`` reads as zeros here,
        #: the returned graph refuses)
        self.forward_edge_values: Any = "zeros"
        #: the graph's per-edge attributes other than ``edge_weight`` (set once per graph by the adapter;
        #: ``None``: read from the graph at each call)
        self.edge_keys: Optional[List[str]] = None

    def _weights_needed(self, edge_weight: Optional[Tensor], clean: Optional[Tensor]) -> bool:
        if edge_weight is None or edge_weight is clean:
            return False
        return edge_weight.requires_grad or not bool((edge_weight == 1).all())

    def _no_weights_error(self) -> TypeError:
        return TypeError(
            f"{describe(self.model)} takes no edge weights, but this attack relaxes edges into continuous "
            f"weights (PRBCD/GRBCD) or reweights them. Let the model take them:\n    {_WEIGHTED_MODEL}\n"
            "or pass GraphAdapter(forward=lambda model, x, edge_index, edge_weight, batch: ...) that feeds "
            "them to your model (mmrobust.adapters.edge_weight_as_edge_attr for GATConv(edge_dim=1)). "
            "Feature attacks and discrete flips (DICE, RandomFlips) work with the model as it is.")

    def __call__(self, data, x: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor],
                 batch: Optional[Tensor], clean_weight: Optional[Tensor] = None) -> Tensor:
        if self.kind == "data":
            return self._call_data(data, x, edge_index, edge_weight, batch, clean_weight)
        kwargs: Dict[str, Any] = {}
        args = [x, edge_index]
        if self.kind == "weighted":
            if self.weight_kw is None:
                args.append(edge_weight)
            else:
                kwargs[self.weight_kw] = edge_weight
        elif self._weights_needed(edge_weight, clean_weight):
            raise self._no_weights_error()
        if batch is not None:
            if not self.batch_kw:
                raise TypeError(f"graph classification needs the node -> graph map, but {describe(self.model)} "
                                "takes no `batch` argument; write forward(self, x, edge_index, edge_weight=None, "
                                "batch=None) and pool with global_mean_pool(x, batch)")
            kwargs["batch"] = batch
        return self.model(*args, **kwargs)

    def _call_data(self, data, x, edge_index, edge_weight, batch, clean_weight) -> Tensor:
        out = copy.copy(data)
        if edge_index is not data.edge_index:  # the model reads data.edge_attr & co.: rows for these edges
            keys = self.edge_keys
            if keys is None:
                keys = [k for k in edge_attribute_keys(data) if k != "edge_weight"]
            for key, rows in edge_rows(data, edge_index, keys, self.forward_edge_values).items():
                out[key] = rows
        out.x, out.edge_index = x, edge_index
        if edge_weight is not None or getattr(data, "edge_weight", None) is not None:
            out.edge_weight = edge_weight
        logits = self.model(out)
        if self._weights_needed(edge_weight, clean_weight) and edge_weight.requires_grad \
                and self.model not in _READS_DATA_WEIGHTS:
            grad = torch.autograd.grad(logits.sum(), edge_weight, retain_graph=True, allow_unused=True)[0] \
                if logits.requires_grad else None
            if grad is None:
                raise TypeError(
                    f"{describe(self.model)} ignores data.edge_weight, so an edge attack that relaxes edges "
                    "into weights (PRBCD/GRBCD) cannot move it. Pass the weights to your convolutions, e.g. "
                    "`self.conv1(data.x, data.edge_index, data.edge_weight)`, or pass GraphAdapter(forward=...)")
            _READS_DATA_WEIGHTS.add(self.model)
        return logits


_READS_DATA_WEIGHTS: "weakref.WeakSet" = weakref.WeakSet()


def graph_call(model) -> GraphCall:
    """The :class:`GraphCall` that fits ``model``'s ``forward`` signature (see the module docstring)."""
    sig = _signature(model)
    if sig is None:
        return GraphCall(model, "weighted", None, True)
    params = list(sig.parameters.values())
    names = [p.name for p in params]
    positional = [p for p in params if p.kind in _POSITIONAL]
    var_pos = any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params)
    var_kw = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)
    batch_kw = "batch" in names or var_kw
    if len(positional) == 1 and not var_pos:
        return GraphCall(model, "data", None, False)
    if "edge_weight" in names:
        return GraphCall(model, "weighted", "edge_weight", batch_kw)
    if var_pos:
        return GraphCall(model, "weighted", None, batch_kw)
    if len(positional) >= 3 and positional[2].name not in ("batch", "edge_attr"):
        return GraphCall(model, "weighted", None, batch_kw)  # forward(x, edge_index, w): the third is weights
    if len(positional) < 2:
        raise TypeError(f"{describe(model)} cannot take node features and edges; graph models are called as "
                        "model(x, edge_index, edge_weight=None) or model(data). Pass GraphAdapter(forward=...) "
                        "for another call")
    return GraphCall(model, "unweighted", None, batch_kw)


def multimodal_call(model, names: Sequence[str], call: str = "auto") -> Callable[[Dict[str, Tensor], Mapping], Tensor]:
    """``(inputs, batch) -> logits`` for a fusion model: ``model(**inputs)`` when ``forward`` takes every
    input name as a keyword (``call="kwargs"``), or ``model(batch)`` with the perturbed entries
    replaced when it takes one argument (``call="dict"``); ``call="auto"`` picks from the signature."""
    from .tensor import replace_entries

    if call == "auto":
        call = _multimodal_kind(model, names)

    if call == "kwargs":
        return lambda inputs, batch: model(**inputs)
    return lambda inputs, batch: model(replace_entries(batch, dict(inputs)))


def _multimodal_kind(model, names: Sequence[str]) -> str:
    sig = _signature(model)
    if sig is None:
        return "kwargs"
    params = list(sig.parameters.values())
    accepted = {p.name for p in params if p.kind != inspect.Parameter.VAR_POSITIONAL}
    var_kw = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)
    if var_kw or all(n in accepted for n in names):
        return "kwargs"
    required = [p for p in params if p.default is inspect.Parameter.empty
                and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if len(required) <= 1 and any(p.kind in _POSITIONAL for p in params):
        return "dict"
    lookup = ", ".join(f"inputs[{n!r}]" for n in names)
    raise TypeError(
        f"{describe(model)} takes neither one batch dict nor the inputs {list(names)} as keywords. Pass "
        f"MultimodalAdapter(forward=lambda model, inputs, batch: model({lookup})) to say how to call it, or "
        "MultimodalAdapter(call='dict') / call='kwargs' to force model(batch) / model(**inputs)")
