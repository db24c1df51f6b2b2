"""An independent check that every returned adversarial point lies inside its threat model.

Attacks report their own ``AttackResult.size``, computed with the threat model's ``size()`` from their own
bookkeeping. A bug there (a wrong index, a stale best point, a projection that overflows) would go
unnoticed, and a robust accuracy that looks right would not be. So evaluation re-reads the *clean* batch
with the attack's adapter and re-measures the perturbation ``returned - clean`` here, with code of its
own:

* norm balls (``linf``, ``l2``, ``l1``, bit flips): the norm of the difference is at most the radius
  ``threat.radius(clean)`` (per unit; dB budgets included) up to floating-point tolerance, every
  coordinate lies in the value box, and padding the adapter masks is untouched;
* edge flips: the symmetric difference of the clean and returned undirected edge sets has at most
  ``flips_allowed`` pairs per graph (of its *distinct* undirected edges), no pair across graphs, no new
  self loop, at most ``max_flips_per_node`` flips at any node, only pairs at a target node when local, and
  the returned graph is still undirected.

A point outside raises :class:`~mmrobust.errors.BudgetViolation`. Attacks that are *unbounded by design*
(``attack.bounded`` false: ``FMN(cap=False)``, a ``MinimalNormSearch`` with a larger ``eps_max``) are
not errors: their points outside the budget are *dropped* -- the unit gets its clean input back and
counts as not broken -- so a budgeted evaluation never counts a point outside its budget.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from ..adapters.base import BatchView, infer_adapter
from ..errors import BudgetViolation
from .base import ThreatModel, per_unit
from .graph import EdgeFlips, count_undirected_edges, undirected_pairs
from .norms import l2_norm

#: ``AttackResult.extras`` key marking a result of an attack unbounded by design (``attack.bounded``
#: false) whose points were not yet checked against the threat model; :func:`verify_run` removes it.
UNVERIFIED = "unverified_unbounded"

__all__ = ["BudgetViolation", "violations", "verify_result", "run_checked"]

#: norms measured here (not with the threat model's own ``size``); any other norm falls back to ``size``
_NORMS = {"linf", "l2", "l1", "bit_flips"}


def _measure(norm: str, delta: Tensor) -> Tensor:
    flat = delta.reshape(delta.shape[0], -1).double()
    if norm == "linf":
        return flat.abs().amax(1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if norm == "l2":
        return l2_norm(flat)
    return flat.abs().sum(1)  # l1 and relaxed bit flips


def _tensor_violations(threat: ThreatModel, clean: Tensor, adv: Tensor, mask: Optional[Tensor]) -> Dict[str, Tensor]:
    """Per unit, the reasons a returned tensor leaves ``threat`` (empty dict: all inside)."""
    units = clean.shape[0]
    if not isinstance(adv, Tensor) or adv.shape != clean.shape:
        shape = tuple(adv.shape) if isinstance(adv, Tensor) else type(adv).__name__
        return {f"has shape {shape}, the clean input {tuple(clean.shape)}": torch.ones(units, dtype=torch.bool)}
    out: Dict[str, Tensor] = {}
    finite = torch.isfinite(adv.reshape(units, -1)).all(1)
    if not bool(finite.all()):
        out["holds NaN/Inf"] = ~finite
    delta = adv.detach().double() - clean.detach().double()
    d = max(1, delta[0].numel())
    eps = torch.finfo(adv.dtype if torch.is_floating_point(adv) else torch.float32).eps
    # rounding of x + delta in the input's dtype: a few ulps of the largest magnitude, per coordinate
    mag = torch.maximum(clean.detach().abs(), adv.detach().abs()).reshape(units, -1).double()
    mag = mag.amax(1) if mag.shape[1] else mag.new_zeros(units)
    coord_tol = 4 * eps * mag
    norm = threat.norm if threat.norm in _NORMS else None
    if norm is None:  # a custom measure: only the threat model knows it
        size = threat.size(delta.to(clean.dtype), clean).double()
        tol = coord_tol * d
    else:
        size = _measure(norm, delta)
        tol = coord_tol * {"linf": 1.0, "l2": math.sqrt(d)}.get(norm, float(d))
    radius = threat.radius(clean).double().reshape(-1).to(size.device)
    rtol = 1e-5 if eps > 1e-10 else 1e-10
    over = size > radius * (1 + rtol) + tol
    if bool(over.any()):
        u = int(over.nonzero()[0])
        out[f"has size {float(size[u]):.6g} > budget {float(radius[u]):.6g} ({threat.norm}) at unit {u}"] = over
    flat_adv = adv.detach().double().reshape(units, -1)
    flat_clean = clean.detach().double().reshape(units, -1)
    if threat.lower is not None:
        below = (flat_adv < torch.minimum(flat_clean, flat_clean.new_tensor(threat.lower)) - coord_tol[:, None]).any(1)
        if bool(below.any()):
            out[f"has values below the box's lower bound {threat.lower}"] = below
    if threat.upper is not None:
        above = (flat_adv > torch.maximum(flat_clean, flat_clean.new_tensor(threat.upper)) + coord_tol[:, None]).any(1)
        if bool(above.any()):
            out[f"has values above the box's upper bound {threat.upper}"] = above
    if mask is not None:
        frozen = (delta.abs() * (mask.double() == 0)).reshape(units, -1).amax(1) > coord_tol
        if bool(frozen.any()):
            out["changes samples the adapter masks (padding)"] = frozen
    return out


def _graph_violations(threat: EdgeFlips, graph: Any, adv_edge_index: Optional[Tensor]) -> Dict[str, Tensor]:
    """Per graph, the reasons a returned edge set leaves ``threat`` (re-counted from both edge sets)."""
    units = graph.ptr.numel() - 1
    clean_ei = graph.edge_index
    adv_ei = clean_ei if adv_edge_index is None else adv_edge_index.to(clean_ei.device)
    unit_of = graph.node_unit
    n = graph.num_nodes
    out: Dict[str, Tensor] = {}
    none = torch.zeros(units, dtype=torch.bool, device=clean_ei.device)
    if adv_ei.numel() and (int(adv_ei.min()) < 0 or int(adv_ei.max()) >= n):
        return {f"has node indices outside [0, {n - 1}]": ~none}
    # still undirected: every returned directed edge has its reverse
    row, col = adv_ei
    key = torch.unique(row * n + col)
    rev = torch.unique(col * n + row)
    lone = key[~torch.isin(key, rev)]
    if lone.numel():
        out["is no longer undirected (an edge lacks its reverse)"] = none.index_fill(0, unit_of[lone // n], True)
    loops = lambda ei: torch.unique(ei[0][ei[0] == ei[1]])  # noqa: E731
    new_loops = loops(adv_ei)[~torch.isin(loops(adv_ei), loops(clean_ei))]
    if new_loops.numel():
        out["adds self loops"] = none.index_fill(0, unit_of[new_loops], True)
    p0, p1 = undirected_pairs(clean_ei), undirected_pairs(adv_ei)
    k0, k1 = p0[0] * n + p0[1], p1[0] * n + p1[1]
    flipped = torch.cat([k0[~torch.isin(k0, k1)], k1[~torch.isin(k1, k0)]])
    a, b = flipped // n, flipped % n
    across = unit_of[a] != unit_of[b]
    if bool(across.any()):
        out["flips node pairs across graphs"] = none.index_fill(0, unit_of[a[across]], True)
    per_unit_flips = torch.zeros(units, dtype=torch.long, device=clean_ei.device).index_add_(
        0, unit_of[a], torch.ones_like(a))
    if threat.local and graph.targets is not None:
        targets = torch.zeros(n, dtype=torch.bool, device=clean_ei.device)
        targets[graph.targets] = True
        base = torch.zeros(units, dtype=torch.long, device=clean_ei.device)
        for end in (p0[0], p0[1]):  # the targets' degree, counting each distinct neighbour once
            base.index_add_(0, unit_of[end], targets[end].long())
        off = ~(targets[a] | targets[b])
        if bool(off.any()):
            out["flips pairs at no target node (local attack)"] = none.index_fill(0, unit_of[a[off]], True)
    else:
        base = count_undirected_edges(clean_ei, unit_of, units)
    allowed = threat.flips_allowed(base).to(per_unit_flips.device)
    over = per_unit_flips > allowed
    if bool(over.any()):
        u = int(over.nonzero()[0])
        out[f"flips {int(per_unit_flips[u])} pairs > budget {int(allowed[u])} in graph {u}"] = over
    if threat.max_flips_per_node is not None and flipped.numel():
        at_node = torch.bincount(torch.cat([a, b]), minlength=n)
        busy = at_node > threat.max_flips_per_node
        if bool(busy.any()):
            v = int(busy.nonzero()[0])
            out[f"flips {int(at_node[v])} pairs at node {v} > max_flips_per_node {threat.max_flips_per_node}"] = \
                none.index_fill(0, unit_of[busy.nonzero().squeeze(1)], True)
    return out


def violations(victim: BatchView, adv_inputs: Dict[str, Tensor], threats: Dict[str, ThreatModel]) -> Dict[str, Dict[str, Tensor]]:
    """Per threatened input, ``{reason: per-unit bool}`` for the returned inputs ``adv_inputs`` measured
    against the clean ``victim`` (empty: every point inside its threat model)."""
    out = {}
    with torch.no_grad():
        for name, threat in threats.items():
            if isinstance(threat, EdgeFlips):
                graph = victim.meta.get("graph")
                if graph is None:
                    raise TypeError(f"EdgeFlips on input {name!r} needs a graph batch (GraphAdapter)")
                found = _graph_violations(threat, graph, adv_inputs.get("edge_index"))
            else:
                found = _tensor_violations(threat, victim.inputs[name], adv_inputs.get(name, victim.inputs[name]),
                                           victim.masks.get(name))
            if found:
                out[name] = found
    return out


def verify_result(attack: Any, model: torch.nn.Module, batch: Any, result: Any) -> Any:
    """``result`` of ``attack(model, batch)`` if every point is inside the attack's threat model.

    Raises :class:`~mmrobust.errors.BudgetViolation` otherwise, unless the attack is unbounded by design
    (``attack.bounded`` false): then a copy is returned in which every unit outside the budget has its
    clean input, clean logits, ``success`` false and ``size`` ``+inf`` (dropped, as minimal-norm attacks
    mark units where they found nothing).
    """
    return verify_run(attack, (attack.adapter or infer_adapter(batch)).victim(model, batch), result)


def verify_run(attack: Any, victim: BatchView, result: Any) -> Any:
    """:func:`verify_result` for a result of ``attack.run(victim)`` (a batch already read)."""
    # an attack whose budget is not the per-input one (a universal delta) says which balls its points must keep
    threats = getattr(attack, "verified_threats", attack.threats_for)(victim)
    found = violations(victim, result.inputs, threats)
    if UNVERIFIED in result.extras:  # checked now: the metrics may count this result
        result = dataclasses.replace(result, extras={k: v for k, v in result.extras.items() if k != UNVERIFIED})
    if not found:
        return result
    graph_inputs = [k for k, t in threats.items() if isinstance(t, EdgeFlips) and k in found]
    if getattr(attack, "bounded", True) or graph_inputs:
        details = "; ".join(f"input {name!r} {reason} ({int(mask.sum())} of {mask.numel()} units)"
                            for name, reasons in found.items() for reason, mask in reasons.items())
        raise BudgetViolation(f"{attack.describe()} returned points outside its threat model: {details}. "
                              "This is a bug in the attack (or its threat model); the result would overstate "
                              "the attack's success")
    return _drop(attack, victim, result, found)


def _drop(attack: Any, victim: BatchView, result: Any, found: Dict[str, Dict[str, Tensor]]) -> Any:
    outside = torch.zeros(victim.num_units, dtype=torch.bool, device=result.logits.device)
    for reasons in found.values():
        for mask in reasons.values():
            outside |= mask.to(outside.device)
    inputs = dict(result.inputs)
    for name in found:
        clean = victim.inputs[name]
        inputs[name] = torch.where(per_unit(outside.to(clean.device), clean), clean, inputs[name])
    out = victim.per_output(outside)
    logits = torch.where(out[:, None], result.clean_logits, result.logits)
    loss = result.loss
    if not attack.targeted:
        loss = torch.where(out, attack.output_loss(result.clean_logits, victim, None), loss)
    size = {k: torch.where(outside.to(s.device), torch.full_like(s, math.inf), s) for k, s in result.size.items()}
    return dataclasses.replace(result, batch=victim.rebuild(inputs), inputs=inputs, logits=logits,
                               success=result.success & ~out, loss=loss, size=size,
                               extras=dict(result.extras, dropped_outside_budget=outside))


def run_checked(attack: Any, model: torch.nn.Module, batch: Any) -> Any:
    """``attack(model, batch)``, checked by :func:`verify_result`."""
    return verify_result(attack, model, batch, attack(model, batch))
