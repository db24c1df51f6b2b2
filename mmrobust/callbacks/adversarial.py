"""Adversarial training as Lightning callbacks: the training batch is replaced by adversarial examples.

Lightning hands ``Callback.on_train_batch_start`` the very batch object that ``training_step`` receives
next (after the device transfer), and callbacks have no hook that may return a new batch
(``on_after_batch_transfer`` belongs to the LightningModule/DataModule).  The callbacks therefore replace
the batch's *entries* in place -- list items, dict values, or attributes of objects such as PyG ``Data``
-- with new tensors; the user's tensors themselves are never written to.  Tuples cannot be changed in
place: return lists or dicts from the collate function (the default collate already returns lists).
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping, MutableSequence
from typing import Any, Dict, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from ..adapters.base import BatchAdapter, infer_adapter
from ..attacks.base import Attack, attack_mode
from ..attacks.pgd import FGSM, PGD
from ..errors import check_choice, check_finite_nonneg, check_fraction, check_int, check_positive
from ..threats.base import ThreatModel
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


def scaled_threat(threat, factor: float):
    """The threat (or mapping of threats) with every budget multiplied by ``factor``."""
    if isinstance(threat, ThreatModel):
        return threat.with_eps(threat.eps * factor)
    return {k: t.with_eps(t.eps * factor) for k, t in threat.items()}


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
    """

    #: replaces the training batch; callbacks that read the batch (e.g. AWP) must be listed after it
    modifies_training_batch = True

    def __init__(self, attack: Attack, *, ratio: float = 1.0, every_n_steps: int = 1, warmup_epochs: float = 0,
                 start_epoch: int = 0, adapter: Optional[BatchAdapter] = None, seed: int = 0):
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

    def _attack_at(self, factor: float, device, attack: Optional[Attack] = None) -> Attack:
        """``attack`` (default: the training attack) at this step's budget, reading batches with the
        callback's adapter if one is given."""
        attack = self.attack if attack is None else attack
        needs_adapter = self.adapter is not None and attack.adapter is None
        if factor >= 1.0 and not needs_adapter:
            return attack
        # create the generator first: the copy then shares it, so its random starts advance the same
        # (checkpointed) stream
        attack.generator(device)
        copy = attack.with_threat(attack.threat if factor >= 1.0 else scaled_threat(attack.threat, factor))
        if needs_adapter:
            copy.adapter = self.adapter
        return copy

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
        if factor == 0.0:
            return
        attack = self._attack_at(factor, pl_module.device).for_stage(batch, "train")
        adv = self.adversarial_batch(pl_module, batch, attack)
        assign_batch(batch, adv)
        self.adversarial_steps += 1

    def adversarial_batch(self, model: torch.nn.Module, batch: Any, attack: Attack) -> Any:
        """``batch`` with (a ``ratio`` fraction of) its units replaced by adversarial versions."""
        if isinstance(batch, tuple):
            assign_batch(batch, batch)  # fail before spending an attack on an immutable batch
        adapter = attack.adapter or infer_adapter(batch)
        if self.ratio >= 1.0:
            return attack.generate(model, batch)
        with attack_mode(model):
            victim = adapter.victim(model, batch)
        n = victim.num_units
        k = max(1, int(round(self.ratio * n)))
        device = next(iter(victim.inputs.values())).device
        order = torch.randperm(n, generator=self._unit_generator()).to(device)
        chosen = order[:k].sort().values
        mixed = {name: t.clone() for name, t in victim.inputs.items()}
        if victim.select is not None:
            sub = victim.select(chosen)
            adv_sub = attack.generate(model, sub.rebuild(sub.inputs))
            with attack_mode(model):
                adv_inputs = adapter.victim(model, adv_sub).inputs
            for name in mixed:
                mixed[name][chosen] = adv_inputs[name].to(mixed[name].dtype)
        else:  # units cannot be separated: attack all, keep the chosen units' perturbations
            with attack_mode(model):
                adv_inputs = adapter.victim(model, attack.generate(model, batch)).inputs
            for name in mixed:
                mixed[name][chosen] = adv_inputs[name][chosen]
        return victim.rebuild({name: t.detach() for name, t in mixed.items()})


def catastrophic_overfitting(pgd_acc: float, fgsm_acc: float, best_pgd_acc: float, *, co_threshold: float,
                             max_drop: float, min_fgsm_acc: float = 0.0) -> Optional[str]:
    """The rule :class:`FastAdversarialTraining` warns on; ``None`` when training looks healthy.

    Catastrophic overfitting (Wong et al. 2020, the section of that name) shows as PGD accuracy
    collapsing while FGSM accuracy stays high.  It is flagged when, on the probe batch,

    * ``pgd_acc < co_threshold * fgsm_acc`` while ``fgsm_acc >= min_fgsm_acc`` (PGD finds far more errors
      than the training attack, whose accuracy stays high in a collapse; the floor keeps early training
      quiet, where a model not yet robust shows e.g. FGSM 0.2-0.3 and PGD below half of it -- measured
      on MNIST, and enough to stop a run with ``on_overfit="restore"`` at its 40th step), or
    * ``pgd_acc < best_pgd_acc - max_drop`` (PGD accuracy fell more than ``max_drop`` below its best;
      Wong et al.'s early stopping uses a drop of 0.2 on a training minibatch).
    """
    if fgsm_acc >= min_fgsm_acc and pgd_acc < co_threshold * fgsm_acc:
        return (f"PGD probe accuracy {pgd_acc:.3f} is below {co_threshold:g} x the FGSM accuracy "
                f"{fgsm_acc:.3f}")
    if pgd_acc < best_pgd_acc - max_drop:
        return f"PGD probe accuracy {pgd_acc:.3f} dropped more than {max_drop:g} below its best {best_pgd_acc:.3f}"
    return None


class FastAdversarialTraining(AdversarialTraining):
    """Fast adversarial training: FGSM from a random start (Wong et al. 2020, https://arxiv.org/abs/2001.03994, Alg. 3).

    .. math:: \\delta = \\Pi_{\\Delta(x)}\\big(\\eta + \\alpha\\,\\mathrm{sign}\\nabla_\\eta \\mathcal{L}(f(x+\\eta), y)\\big),
              \\quad \\eta \\sim U(\\Delta(x)),\\ \\alpha = 1.25\\,\\epsilon

    plus a catastrophic-overfitting check: every ``probe_every_n_steps`` training steps a PGD attack
    (``probe_steps`` steps) and the FGSM attack are evaluated at the step's budget on the current clean
    batch (module in eval mode), ``train/pgd_probe_acc`` and ``train/fgsm_probe_acc`` are logged, and a
    rank-zero warning is raised the first time the rule of :func:`catastrophic_overfitting` fires;
    ``overfitting_detected`` then stays true (and is part of the checkpointed state). During the eps
    warm-up the probe is logged but never warns: with a growing budget PGD accuracy falls on a healthy
    model too, and FGSM lags behind on a model not yet robust, so both rules could fire falsely.

    What happens on a collapse is ``on_overfit``'s choice: ``"warn"`` (default) keeps training;
    ``"stop"`` asks the Trainer to stop after the current step; ``"restore"`` also stops and, when
    training ends, loads the module's weights (parameters and buffers) from the last healthy probe --
    Wong et al.'s early stopping, which keeps the weights from before a PGD-accuracy drop (their code
    checks once per epoch; here every ``probe_every_n_steps`` steps, so at most that many steps are
    lost). Healthy means the rule did not fire; during the warm-up the PGD-vs-FGSM rule alone decides,
    at the probe's own budget (a false alarm there only keeps the copy older), so a collapse during the
    warm-up rewinds to weights trained at a smaller budget. The healthy copy lives on the CPU and in the
    callback's checkpointed state; what other callbacks keep in the module's state (pruning masks,
    quantiser ranges) rewinds with it, and if the state's entries changed since, nothing is restored
    (a warning says so). If no probe was healthy before the collapse, nothing is restored (a
    warning says so); selecting checkpoints by robust accuracy (:class:`~mmrobust.callbacks.RobustnessEvaluation`
    logs ``val/robust_acc`` for ``ModelCheckpoint(monitor="val/robust_acc", mode="max")``) covers that
    case too. Under DDP a collapse seen on any process counts on all, so every process stops and restores
    the same weights. Optimizer and scheduler states are not rewound. The paper's cyclic learning rate
    is ``RobustClassifier(..., scheduler="cyclic")``.

    Args:
        threat: the budget (e.g. ``LinfBall(0.3, lower=0, upper=1)``).
        step_size: FGSM step as a fraction of the radius (1.25 in the paper).
        probe_every_n_steps: steps between probes (0 disables the probe).
        probe_steps: PGD steps of the probe.
        co_threshold / max_drop / min_fgsm_acc: the collapse rule, see :func:`catastrophic_overfitting`;
            it warns once (the first time it fires) and sets ``overfitting_detected``. ``co_threshold=0``
            leaves only Wong et al.'s drop rule.
        on_overfit: ``"warn"``, ``"stop"`` or ``"restore"`` (see above).
        seed: seeds the FGSM random starts, the probe's random starts and the unit draws.
        Other keyword arguments go to :class:`AdversarialTraining`.
    """

    def __init__(self, threat, *, step_size: float = 1.25, probe_every_n_steps: int = 50, probe_steps: int = 10,
                 co_threshold: float = 0.5, max_drop: float = 0.2, min_fgsm_acc: float = 0.5,
                 on_overfit: str = "warn", seed: int = 0, **kwargs):
        attack = FGSM(threat, step_size=check_positive("step_size", step_size), random_start=True, seed=seed,
                      adapter=kwargs.get("adapter"))
        super().__init__(attack, seed=seed, **kwargs)
        self.probe_every_n_steps = check_int("probe_every_n_steps", probe_every_n_steps, 0)
        self.probe = PGD(threat, steps=check_int("probe_steps", probe_steps, 1), seed=seed + 1,
                         adapter=kwargs.get("adapter"))
        self.co_threshold = check_fraction("co_threshold", co_threshold)
        self.max_drop = check_fraction("max_drop", max_drop)
        self.min_fgsm_acc = check_fraction("min_fgsm_acc", min_fgsm_acc)
        self.on_overfit = check_choice("on_overfit", on_overfit, ("warn", "stop", "restore"))
        self.best_probe_acc = -1.0
        self.overfitting_detected = False
        self.last_probe: Optional[Dict[str, float]] = None
        #: with ``on_overfit="restore"``: the module's state at the last healthy judged probe (CPU copies)
        self.healthy_state: Optional[Dict[str, torch.Tensor]] = None
        #: the training step (``steps_seen``) of that probe
        self.healthy_step: Optional[int] = None

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state.update(probe=self.probe.state_dict(), best_probe_acc=self.best_probe_acc,
                     overfitting_detected=self.overfitting_detected, healthy_state=self.healthy_state,
                     healthy_step=self.healthy_step)
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.probe.load_state_dict(state_dict["probe"])
        self.best_probe_acc = float(state_dict["best_probe_acc"])
        self.overfitting_detected = bool(state_dict["overfitting_detected"])
        self.healthy_state = state_dict.get("healthy_state")
        self.healthy_step = state_dict.get("healthy_step")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if (self.probe_every_n_steps and trainer.current_epoch >= self.start_epoch
                and self.steps_seen % self.probe_every_n_steps == 0):
            factor = self.budget_factor(trainer, batch_idx)
            if factor > 0.0:
                self.run_probe(pl_module, batch, budget_factor=factor)
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def run_probe(self, pl_module: "pl.LightningModule", batch: Any, budget_factor: float = 1.0) -> Optional[str]:
        """PGD and FGSM accuracy on the clean ``batch`` at ``budget_factor`` x the budget; logs them, keeps
        them in ``last_probe``, at the full budget warns on catastrophic overfitting (returning the reason),
        and with ``on_overfit="restore"`` keeps a copy of healthy weights."""
        budget_factor = check_fraction("budget_factor", budget_factor, open_low=True)
        device = pl_module.device
        fgsm_attack = self._attack_at(budget_factor, device)
        probe = self._attack_at(budget_factor, device, self.probe)
        pgd = probe.for_stage(batch, "train")(pl_module, batch)
        fgsm = fgsm_attack.for_stage(batch, "train")(pl_module, batch)
        pgd_acc = pgd.adv_correct.float().mean().item()
        fgsm_acc = fgsm.adv_correct.float().mean().item()
        self.last_probe = {"pgd_acc": pgd_acc, "fgsm_acc": fgsm_acc, "budget_factor": budget_factor}
        trainer = getattr(pl_module, "_trainer", None)  # None: called by hand, outside a Trainer
        if trainer is not None:
            pl_module.log("train/pgd_probe_acc", pgd_acc, on_step=True, on_epoch=False)
            pl_module.log("train/fgsm_probe_acc", fgsm_acc, on_step=True, on_epoch=False)
        judged = budget_factor >= 1.0
        # During the warm-up the budget grows: a drop from the best accuracy means nothing there, and the
        # PGD-vs-FGSM rule can misfire (FGSM lags behind on a model not yet robust). Such probes never
        # warn; they only decide whether the weights may serve as the healthy copy.
        reason = catastrophic_overfitting(pgd_acc, fgsm_acc, self.best_probe_acc if judged else -1.0,
                                          co_threshold=self.co_threshold, max_drop=self.max_drop,
                                          min_fgsm_acc=self.min_fgsm_acc)
        if trainer is not None and trainer.world_size > 1:  # any process's flag counts on all of them
            flagged = trainer.strategy.reduce_boolean_decision(reason is not None, all=False)
            if flagged and reason is None:
                reason = "flagged by the probe of another process"
        if judged:
            self._judge(trainer, pgd_acc, reason)
        if reason is None and not self.overfitting_detected and self.on_overfit == "restore":
            self.healthy_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
            self.healthy_step = self.steps_seen
        return reason if judged else None

    def _judge(self, trainer: Optional["pl.Trainer"], pgd_acc: float, reason: Optional[str]) -> None:
        self.best_probe_acc = max(self.best_probe_acc, pgd_acc)
        if reason is not None and not self.overfitting_detected:  # once; the logged probe shows the rest
            action = {"warn": "Consider a smaller step_size, early stopping (on_overfit='restore') or PGD "
                              "training.",
                      "stop": "Stopping training (on_overfit='stop').",
                      "restore": "Stopping training (on_overfit='restore'); " + (
                          "no probe before was healthy, so there are no weights to restore."
                          if self.healthy_step is None else
                          f"the weights of the last healthy probe (step {self.healthy_step}) are restored when "
                          "it ends.")}
            rank_zero_warn(f"FastAdversarialTraining: possible catastrophic overfitting at step {self.steps_seen}: "
                           f"{reason}. {action[self.on_overfit]}")
            if trainer is not None and self.on_overfit != "warn":
                trainer.should_stop = True
        self.overfitting_detected = self.overfitting_detected or reason is not None

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.on_overfit != "restore" or not self.overfitting_detected:
            return
        if self.healthy_state is None:
            rank_zero_warn("FastAdversarialTraining(on_overfit='restore'): no probe was healthy before the "
                           "collapse, so there are no healthy weights to restore; the module keeps its last "
                           "weights (probe more often, or select checkpoints by val/robust_acc)")
            return
        changed = set(self.healthy_state) ^ set(pl_module.state_dict())
        if changed:  # entries a module or callback registered during training, after the healthy probe
            rank_zero_warn("FastAdversarialTraining(on_overfit='restore'): the module's state changed shape since "
                           f"the healthy probe at step {self.healthy_step} (entries {sorted(changed)[:4]} differ), "
                           "so the weights are not restored")
            return
        pl_module.load_state_dict(self.healthy_state)
