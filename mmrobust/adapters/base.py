"""Batch adapters: how an attack reads, runs and rebuilds a user's batch.

An adapter turns one user batch into a :class:`BatchView` -- the attackable tensors, the labels of the
outputs that are scored, and closures that run the model on perturbed tensors and rebuild a batch of
the user's own type.  Attacks only ever see a :class:`BatchView`, so a new modality is added by writing
an adapter (and registering it with :func:`register_adapter`); nothing in the attack core changes.

Terminology: the leading dimension of every attackable tensor indexes *units* -- the things a budget
is given for (an image, a waveform, a graph).  The model's scored *outputs* (rows of the logits) map
to units through ``BatchView.unit``; for images and audio that is the identity.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor


@dataclass
class BatchView:
    """The attack's view of one batch (not the model): what an attack needs to read, perturb, score and rebuild it.

    Attributes:
        inputs: clean attackable tensors by name; each has the unit dimension first.
        target: labels of the scored outputs, shape ``(outputs,)``.
        forward: maps a dict of (perturbed) inputs to logits of the scored outputs ``(outputs, C)``.
        rebuild: maps a dict of (perturbed) inputs to a batch of the user's type.
        unit: ``(outputs,)`` index of the unit each output belongs to; ``None`` means output i is unit i.
        masks: optional per-input masks (1 = may be perturbed), broadcastable to the input.
        select: optional ``(unit_index) -> BatchView`` restricting the victim to some units (attacks use it
            to spend effort only on units still robust); ``None`` when units cannot be separated.
        meta: adapter-specific extras (e.g. sample rate, lengths), for reports.
        deterministic: ``forward`` gives the same logits for the same inputs. Wrappers that sample
            (expectation over transformation, randomized defenses) set it to ``False``, which stops
            attacks from treating one lucky success as final.
        labels: how the user's batch names each input (e.g. ``"batch[0]"``), for error messages; inputs
            not listed are named by their key.

    ``Victim`` is its earlier name (an alias).

    Example:
        >>> import torch
        >>> from mmrobust.adapters import infer_adapter
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> view = infer_adapter([x, y]).victim(model, [x, y])
        >>> view.num_units, sorted(view.inputs), view.forward(view.inputs).shape
        (8, ['image'], torch.Size([8, 3]))
        >>> view.select(torch.tensor([0, 2])).num_units      # the same batch restricted to two units
        2
    """

    inputs: Dict[str, Tensor]
    target: Tensor
    forward: Callable[[Dict[str, Tensor]], Tensor]
    rebuild: Callable[[Dict[str, Tensor]], Any]
    unit: Optional[Tensor] = None
    masks: Dict[str, Tensor] = field(default_factory=dict)
    select: Optional[Callable[[Tensor], "BatchView"]] = None
    meta: Dict[str, Any] = field(default_factory=dict)
    deterministic: bool = True
    labels: Dict[str, str] = field(default_factory=dict)

    @property
    def num_units(self) -> int:
        return next(iter(self.inputs.values())).shape[0]

    @property
    def num_outputs(self) -> int:
        return self.target.shape[0]

    def input_name(self, name: Optional[str] = None) -> str:
        """``name`` checked against the attackable inputs, or the only input when ``name`` is ``None``."""
        if name is None:
            if len(self.inputs) != 1:
                raise ValueError(f"this batch has several attackable inputs {sorted(self.inputs)}; pass input_name")
            return next(iter(self.inputs))
        if name not in self.inputs:
            raise KeyError(f"input_name {name!r} is not an attackable input; choose from {sorted(self.inputs)}")
        return name

    def unit_index(self) -> Tensor:
        if self.unit is None:
            return torch.arange(self.num_outputs, device=self.target.device)
        return self.unit

    def per_unit(self, values: Tensor, reduce: str = "sum") -> Tensor:
        """Aggregate per-output values into per-unit values (sum, mean, amax or amin)."""
        if self.unit is None:
            return values
        out = torch.zeros(self.num_units, dtype=values.dtype, device=values.device)
        if reduce in ("sum", "mean"):
            out = out.index_add(0, self.unit, values)
            if reduce == "mean":
                counts = torch.zeros_like(out).index_add(0, self.unit, torch.ones_like(values))
                out = out / counts.clamp_min(1)
            return out
        init = float("-inf") if reduce == "amax" else float("inf")
        out = out.fill_(init).scatter_reduce(0, self.unit, values, reduce=reduce, include_self=True)
        return out

    def per_output(self, unit_values: Tensor) -> Tensor:
        """Broadcast per-unit values to the outputs."""
        return unit_values if self.unit is None else unit_values[self.unit]


#: the earlier name of :class:`BatchView`, kept so that user code and recipes keep working
Victim = BatchView


class BatchAdapter(ABC):
    """Reads a user's batch for attacks. Subclass and register one per batch convention.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from mmrobust.adapters import BatchAdapter, BatchView
        >>> class FeatureDictAdapter(BatchAdapter):             # batches {"feats": x, "label": y}
        ...     def victim(self, model, batch):
        ...         return BatchView(inputs={"feats": batch["feats"]}, target=batch["label"],
        ...                          forward=lambda inputs: model(inputs["feats"]),
        ...                          rebuild=lambda inputs: dict(batch, feats=inputs["feats"]))
        ...     def batch_size(self, batch):
        ...         return batch["label"].shape[0]
        >>> batch = {"feats": torch.rand(5, 4), "label": torch.zeros(5, dtype=torch.long)}
        >>> view = FeatureDictAdapter().victim(nn.Linear(4, 3), batch)
        >>> view.num_units, view.forward(view.inputs).shape
        (5, torch.Size([5, 3]))
    """

    #: modality name used in results and reports
    modality: str = "generic"

    @abstractmethod
    def victim(self, model: torch.nn.Module, batch: Any) -> BatchView:
        """Build the :class:`BatchView` for ``batch`` under ``model``."""

    def batch_size(self, batch: Any) -> int:
        """Number of scored outputs (for metrics and progress bars)."""
        raise NotImplementedError

    def for_stage(self, batch: Any, stage: str) -> "BatchAdapter":
        """This adapter as used at a training stage (``"train"``, ``"val"`` or ``"test"``).

        Adapters whose scored outputs depend on a data split return a copy that scores that split's
        outputs (a graph's ``train_mask`` nodes while training), so training never sees test labels.
        Batches carry the same data in every stage otherwise, so the default returns ``self``.
        """
        return self


_REGISTRY: List[Tuple[int, Callable[[Any], bool], Callable[[Any], BatchAdapter]]] = []


def register_adapter(matches: Callable[[Any], bool], factory: Callable[[Any], BatchAdapter],
                     priority: int = 0) -> None:
    """Teach :func:`infer_adapter` a new batch convention.

    ``matches(batch)`` says whether the convention applies; ``factory(batch)`` builds the adapter.
    Higher ``priority`` wins when several match.
    """
    _REGISTRY.append((priority, matches, factory))
    _REGISTRY.sort(key=lambda t: -t[0])


STAGES = ("train", "val", "test")


def stage_adapter(batch: Any, stage: str, adapter: Optional[BatchAdapter] = None) -> BatchAdapter:
    """``adapter`` when given (the user's choice wins), else the inferred adapter for ``stage``.

    Training code (callbacks, losses) asks for ``stage="train"``, validation for ``"val"``: for a PyG graph
    with split masks that scores the matching nodes instead of the evaluation default (the test nodes).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}")
    return adapter if adapter is not None else infer_adapter(batch).for_stage(batch, stage)


def infer_adapter(batch: Any) -> BatchAdapter:
    """Pick the adapter for ``batch`` from the registered conventions."""
    for _, matches, factory in _REGISTRY:
        try:
            ok = matches(batch)
        except Exception:  # a predicate must never break inference
            ok = False
        if ok:
            return factory(batch)
    raise TypeError(
        f"no batch adapter understands a batch of type {type(batch).__name__}; pass adapter=... "
        "(e.g. mmrobust.adapters.TensorAdapter(input_key='image', target_key='label')) or register one "
        "with mmrobust.adapters.register_adapter")
