"""Catastrophic-overfitting monitor for any adversarial training: a PGD-vs-FGSM probe, a trend rule, early stopping."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from ..attacks.pgd import PGD
from ..attacks.single_step import FGSMRS
from ..errors import check_choice, check_fraction, check_int
from .adversarial import AdversarialTraining, attack_at_budget


def catastrophic_overfitting(pgd_acc: float, fgsm_acc: float, best_pgd_acc: float, *, co_threshold: float,
                             max_drop: float, min_fgsm_acc: float = 0.0, severe_ratio: float = 0.1,
                             severe_min_fgsm_acc: float = 0.2) -> Optional[str]:
    """The collapse signature on one reading of the probe; ``None`` when it is absent.

    Catastrophic overfitting (Wong et al. 2020, https://arxiv.org/abs/2001.03994, Sec. 5.1) shows as PGD
    accuracy collapsing while FGSM accuracy stays high. The signature is

    * ``pgd_acc < co_threshold * fgsm_acc`` while ``fgsm_acc >= min_fgsm_acc`` (PGD finds far more errors
      than the single-step attack, whose accuracy stays high in a collapse; the floor keeps early training
      quiet, where a model not yet robust shows e.g. FGSM 0.3 and PGD 0.05-0.08), or
    * ``pgd_acc < severe_ratio * fgsm_acc`` while ``fgsm_acc >= severe_min_fgsm_acc`` (PGD breaks nearly
      every point FGSM leaves: plain FGSM training on MNIST at eps 0.3 shows FGSM 0.2-0.45 with PGD
      0.00-0.02 on a short schedule, below the first floor), or
    * ``pgd_acc < best_pgd_acc - max_drop`` (PGD accuracy fell more than ``max_drop`` below its best;
      Wong et al.'s early stopping uses a drop of 0.2 on a training minibatch).

    :class:`CollapseRule` decides whether a signature lasts long enough to be a collapse.
    """
    if fgsm_acc >= min_fgsm_acc and pgd_acc < co_threshold * fgsm_acc:
        return (f"PGD probe accuracy {pgd_acc:.3f} is below {co_threshold:g} x the FGSM accuracy "
                f"{fgsm_acc:.3f}")
    if fgsm_acc >= severe_min_fgsm_acc and pgd_acc < severe_ratio * fgsm_acc:
        return (f"PGD probe accuracy {pgd_acc:.3f} is below {severe_ratio:g} x the FGSM accuracy "
                f"{fgsm_acc:.3f}")
    if pgd_acc < best_pgd_acc - max_drop:
        return f"PGD probe accuracy {pgd_acc:.3f} dropped more than {max_drop:g} below its best {best_pgd_acc:.3f}"
    return None


def robustness_drop(pgd_acc: float, fgsm_acc: float, best_pgd_acc: float, *, max_drop: float = 0.2,
                    min_fgsm_acc: float = 0.5, drop_from: float = 0.5) -> Optional[str]:
    r"""The drop signature: PGD accuracy fell from a robust best while FGSM accuracy stays high; ``None`` when absent.

    Wong et al. 2020 (https://arxiv.org/abs/2001.03994, Sec. 5.3; ``CIFAR10/train_fgsm.py --early-stop`` in
    ``locuslab/fast_adversarial``) stop training once the PGD accuracy (PGD-5, one restart) on a training
    minibatch, checked after every epoch, falls by more than 0.2 from the previous check:
    ``robust_acc - prev_robust_acc < -0.2``. Read on the smoothed probe, against its running best
    :math:`b`, the signature is

    .. math:: b \ge \text{drop\_from} \;\wedge\; \text{pgd} < b - \text{max\_drop} \;\wedge\;
              \text{fgsm} \ge \text{min\_fgsm\_acc}

    a collapse *after* the model had become robust (``drop_from``: at least half the batch withstood PGD;
    the early phase of a healthy run, where PGD accuracy rises and falls below ~0.35 while FGSM accuracy
    rises, never was robust and is not a drop), with the single-step attack still failing (FGSM accuracy
    high). It is a case of :func:`catastrophic_overfitting`'s third clause, so a probe showing it is never
    taken as healthy.
    """
    if best_pgd_acc >= drop_from and pgd_acc < best_pgd_acc - max_drop and fgsm_acc >= min_fgsm_acc:
        return (f"PGD probe accuracy {pgd_acc:.3f} dropped more than {max_drop:g} below its best "
                f"{best_pgd_acc:.3f} while the FGSM accuracy is {fgsm_acc:.3f}")
    return None


class CollapseRule:
    """The trend rule of :class:`CatastrophicOverfittingMonitor`, fed one probe at a time.

    A probe reading is the mean of the last ``window`` probes' PGD and FGSM accuracies (one probe batch is
    noisy). The run is flagged when :func:`catastrophic_overfitting`'s signature has held on every reading
    for at least ``patience_steps`` training steps without PGD accuracy reaching a new best (by more than
    ``margin``). Why a trend, and why a long one: on Wong et al.'s MNIST recipe (6000 steps) *healthy*
    FGSM-RS runs show the signature early, while the learning rate rises -- PGD 0.01-0.13 with FGSM
    0.5-0.8 on the training batch -- for ~350 steps (seed 0), ~1200 (Wong et al.'s own loop, seed 1) and
    ~1900 (seed 2) before PGD accuracy climbs to 0.8; collapsed runs show the same values and never
    recover (``benchmarks/results/single_step_mnist.md``). No threshold on the readings separates the two;
    only their persistence does. ``patience_steps=0`` flags the first signature.

    A second, faster path: the run is also flagged once :func:`robustness_drop` (Wong et al.'s early-stopping
    criterion: a drop of more than ``max_drop`` below a robust best while FGSM accuracy stays high) has
    held on every reading for ``drop_patience_steps`` steps (``None``: this path is off). It catches a
    model that had become robust and lost it -- a partial collapse, where PGD accuracy may climb back a
    little and so restart the patience above. On the same recipe no healthy run held such a drop for
    more than one reading; the partial collapse of GradAlign (lambda 0.5, seed 1) held it for 2200 steps.
    """

    def __init__(self, *, co_threshold: float = 0.5, max_drop: float = 0.2, min_fgsm_acc: float = 0.5,
                 window: int = 3, patience_steps: int = 0, margin: float = 0.02,
                 drop_patience_steps: Optional[int] = None, drop_from: float = 0.5):
        self.co_threshold = check_fraction("co_threshold", co_threshold)
        self.max_drop = check_fraction("max_drop", max_drop)
        self.min_fgsm_acc = check_fraction("min_fgsm_acc", min_fgsm_acc)
        self.window = check_int("probe_window", window, 1)
        self.patience_steps = check_int("patience_steps", patience_steps, 0)
        self.margin = check_fraction("margin", margin)
        self.drop_patience_steps = (None if drop_patience_steps is None
                                    else check_int("drop_patience_steps", drop_patience_steps, 0))
        self.drop_from = check_fraction("drop_from", drop_from)
        #: the step from which the drop signature has held (``None``: not holding)
        self.drop_since: Optional[int] = None
        #: the last ``window`` judged probes, ``(pgd_acc, fgsm_acc)``
        self.recent: List[Tuple[float, float]] = []
        #: best mean PGD accuracy so far
        self.best = -1.0
        #: the step from which the signature has held (``None``: not holding)
        self.since: Optional[int] = None

    def signature(self, pgd_acc: float, fgsm_acc: float) -> Optional[str]:
        return catastrophic_overfitting(pgd_acc, fgsm_acc, self.best, co_threshold=self.co_threshold,
                                        max_drop=self.max_drop, min_fgsm_acc=self.min_fgsm_acc)

    def update(self, step: int, pgd_acc: float, fgsm_acc: float) -> Tuple[Optional[str], bool]:
        """Feeds the probe of training step ``step``; returns ``(reason, suspect)``: the reason when the run
        is flagged (else ``None``), and whether the signature shows on the reading or on this probe alone."""
        self.recent = (self.recent + [(pgd_acc, fgsm_acc)])[-self.window:]
        pgd_mean = sum(p for p, _ in self.recent) / len(self.recent)
        fgsm_mean = sum(f for _, f in self.recent) / len(self.recent)
        reason = self.signature(pgd_mean, fgsm_mean)
        drop = self.drop_signature(pgd_mean, fgsm_mean)  # implies ``reason`` (its third clause)
        suspect = reason is not None or (len(self.recent) > 1 and self.signature(pgd_acc, fgsm_acc) is not None)
        if reason is None or (self.since is not None and pgd_mean > self.best + self.margin):
            self.since = None if reason is None else step  # gone, or PGD is still climbing: start again
        elif self.since is None:
            self.since = step
        if drop is None:
            self.drop_since = None
        elif self.drop_since is None:
            self.drop_since = step
        self.best = max(self.best, pgd_mean)
        means = f" (means of the last {len(self.recent)} probes)" if len(self.recent) > 1 else ""
        if drop is not None and step - self.drop_since >= self.drop_patience_steps:
            return drop + means + f", for {step - self.drop_since} steps", suspect
        if reason is None or step - self.since < self.patience_steps:
            return None, suspect
        reason += means
        if self.patience_steps:
            reason += f", for {step - self.since} steps without a new best PGD accuracy"
        return reason, suspect

    def drop_signature(self, pgd_acc: float, fgsm_acc: float) -> Optional[str]:
        """:func:`robustness_drop` against the best so far; always ``None`` while the drop path is off."""
        if self.drop_patience_steps is None:
            return None
        return robustness_drop(pgd_acc, fgsm_acc, self.best, max_drop=self.max_drop,
                               min_fgsm_acc=self.min_fgsm_acc, drop_from=self.drop_from)

    def state_dict(self) -> Dict[str, Any]:
        return {"recent": list(self.recent), "best": self.best, "since": self.since, "drop_since": self.drop_since}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.recent = [tuple(p) for p in state.get("recent", [])]
        self.best = float(state.get("best", -1.0))
        self.since = state.get("since")
        self.drop_since = state.get("drop_since")


class CatastrophicOverfittingMonitor(pl.Callback):
    """Watches any adversarial training for catastrophic overfitting and can stop it and restore healthy weights.

    Every ``every_n_steps`` training steps a PGD attack (``probe_steps`` steps, seed ``seed + 1``) and
    FGSM-RS (seed ``seed + 2``) are run on the step's clean batch at the training budget (module in eval
    mode, own random generators: the training perturbations' random stream and the weights are the same
    with and without the monitor); ``train/pgd_probe_acc`` and ``train/fgsm_probe_acc`` are logged. The
    readings go to :class:`CollapseRule`; once it flags the run, a rank-zero warning names the step and
    the reason, and ``overfitting_detected`` stays true (part of the checkpointed state). ``patience`` is
    a fraction of the run's training steps (``Trainer.estimated_stepping_batches``): the learning-rate
    schedule, and with it the healthy run's transient phase, scale with the run's length. A drop from a
    robust best (Wong et al. 2020's early-stopping criterion, :func:`robustness_drop`) is flagged sooner,
    once it has held for ``drop_patience`` of the run.

    During the training callback's eps warm-up the probe runs at the step's budget and never flags: with
    a growing budget PGD accuracy falls on a healthy model too. Those probes only decide whether the
    weights may serve as the healthy copy.

    ``on_overfit``: ``"warn"`` (default) keeps training; ``"stop"`` asks the Trainer to stop after the
    current step; ``"restore"`` also stops and, when training ends, loads the module's weights (parameters
    and buffers) from the last healthy probe (Wong et al.'s early stopping, checked every
    ``every_n_steps`` steps instead of every epoch). Healthy means the signature showed neither on the
    reading nor on the probe alone, so the copy predates the start of the suspect phase. The copy lives on
    the CPU and in the checkpointed state; what other callbacks keep in the module's state (pruning
    masks, quantiser ranges) rewinds with it; if the state's entries changed since, or no probe was
    healthy, nothing is restored (a warning says so). Under DDP a collapse seen on any process counts on
    all. Optimizer and scheduler states are not rewound.

    Used on its own, list it *before* the adversarial-training callback (it probes the clean batch, which
    that callback replaces); the warm-up and start epoch are read from that callback.
    :class:`~mmrobust.callbacks.FastAdversarialTraining` contains one.

    Args:
        threat: the budget the probe attacks at (the training budget).
        every_n_steps: steps between probes (0 disables the monitor).
        probe_steps: PGD steps of the probe.
        co_threshold / max_drop / min_fgsm_acc: the signature, see :func:`catastrophic_overfitting`.
        probe_window: readings are means of this many last probes.
        patience: how long (fraction of the run's steps) the signature must hold without a new best PGD
            accuracy before the run is flagged; 0 flags the first signature. The default 0.4 keeps every
            healthy run of Wong et al.'s MNIST recipe measured silent -- the longest early phase, Wong et
            al.'s own loop on seed 2, held the signature for ~0.37 of the run (0.35, the earlier default,
            flagged it at step 2700 of 6000) -- and flags their collapsed runs (clipped-noise N-FGSM at
            step 2900, FGSM-RS seed 1 before the lr fix at 4300 of 6000), late but with the weights of
            before the collapse kept for ``on_overfit="restore"``. Shorter patience warns earlier and falsely on slow healthy starts.
        drop_patience: how long (fraction of the run's steps) a drop of more than ``max_drop`` below a best
            PGD accuracy of at least ``drop_from``, with FGSM accuracy at least ``min_fgsm_acc``, must hold
            before the run is flagged (:func:`robustness_drop`); ``None`` turns this check off. The default
            0.05 (300 of 6000 steps; Wong et al.'s CIFAR-10 code checks once per epoch, 1/15 of its run) outlasts
            a window of probes, so one bad probe batch is not a drop: no healthy run of the MNIST recipe
            held a drop of even 0.07 for 300 steps, the partial collapse of GradAlign seed 1 held one of
            0.61 (flagged at step 4050 of 6000, which the patience above missed).
        drop_from: the best mean PGD probe accuracy from which a drop counts (the model had become robust).
        on_overfit: ``"warn"``, ``"stop"`` or ``"restore"``.
        adapter: how to read the batch (as the training callback's ``adapter``).
        seed: the probe's PGD uses ``seed + 1``, its FGSM-RS ``seed + 2``.
        training: the adversarial-training callback whose warm-up to follow (``None``: the first
            :class:`~mmrobust.callbacks.AdversarialTraining` among the Trainer's callbacks, if any).
    """

    def __init__(self, threat, *, every_n_steps: int = 50, probe_steps: int = 10, co_threshold: float = 0.5,
                 max_drop: float = 0.2, min_fgsm_acc: float = 0.5, probe_window: int = 3, patience: float = 0.4,
                 drop_patience: Optional[float] = 0.05, drop_from: float = 0.5, on_overfit: str = "warn",
                 adapter=None, seed: int = 0, training: Optional[AdversarialTraining] = None):
        seed = check_int("seed", seed, 0)
        self.every_n_steps = check_int("every_n_steps", every_n_steps, 0)
        self.probe = PGD(threat, steps=check_int("probe_steps", probe_steps, 1), seed=seed + 1, adapter=adapter)
        # the single-step side: FGSM-RS in the ball (N-FGSM's training points are not), own generator
        self.probe_fgsm = FGSMRS(threat, step_size=1.25, seed=seed + 2, adapter=adapter)
        self.patience = check_fraction("patience", patience)
        self.drop_patience = None if drop_patience is None else check_fraction("drop_patience", drop_patience)
        self.rule = CollapseRule(co_threshold=co_threshold, max_drop=max_drop, min_fgsm_acc=min_fgsm_acc,
                                 window=probe_window, drop_from=drop_from,
                                 drop_patience_steps=None if drop_patience is None else 0)
        self.on_overfit = check_choice("on_overfit", on_overfit, ("warn", "stop", "restore"))
        self.adapter = adapter
        self.training = training
        #: names the callback in warnings (FastAdversarialTraining sets its own name)
        self.name = type(self).__name__
        self.steps_seen = 0
        self.overfitting_detected = False
        self.last_probe: Optional[Dict[str, float]] = None
        #: with ``on_overfit="restore"``: the module's state at the last healthy judged probe (CPU copies)
        self.healthy_state: Optional[Dict[str, torch.Tensor]] = None
        #: the training step (``steps_seen``) of that probe
        self.healthy_step: Optional[int] = None

    @property
    def best_probe_acc(self) -> float:
        """Best mean PGD probe accuracy so far (-1 before the first judged probe)."""
        return self.rule.best

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"steps_seen": self.steps_seen, "probe": self.probe.state_dict(),
                "probe_fgsm": self.probe_fgsm.state_dict(), "rule": self.rule.state_dict(),
                "overfitting_detected": self.overfitting_detected, "healthy_state": self.healthy_state,
                "healthy_step": self.healthy_step}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.steps_seen = int(state_dict.get("steps_seen", self.steps_seen))
        self.probe.load_state_dict(state_dict["probe"])
        self.probe_fgsm.load_state_dict(state_dict["probe_fgsm"])
        self.rule.load_state_dict(state_dict["rule"])
        self.overfitting_detected = bool(state_dict["overfitting_detected"])
        self.healthy_state = state_dict.get("healthy_state")
        self.healthy_step = state_dict.get("healthy_step")

    # -- hooks ------------------------------------------------------------------------------------
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        callbacks = list(trainer.callbacks)
        if self.training is None:
            self.training = next((c for c in callbacks if isinstance(c, AdversarialTraining)), None)
        if self in callbacks and self.training in callbacks and callbacks.index(self) > callbacks.index(self.training):
            raise ValueError("CatastrophicOverfittingMonitor must be listed before the adversarial-training "
                             "callback (it probes the clean batch, which that callback replaces): "
                             "callbacks=[CatastrophicOverfittingMonitor(...), AdversarialTraining(...)]")

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.rule.patience_steps = self.patience_steps(trainer)
        if self.drop_patience is not None:  # with patience 0 every drop is flagged at once anyway
            self.rule.drop_patience_steps = self.patience_steps(trainer, "drop_patience") if self.patience else 0

    def patience_steps(self, trainer: "pl.Trainer", name: str = "patience") -> int:
        """``patience`` (or ``drop_patience``) in training steps of this run."""
        fraction = getattr(self, name)
        if fraction == 0.0:
            return 0
        total = trainer.estimated_stepping_batches
        if total is None or math.isinf(total):
            raise ValueError(f"CatastrophicOverfittingMonitor({name}={fraction:g}) is a fraction of the "
                             "run's steps, but this run has no end (set max_epochs or max_steps), or use "
                             f"{name}=0 to flag the first collapse signature")
        return int(math.ceil(fraction * total))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = self.steps_seen
        self.steps_seen += 1
        start_epoch = 0 if self.training is None else self.training.start_epoch
        if not self.every_n_steps or trainer.current_epoch < start_epoch or step % self.every_n_steps:
            return
        factor = 1.0 if self.training is None else self.training.budget_factor(trainer, batch_idx)
        if factor > 0.0:
            self.run_probe(pl_module, batch, budget_factor=factor, step=step)

    def run_probe(self, pl_module: "pl.LightningModule", batch: Any, budget_factor: float = 1.0,
                  step: Optional[int] = None) -> Optional[str]:
        """PGD and FGSM accuracy on the clean ``batch`` at ``budget_factor`` x the budget; logs them, keeps
        them in ``last_probe``, feeds full-budget probes to the rule (returning its reason when the run is
        flagged) and, with ``on_overfit="restore"``, keeps a copy of healthy weights."""
        budget_factor = check_fraction("budget_factor", budget_factor, open_low=True)
        step = self.steps_seen if step is None else step
        pgd, fgsm = (attack_at_budget(probe, budget_factor, self.adapter).for_stage(batch, "train")(pl_module, batch)
                     for probe in (self.probe, self.probe_fgsm))
        pgd_acc = pgd.adv_correct.float().mean().item()
        fgsm_acc = fgsm.adv_correct.float().mean().item()
        self.last_probe = {"pgd_acc": pgd_acc, "fgsm_acc": fgsm_acc, "budget_factor": budget_factor}
        trainer = getattr(pl_module, "_trainer", None)  # None: called by hand, outside a Trainer
        if trainer is not None:
            pl_module.log("train/pgd_probe_acc", pgd_acc, on_step=True, on_epoch=False)
            pl_module.log("train/fgsm_probe_acc", fgsm_acc, on_step=True, on_epoch=False)
        judged = budget_factor >= 1.0
        if judged:
            reason, suspect = self.rule.update(step, pgd_acc, fgsm_acc)
        else:  # warm-up: never flags, only decides whether the weights may serve as the healthy copy
            reason, suspect = None, self.rule.signature(pgd_acc, fgsm_acc) is not None
        if trainer is not None and trainer.world_size > 1:  # any process's flag counts on all of them
            flagged = trainer.strategy.reduce_boolean_decision(reason is not None, all=False)
            if flagged and reason is None:
                reason = "flagged by the probe of another process"
        if judged:
            self._judge(trainer, step, reason)
        if not suspect and reason is None and not self.overfitting_detected and self.on_overfit == "restore":
            self.healthy_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
            self.healthy_step = step
        return reason

    def _judge(self, trainer: Optional["pl.Trainer"], step: int, reason: Optional[str]) -> None:
        if reason is not None and not self.overfitting_detected:  # once; the logged probe shows the rest
            action = {"warn": "Consider a smaller step_size, N-FGSM, early stopping (on_overfit='restore') or "
                              "PGD training.",
                      "stop": "Stopping training (on_overfit='stop').",
                      "restore": "Stopping training (on_overfit='restore'); " + (
                          "no probe before was healthy, so there are no weights to restore."
                          if self.healthy_step is None else
                          f"the weights of the last healthy probe (step {self.healthy_step}) are restored when "
                          "it ends.")}
            rank_zero_warn(f"{self.name}: possible catastrophic overfitting at step {step}: {reason}. {action[self.on_overfit]}")
            if trainer is not None and self.on_overfit != "warn":
                trainer.should_stop = True
        self.overfitting_detected = self.overfitting_detected or reason is not None

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.on_overfit != "restore" or not self.overfitting_detected:
            return
        if self.healthy_state is None:
            rank_zero_warn(f"{self.name}(on_overfit='restore'): no probe was healthy before the collapse, so there are no healthy "
                           "weights to restore; the module keeps its last weights (probe more often, or select "
                           "checkpoints by val/robust_acc)")
            return
        changed = set(self.healthy_state) ^ set(pl_module.state_dict())
        if changed:  # entries a module or callback registered during training, after the healthy probe
            rank_zero_warn(f"{self.name}(on_overfit='restore'): the module's state changed shape since the healthy probe at step "
                           f"{self.healthy_step} (entries {sorted(changed)[:4]} differ), so the weights are not "
                           "restored")
            return
        pl_module.load_state_dict(self.healthy_state)
