"""Robustness evaluation of a plain PyTorch model over a dataloader (no Lightning needed)."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .adapters.base import BatchAdapter
from .attacks.base import Attack
from .attacks.ensemble import Ensemble
from .attacks.survivors import EnsemblePool
from .checks.runner import FailureChecks, warn_fired
from .errors import check_int
from .metrics.robust_accuracy import AttackSuccessRate, RobustAccuracy
from .threats.verify import run_checked, verify_result

# Mapping first: jsonargparse tries the union's members in order, and a concrete Attack would swallow a
# {name: {class_path: ...}} mapping as its own init arguments (the config's threat mappings then fail)
Attacks = Union[Mapping[str, Attack], Sequence[Attack], Attack]

#: :func:`evaluate`'s default ``pool_units``: the units of consecutive batches whose survivors an
#: :class:`~mmrobust.attacks.Ensemble` pools (see there for the choice)
POOL_UNITS = 2048


def named_attacks(attacks: Attacks, adapter: Optional[BatchAdapter] = None) -> Dict[str, Attack]:
    """Attacks by unique name (``attack.name``, numbered on repeats), each a private copy.

    The copies (:meth:`~mmrobust.attacks.Attack.private_copy`: composite members and random generators
    included) carry ``adapter`` when the attack has none, so evaluating never changes the user's attack
    objects and the same call on the same objects gives the same number.
    """
    if isinstance(attacks, Attack):
        attacks = [attacks]
    if isinstance(attacks, Mapping):
        items: List[Tuple[str, Any]] = [(str(k), v) for k, v in attacks.items()]
    elif isinstance(attacks, (list, tuple)):
        bases = [getattr(a, "name", type(a).__name__) for a in attacks]
        numbered = {b: 0 for b in bases}
        items = []
        for base, a in zip(bases, attacks):
            numbered[base] += 1
            items.append((f"{base}_{numbered[base]}" if bases.count(base) > 1 else base, a))
    else:
        raise TypeError(f"attacks must be an Attack, a list of Attacks or a dict name -> Attack, "
                        f"got {type(attacks).__name__}")
    if not items:
        raise ValueError("attacks must contain at least one Attack")
    out = {}
    for name, a in items:
        if not isinstance(a, Attack):
            raise TypeError(f"attacks[{name!r}] must be an mmrobust Attack, got {type(a).__name__}")
        private = a.private_copy()  # members and generators included, continuing the user's stream
        if adapter is not None and private.adapter is None:
            private.adapter = adapter
        out[name] = private
    return out


def stop_early(named: Dict[str, Attack], keep: Iterable[str] = ()) -> None:
    """Switch ``early_stop`` on for the private copies in ``named`` that can stop early
    (``can_stop_early``), except those named in ``keep``, whose results are read beyond robust accuracy.
    The members of an :class:`~mmrobust.attacks.Ensemble` (private copies too) are switched alike."""
    keep = set(keep)
    for name, attack in named.items():
        if name not in keep:
            _stop_early(attack)


def _stop_early(attack: Attack) -> None:
    if getattr(attack, "can_stop_early", False):
        attack.early_stop = True
    for member in getattr(attack, "attacks", None) or ():  # an Ensemble's members
        _stop_early(member)


def move_batch(batch: Any, device: torch.device) -> Any:
    """Every tensor of a (nested) tuple/list/dict batch on ``device``; objects with ``.to`` (PyG) too."""
    if isinstance(batch, torch.Tensor) or (hasattr(batch, "to") and not isinstance(batch, (Mapping, list, tuple))):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return type(batch)({k: move_batch(v, device) for k, v in batch.items()}) if type(batch) is not dict \
            else {k: move_batch(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_batch(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_batch(v, device) for v in batch)
    return batch


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def evaluate(model: nn.Module, dataloader: Iterable, attacks: Attacks, *, adapter: Optional[BatchAdapter] = None,
             max_batches: Optional[int] = None, progress: bool = True,
             device: Optional[Union[str, torch.device]] = None, early_stop: bool = True,
             checks: Union[bool, str, Sequence[str], None] = True,
             pool_units: Optional[int] = POOL_UNITS) -> Dict[str, Any]:
    """Clean and robust accuracy of ``model`` under every attack, worst case per output.

    Attacks with a ``seed`` restart their random streams at it (:meth:`Attack.reseed`), so repeated calls
    give the same numbers. Every attack runs on every batch; an output is robust only if it is correct
    clean and under every attack (the ensemble evaluation of Croce & Hein 2020, https://arxiv.org/abs/2003.01690):

    .. math:: \\mathrm{RA} = \\frac1N\\sum_n \\mathbb 1[f(x_n)=y_n]\\prod_a \\mathbb 1[f(x_n+\\delta^a_n)=y_n]

    Args:
        model: the classifier; its modes, ``requires_grad`` flags and weights are unchanged afterwards.
        dataloader: any iterable of batches the adapter understands.
        attacks: an :class:`~mmrobust.attacks.Attack`, a list of them, or a dict ``name -> Attack``.
        adapter: how to read batches, for attacks that have none (inferred from the batch otherwise).
        max_batches: stop after this many batches (``None``: the whole loader).
        progress: show a tqdm progress bar (one tick per attack and batch) when stderr is a terminal.
        device: where to evaluate; default the model's device. The model is moved there for the
            evaluation and moved back afterwards.
        early_stop: run PGD- and APGD-family attacks (``can_stop_early``) with ``early_stop=True``: each output
            leaves an attack's working batch once it is adversarial. Only whether an output was broken is
            read here, so the accuracies are those of the full attack (up to floating-point effects of
            smaller batches) at a fraction of the cost when many outputs break early. The user's attack
            objects are not changed; ``False`` keeps each attack's own setting.
        checks: the attack-failure checks of :mod:`mmrobust.checks` (``True``: all, a list of names, or
            ``False``): randomised forward, probability outputs, zero or masked gradients, FGSM beating the
            attacks, accuracy at 10x the budget, an unconverged loss or late restarts, Square beating the
            gradient attacks, unused edge budget. They cost a few forward/backward passes and three small attack
            reruns on 32 units of the first batch (:class:`~mmrobust.checks.FailureChecks`), do not change the
            numbers, and a warning lists the ones that fired.
        pool_units: an :class:`~mmrobust.attacks.Ensemble` runs its members after the first on the outputs
            still robust in consecutive batches pooled together, until the pooled batches reach this many
            units (:class:`~mmrobust.attacks.survivors.EnsemblePool`), in chunks of the batch size, as the
            reference AutoAttack runs each member on the survivors of its whole data set: few survivors per
            batch then no longer pay every step's per-call overhead once per batch. The numbers are those
            of the ensemble on each batch up to the members' random draws (other chunks draw other random
            numbers; seeded, so repeated calls agree), and every returned point is still checked per batch.
            The pooled batches stay in memory (on ``device``) until their survivors are attacked; the
            default 2048 holds 8 batches of 256, enough that survivors fill a whole chunk once about one
            unit in eight survives (at 10 % robust accuracy ~200 of 256), while 2048 CIFAR-10 images
            are 25 MB (ImageNet at 224 px: 1.2 GB, lower it there). Batches whose survivors cannot be
            joined (graphs, audio padded to different lengths, batches other than tuples, lists and
            dicts of tensors) run per batch, as with ``None`` (each batch alone).

    Every returned point is checked against its attack's threat model, measured independently of the
    attack's own bookkeeping (:mod:`mmrobust.threats.verify`): a point outside its budget or value box
    raises :class:`~mmrobust.errors.BudgetViolation`; attacks unbounded by design (``FMN(cap=False)``)
    have such points dropped (counted as not broken), so the robust accuracy is the one at the budget.

    Returns:
        ``clean_accuracy``, ``robust_accuracy`` (worst case), ``per_attack`` (robust accuracy under
        each attack alone), ``attack_success_rate`` (any attack, of clean-correct outputs),
        ``num_examples`` (scored outputs), ``num_batches``, ``attacks`` (name -> description), and with
        ``checks``: ``checks`` (one dict per check: ``name``, ``status``, ``fired``, ``evidence``, ``advice``,
        ``ran``, ``values``) and ``check_flags`` (the names of the checks that fired).
    """
    if max_batches is not None:
        check_int("max_batches", max_batches, 1)
    if pool_units is not None:
        check_int("pool_units", pool_units, 1)
    failure_checks = FailureChecks(checks)
    named = named_attacks(attacks, adapter)
    for attack in named.values():  # every call draws the same random starts (Attack.reseed)
        attack.reseed()
    if early_stop:  # on private copies: the user's attacks keep their setting
        stop_early(named)
    home = model_device(model)
    target_device = home if device is None else torch.device(device)
    worst, success = RobustAccuracy(), AttackSuccessRate()
    per_attack = {name: RobustAccuracy() for name in named}
    total = max_batches
    if total is None:
        try:
            total = len(dataloader)  # type: ignore[arg-type]
        except TypeError:
            total = None
    pools = {name: EnsemblePool(a, model) for name, a in named.items()
             if pool_units is not None and isinstance(a, Ensemble)}
    pending: List[Tuple[Any, Dict[str, Any]]] = []  # batches whose pooled ensembles have not finished
    batches = 0
    bar = None

    def record() -> None:
        """Finish the pooled ensembles on the waiting batches, then score those batches in order."""
        for name, pool in pools.items():
            for (batch, found), result in zip(pending, pool.finish()):
                found[name] = verify_result(named[name], model, batch, result)
                if bar is not None:
                    bar.update(1)
        for batch, found in pending:
            results = [found[name] for name in named]
            worst.update(results)
            success.update(results)
            for name, r in zip(named, results):
                per_attack[name].update(r)
            failure_checks.observe(model, batch, named, results)
        pending.clear()
        if bar is not None and batches:
            bar.set_postfix(clean=f"{worst.clean_accuracy().item():.3f}",
                            robust=f"{worst.compute().item():.3f}", refresh=False)

    try:
        if target_device != home:
            model.to(target_device)
        if progress:
            from tqdm.auto import tqdm

            # one tick per attack and batch, so a single long batch still moves; quiet when not on a TTY
            bar = tqdm(total=None if total is None else total * len(named), desc="robustness evaluation",
                       unit="attack", disable=None)
        try:
            for batch in dataloader:
                if max_batches is not None and batches >= max_batches:
                    break
                batch = move_batch(batch, target_device)
                found: Dict[str, Any] = {}
                for name, attack in named.items():
                    if bar is not None:
                        bar.set_postfix_str(f"batch {batches + 1}: {name}")
                    if name in pools:  # its first member now, the others once the pool is full
                        pools[name].add(batch)
                        continue
                    found[name] = run_checked(attack, model, batch)
                    if bar is not None:
                        bar.update(1)
                pending.append((batch, found))
                batches += 1
                if any(p.units >= pool_units or not p.poolable for p in pools.values()) or not pools:
                    record()
            record()
        finally:
            for pool in pools.values():  # after an exception: nothing stays held
                pool.states = []
            if bar is not None:
                bar.close()
    finally:
        if target_device != home:
            model.to(home)
    if batches == 0:
        raise ValueError("dataloader yielded no batches; nothing was evaluated")
    out = {
        "clean_accuracy": worst.clean_accuracy().item(),
        "robust_accuracy": worst.compute().item(),
        "per_attack": {name: m.compute().item() for name, m in per_attack.items()},
        "attack_success_rate": success.compute().item(),
        "num_examples": int(worst.total.item()),
        "num_batches": batches,
        "attacks": {name: a.describe() for name, a in named.items()},
    }
    if failure_checks:
        found = failure_checks.results()
        out["checks"] = [c.as_dict() for c in found]
        out["check_flags"] = [c.name for c in found if c.fired]
        warn_fired(found, "mmrobust.evaluate")
    return out
