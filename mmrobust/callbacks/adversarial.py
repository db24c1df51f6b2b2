"""Adversarial training as Lightning callbacks: the training batch is replaced by adversarial examples
(single-step training with its catastrophic-overfitting probe: :mod:`.fast_adversarial`).

Lightning hands ``Callback.on_train_batch_start`` the very batch object that ``training_step`` receives
next (after the device transfer), and callbacks have no hook that may return a new batch
(``on_after_batch_transfer`` belongs to the LightningModule/DataModule).  The callbacks therefore replace
the batch's *entries* in place -- list items, dict values, or attributes of objects such as PyG ``Data``
-- with new tensors; the user's tensors themselves are never written to.  Tuples cannot be changed in
place: return lists or dicts from the collate function (the default collate already returns lists).
"""

from __future__ import annotations

import math
import time
from collections.abc import MutableMapping, MutableSequence
from typing import Any, Dict, Optional

import pytorch_lightning as pl
import torch

from ..adapters.base import BatchAdapter, stage_adapter
from ..attacks.base import Attack, attack_mode, victim_for
from ..errors import check_finite_nonneg, check_fraction, check_int
from ..threats.joint import scaled_threat
from ..utils import make_generator


def assign_batch(batch: Any, new: Any) -> None:
    """Make ``batch`` hold ``new``'s entries, replacing references only (never writing into tensors)."""
    if isinstance(batch, MutableMapping):
        for k in new:
            batch[k] = new[k]
        return
    if isinstance(batch, MutableSequence):
        for i, v in enumerate(new):
            batch[i] = v
        return
    if isinstance(batch, tuple):
        raise TypeError(
            "adversarial training callbacks replace the training batch's entries in place, but this batch "
            f"is an immutable {type(batch).__name__}; return a list or a dict from the DataLoader's "
            "collate_fn (torch's default collate already returns lists for (x, y) samples) or use "
            "mmrobust.training.RobustClassifier, which attacks inside training_step")
    keys = getattr(batch, "keys", None)
    if callable(keys) and hasattr(batch, "__setattr__"):  # PyG Data/Batch and similar attribute stores
        for k in (new.keys() if callable(getattr(new, "keys", None)) else keys()):
            setattr(batch, k, getattr(new, k))
        return
    raise TypeError(f"cannot replace the entries of a batch of type {type(batch).__name__} in place; "
                    "use lists, dicts or PyG Data batches")


def attack_at_budget(attack: Attack, factor: float, adapter: Optional[BatchAdapter] = None) -> Attack:
    """``attack`` at ``factor`` x its budget (warm-up), reading batches with ``adapter`` where it has none;
    ``attack`` itself when nothing changes. A copy shares the attack's random generator, so its random
    starts advance the same (checkpointed) stream."""
    needs_adapter = adapter is not None and attack.adapter is None
    if factor >= 1.0 and not needs_adapter:
        return attack
    attack.generator()  # created first, so that the copy shares it
    copy = attack.with_threat(attack.threat if factor >= 1.0 else scaled_threat(attack.threat, factor))
    if needs_adapter:
        copy.adapter = adapter
    return copy


class AdversarialTraining(pl.Callback):
    """Adversarial training (Madry et al. 2018, https://arxiv.org/abs/1706.06083, Eq. 2.1).

    .. math:: \\min_\\theta\\ \\mathbb{E}_{(x,y)}\\Big[\\max_{\\delta \\in \\Delta(x)} \\mathcal{L}(f_\\theta(x+\\delta), y)\\Big]

    Before every ``training_step`` (from ``start_epoch`` on, every ``every_n_steps`` steps) the batch's
    attackable inputs are replaced by ``attack.generate(pl_module, batch)``; the module's own
    ``training_step`` then minimises its loss on them.  The attack runs with the module in eval mode
    (batch-norm statistics untouched) and parameters frozen, and everything is restored afterwards
    (:func:`~mmrobust.attacks.attack_mode`).

    Args:
        attack: the inner maximisation, e.g. ``PGD(LinfBall(0.3, lower=0, upper=1), steps=40, seed=0)``.
            Give it a ``seed`` for reproducible and resumable runs.
        ratio: fraction of each batch's units replaced by adversarial versions (1: all, Madry et al.;
            0.5: the mixed objective of Goodfellow et al. 2015).  Units are drawn at random with the
            callback's own seeded generator; only the drawn units are attacked.
        every_n_steps: attack every n-th training batch (others stay clean).
        warmup_epochs: linear budget warm-up from 0 to the attack's budget over this many epochs after
            ``start_epoch`` (per step, fractional epochs allowed); 0 disables it.
        start_epoch: first epoch with adversarial batches (clean pre-training before it).
        adapter: how to read the batch; the attack's adapter or :func:`infer_adapter` when ``None``.
        seed: seed of the generator that picks the adversarial units when ``ratio < 1``.
        log_metrics: log what the callback does, every ``Trainer(log_every_n_steps)`` steps:
            ``train/at/adv_acc`` (accuracy on the adversarial batch, one extra forward pass in eval mode on
            logging steps only), ``train/at/budget`` (fraction of the full budget: below 1 during
            warm-up) and ``train/at/attack_time_s`` (seconds the attack took on this step).
    """

    #: replaces the training batch; callbacks that read the batch (e.g. AWP) must be listed after it
    modifies_training_batch = True

    def __init__(self, attack: Attack, *, ratio: float = 1.0, every_n_steps: int = 1, warmup_epochs: float = 0,
                 start_epoch: int = 0, adapter: Optional[BatchAdapter] = None, seed: int = 0,
                 log_metrics: bool = True):
        if not isinstance(attack, Attack):
            raise TypeError(f"attack must be an mmrobust Attack, got {type(attack).__name__}")
        if attack.targeted:
            raise ValueError("adversarial training needs an untargeted attack (targeted=False)")
        self.attack = attack
        self.ratio = check_fraction("ratio", ratio, open_low=True)
        if self.ratio < 1.0 and attack.changes_structure:
            raise ValueError(f"ratio must be 1 for {type(attack).__name__} with edge flips: a graph's edge "
                             "perturbation cannot be split between clean and adversarial units (got "
                             f"ratio={ratio}); use ratio=1, or a feature-only threat to mix units")
        self.every_n_steps = check_int("every_n_steps", every_n_steps, 1)
        self.warmup_epochs = check_finite_nonneg("warmup_epochs", warmup_epochs)
        self.start_epoch = check_int("start_epoch", start_epoch, 0)
        self.adapter = adapter
        self.seed = check_int("seed", seed, 0)
        self.log_metrics = bool(log_metrics)  # not `log`: Lightning assigns callback.log
        self._generator: Optional[torch.Generator] = None
        self.steps_seen = 0
        self.adversarial_steps = 0
        self.current_budget_factor = 1.0

    # -- state ------------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return self._generate_state_key(attack=self.attack.describe(), ratio=self.ratio)

    def state_dict(self) -> Dict[str, Any]:
        return {"steps_seen": self.steps_seen, "adversarial_steps": self.adversarial_steps,
                "attack": self.attack.state_dict(),
                "rng": None if self._generator is None else self._generator.get_state()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.steps_seen = int(state_dict["steps_seen"])
        self.adversarial_steps = int(state_dict["adversarial_steps"])
        self.attack.load_state_dict(state_dict["attack"])
        if state_dict.get("rng") is not None:
            self._generator = make_generator(self.seed, "cpu")
            self._generator.set_state(state_dict["rng"])

    # -- schedule ---------------------------------------------------------------------------------
    def budget_factor(self, trainer: "pl.Trainer", batch_idx: int) -> float:
        """Fraction of the full budget at this step (linear warm-up)."""
        if self.warmup_epochs == 0:
            return 1.0
        per_epoch = trainer.num_training_batches
        progress = 0.0 if not per_epoch or math.isinf(per_epoch) else batch_idx / per_epoch
        done = trainer.current_epoch - self.start_epoch + progress
        return min(1.0, max(0.0, done / self.warmup_epochs))

    def is_active(self, trainer: "pl.Trainer") -> bool:
        return trainer.current_epoch >= self.start_epoch and self.steps_seen % self.every_n_steps == 0

    def _unit_generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = make_generator(self.seed, "cpu")
        return self._generator

    # -- the hook ---------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any,
                             batch_idx: int) -> None:
        active = self.is_active(trainer)
        self.steps_seen += 1
        if not active:
            return
        factor = self.budget_factor(trainer, batch_idx)
        self.current_budget_factor = factor
        logging_step = self.log_metrics and trainer.log_every_n_steps \
            and trainer.global_step % trainer.log_every_n_steps == 0
        if factor == 0.0:
            if logging_step:
                pl_module.log("train/at/budget", 0.0, on_step=True, on_epoch=False, batch_size=1)
            return
        # the batch is read with one adapter, inferred once per step (graphs: the training nodes); the attack
        # runs on that reading, so at the full budget it is the user's object itself, whose state (a learned
        # generator's update count, a universal perturbation) must persist -- never a copy holding the adapter
        adapter = self.training_adapter(batch, self.attack)
        attack = attack_at_budget(self.attack, factor)
        start = time.perf_counter()
        adv = self.adversarial_batch(pl_module, batch, attack, adapter)
        seconds = time.perf_counter() - start
        assign_batch(batch, adv)
        self.adversarial_steps += 1
        if logging_step:
            self._log_step(pl_module, adv, adapter, factor, seconds)

    def _log_step(self, pl_module: "pl.LightningModule", adv: Any, adapter: BatchAdapter, factor: float,
                  seconds: float) -> None:
        """``train/at/adv_acc``, ``train/at/budget``, ``train/at/attack_time_s`` (see ``log_metrics``)."""
        with attack_mode(pl_module), torch.no_grad():
            victim = victim_for(pl_module, adv, adapter)
            acc = (victim.forward(victim.inputs).argmax(-1) == victim.target).float().mean()
        size = victim.num_outputs
        for key, value in (("adv_acc", acc), ("budget", float(factor)), ("attack_time_s", float(seconds))):
            pl_module.log(f"train/at/{key}", value, on_step=True, on_epoch=False, batch_size=size)

    def training_adapter(self, batch: Any, attack: Attack) -> BatchAdapter:
        """How ``attack`` reads a training ``batch``: the attack's adapter, else the callback's, else the one
        inferred for the training stage (:func:`~mmrobust.adapters.base.stage_adapter`)."""
        return stage_adapter(batch, "train", attack.adapter or self.adapter)

    def adversarial_batch(self, model: torch.nn.Module, batch: Any, attack: Attack,
                          adapter: Optional[BatchAdapter] = None) -> Any:
        """``batch`` with (a ``ratio`` fraction of) its units replaced by adversarial versions, read with
        ``adapter`` (default: :meth:`training_adapter`)."""
        if isinstance(batch, tuple):
            assign_batch(batch, batch)  # fail before spending an attack on an immutable batch
        if adapter is None:
            adapter = self.training_adapter(batch, attack)
        with attack_mode(model):
            victim = victim_for(model, batch, adapter)
            if self.ratio >= 1.0:
                return victim.rebuild(attack.run_training(victim))  # as Attack.generate does
            n = victim.num_units
            k = max(1, int(round(self.ratio * n)))
            device = next(iter(victim.inputs.values())).device
            order = torch.randperm(n, generator=self._unit_generator()).to(device)
            chosen = order[:k].sort().values
            mixed = {name: t.clone() for name, t in victim.inputs.items()}
            if victim.select is not None:
                adv_inputs = attack.run_training(victim.select(chosen))
                for name in mixed:
                    mixed[name][chosen] = adv_inputs[name].to(mixed[name].dtype)
            else:  # units cannot be separated: attack all, keep the chosen units' perturbations
                adv_inputs = attack.run_training(victim)
                for name in mixed:
                    mixed[name][chosen] = adv_inputs[name][chosen]
        return victim.rebuild({name: t.detach() for name, t in mixed.items()})
