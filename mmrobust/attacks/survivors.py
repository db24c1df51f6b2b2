"""An ensemble member on the units the earlier members left robust: per batch, or pooled over batches.

:class:`~mmrobust.attacks.Ensemble` runs each member after the first only on the units still robust
(AutoAttack's "members only on still-robust points", Croce & Hein 2020, https://arxiv.org/abs/2003.01690).
On one batch those are few once most units are broken, and every step of a member pays its per-call
overhead on them. :class:`EnsemblePool` (used by :func:`mmrobust.evaluate`) therefore gathers the
survivors of several consecutive batches, runs each member on them in chunks of the batch size and writes
the results back per batch, as the reference AutoAttack gathers the survivors of its whole dataset.

Pooling needs survivors that concatenate: the member's adapter must select units (``BatchView.select``)
with one output per unit (``unit is None``), the selected user batches must be tuples, lists or dicts
whose per-unit tensors have equal trailing shapes, dtypes and devices and whose other entries are equal,
and the adapter must read the joined batch back as exactly the selected inputs and labels. Anything else
(PyG graphs, node-level batches, audio padded to different lengths, other batch types) runs on each
batch's own survivors, as a single :class:`~mmrobust.attacks.Ensemble` call does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..adapters.base import BatchAdapter, BatchView
from ..adapters.tensor import replace_entries
from ..threats.base import per_unit
from ..threats.verify import verify_run
from .reading import attack_mode, prepare_victim
from .result import AttackResult


@dataclass
class Survivors:
    """One batch on its way through an ensemble: the points and logits so far, and the outputs still robust.

    ``read(attack)`` is the batch as ``attack`` reads it; ``victim`` as the ensemble's result reads it.
    ``batch`` and ``adapter_for`` (the adapter an attack reads with) are set when the batch came as a user
    batch, which pooling needs to join survivors of several batches.
    """

    read: Callable[[Any], BatchView]
    victim: BatchView
    first: AttackResult
    inputs: Dict[str, Tensor]
    logits: Tensor
    robust: Tensor
    exact_logits: bool
    history: List[Tuple[str, int]] = field(default_factory=list)
    model: Optional[nn.Module] = None
    batch: Any = None
    adapter_for: Optional[Callable[[Any], BatchAdapter]] = None

    def robust_units(self) -> Tensor:
        return self.victim.per_unit(self.robust.float(), "amax") > 0

    def take(self, units: Tensor, result: AttackResult, rows: Tensor) -> None:
        """Units ``units`` are broken by ``result``'s units ``rows``: keep those points and logits."""
        for k in self.inputs:
            self.inputs[k][units] = result.inputs[k][rows].to(self.inputs[k].dtype)
        self.logits[units] = result.logits[rows].to(self.logits.dtype)
        self.robust[units] = False

    def take_whole_batch(self, attack: Any, own: BatchView) -> None:
        """``attack`` on the whole batch (its units cannot be selected): a unit takes the member's point where
        the member leaves fewer of its outputs robust."""
        res = verify_run(attack, own, attack.run(own))
        now_robust = res.clean_correct & res.adv_correct
        robust_units = self.robust_units()
        before, after = self.victim.per_unit(self.robust.float()), self.victim.per_unit(now_robust.float())
        take_units = robust_units & (after < before)
        for k in self.inputs:
            self.inputs[k] = torch.where(per_unit(take_units, self.inputs[k]), res.inputs[k], self.inputs[k])
        take_out = self.victim.per_output(take_units)
        self.logits = torch.where(take_out[:, None], res.logits, self.logits)
        self.robust = torch.where(take_out, now_robust, self.robust)
        self.exact_logits = self.exact_logits and self.victim.unit is None


def attack_survivors(attack: Any, states: Sequence[Survivors], chunk_units: Optional[int] = None) -> None:
    """Run ``attack`` on the units still robust in ``states`` and record what it breaks, in place.

    With ``chunk_units`` and several batches whose survivors join (see the module docstring), the survivors
    of all of them run together in chunks of at most ``chunk_units`` units; otherwise each batch's
    survivors run alone (``BatchView.select``), or the whole batch where units cannot be selected.
    """
    selected = []
    for state in states:
        units = state.robust_units()
        if bool(units.any()):
            own = state.read(attack)
            if own.select is None or own.unit is not None:
                state.take_whole_batch(attack, own)
            else:
                selected.append((state, units.nonzero().squeeze(1), own))
    joined = _join(attack, selected) if chunk_units and len(selected) > 1 else None
    if joined is not None:
        view, owner, local = joined
        for start in range(0, view.num_units, chunk_units):
            rows = torch.arange(start, min(start + chunk_units, view.num_units), device=owner.device)
            chunk = view if rows.numel() == view.num_units else prepare_victim(view.select(rows))
            res = verify_run(attack, chunk, attack.run(chunk))
            fooled = (~(res.clean_correct & res.adv_correct)).to(owner.device)
            for i, (state, _, _) in enumerate(selected):
                mine = fooled & (owner[rows] == i)
                if bool(mine.any()):
                    state.take(local[rows][mine].to(state.robust.device), res, mine.nonzero().squeeze(1))
    else:
        for state, index, own in selected:
            sub = prepare_victim(own.select(index))
            res = verify_run(attack, sub, attack.run(sub))
            fooled = ~(res.clean_correct & res.adv_correct)
            state.take(index[fooled], res, fooled)
    for state in states:
        state.history.append((attack.describe(), int(state.robust.sum())))


def _join(attack: Any, selected: List[Tuple[Survivors, Tensor, BatchView]]) -> Optional[Tuple[BatchView, Tensor, Tensor]]:
    """The survivors of several batches as one :class:`BatchView`, with each unit's batch (``owner``, the
    position in ``selected``) and its unit index there; ``None`` where they cannot be joined."""
    states = [s for s, _, _ in selected]
    if any(s.batch is None or s.adapter_for is None or s.model is not states[0].model for s in states):
        return None
    adapter = states[0].adapter_for(attack)
    if any(type(s.adapter_for(attack)) is not type(adapter) for s in states):
        return None
    subs = [prepare_victim(own.select(index)) for _, index, own in selected]
    joined = concat_batches([sub.rebuild(sub.inputs) for sub in subs], [sub.num_units for sub in subs])
    if joined is None:
        return None
    try:
        view = prepare_victim(adapter.victim(states[0].model, joined))
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError):
        return None  # the adapter does not read a joined batch: each batch's survivors run alone
    if not _reads_back(view, subs):
        return None
    owner = torch.cat([torch.full((len(index),), i, dtype=torch.long, device=index.device)
                       for i, (_, index, _) in enumerate(selected)])
    local = torch.cat([index for _, index, _ in selected])
    return view, owner, local


def _reads_back(view: BatchView, subs: List[BatchView]) -> bool:
    """The joined view holds exactly the selected units' inputs, labels and masks, one output per unit."""
    if view.unit is not None or view.select is None or set(view.inputs) != set(subs[0].inputs):
        return False
    if view.num_units != sum(s.num_units for s in subs) or set(view.masks) != set(subs[0].masks):
        return False
    for k in view.inputs:
        if not torch.equal(view.inputs[k], torch.cat([s.inputs[k] for s in subs])):
            return False
    for k in view.masks:
        try:
            if not torch.equal(view.masks[k], torch.cat([s.masks[k] for s in subs])):
                return False
        except RuntimeError:  # masks that broadcast (one row for all units) do not concatenate
            return False
    return torch.equal(view.target, torch.cat([s.target for s in subs]))


_PLAIN = (int, float, str, bool, type(None))


def concat_batches(batches: Sequence[Any], sizes: Sequence[int]) -> Optional[Any]:
    """Several user batches of ``sizes[i]`` units as one batch: tensors whose leading dimension is the
    batch's unit count are concatenated, other entries must be equal (they are kept once). Tuples, lists,
    named tuples and dicts, nested too; ``None`` when the batches cannot be joined."""
    first = batches[0]
    if any(type(b) is not type(first) for b in batches):
        return None
    if isinstance(first, Tensor):
        if all(b.dim() > 0 and b.shape[0] == n for b, n in zip(batches, sizes)):
            if any(b.shape[1:] != first.shape[1:] or b.dtype != first.dtype or b.device != first.device
                   for b in batches):
                return None
            return torch.cat(list(batches))
        same = all(b.shape == first.shape and b.device == first.device and torch.equal(b, first) for b in batches)
        return first if same else None
    if isinstance(first, Mapping):
        if any(list(b) != list(first) for b in batches):
            return None
        keys = list(first)
    elif isinstance(first, (list, tuple)):
        if any(len(b) != len(first) for b in batches):
            return None
        keys = list(range(len(first)))
    else:
        same = all(b is first or (isinstance(first, _PLAIN) and b == first) for b in batches)
        return first if same else None
    values = {}
    for k in keys:
        v = concat_batches([b[k] for b in batches], sizes)
        if v is None and first[k] is not None:
            return None
        values[k] = v
    return replace_entries(first, values)


class EnsemblePool:
    """An :class:`~mmrobust.attacks.Ensemble` over consecutive batches with pooled survivors.

    :meth:`add` runs the first member on a batch as it arrives; :meth:`finish` runs every later member on
    the units still robust in all batches added since, joined and regrouped in chunks of the largest batch
    (:func:`attack_survivors`), and returns one result per batch, in order, as ``ensemble(model, batch)``
    would return it (unverified: the caller checks them as any result). The model is in
    :func:`~mmrobust.attacks.attack_mode` during both and restored afterwards, also after an exception,
    which empties the pool. The caller bounds the memory by calling :meth:`finish` once ``units`` is
    large enough (:func:`mmrobust.evaluate`: ``pool_units``).
    """

    def __init__(self, ensemble: Any, model: nn.Module):
        self.ensemble, self.model = ensemble, model
        self.members = ensemble.members()
        self.states: List[Survivors] = []

    @property
    def units(self) -> int:
        """Units of the batches waiting for :meth:`finish`."""
        return sum(s.victim.num_units for s in self.states)

    @property
    def poolable(self) -> bool:
        """Whether the batches added so far can pool their survivors (``False``: finish after each batch)."""
        return all(isinstance(s.batch, (Mapping, list, tuple)) and s.victim.select is not None
                   and s.victim.unit is None for s in self.states)

    def add(self, batch: Any) -> None:
        try:
            with attack_mode(self.model):
                self.states.append(self.ensemble.start(self.members, self.model, batch))
        except BaseException:
            self.states = []
            raise

    def finish(self) -> List[AttackResult]:
        states, self.states = self.states, []
        if not states:
            return []
        chunk = max(s.victim.num_units for s in states)
        with attack_mode(self.model):
            self.ensemble.advance(self.members, states, chunk_units=chunk)
            return [self.ensemble.result(s) for s in states]
