"""Single-step adversarial training (FGSM-RS, N-FGSM) with a catastrophic-overfitting probe."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from ..attacks.pgd import FGSM, PGD
from ..attacks.single_step import FGSMRS, NFGSM
from ..errors import check_choice, check_fraction, check_int, check_positive
from .adversarial import AdversarialTraining


#: the training perturbations of :class:`FastAdversarialTraining`
METHODS = ("fgsm_rs", "n_fgsm", "fgsm")


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
    """Single-step adversarial training: FGSM-RS (Wong et al. 2020, https://arxiv.org/abs/2001.03994, Alg. 3) or N-FGSM.

    ``method="fgsm_rs"`` (default) trains on :class:`~mmrobust.attacks.FGSMRS`:

    .. math:: \\delta = \\Pi_{\\Delta(x)}\\big(\\eta + \\alpha\\,\\mathrm{sign}\\nabla_\\eta \\mathcal{L}(f(x+\\eta), y)\\big),
              \\quad \\eta \\sim U(B_\\epsilon),\\ \\alpha = 1.25\\,\\epsilon

    with the gradient taken at the *unclipped* start, as the paper's reference code (clipping the start to
    the value box first made Wong et al.'s MNIST recipe collapse, see ``benchmarks/results/single_step_mnist.md``).
    ``method="n_fgsm"`` trains on :class:`~mmrobust.attacks.NFGSM` (de Jorge et al. 2022,
    https://arxiv.org/abs/2202.01181, Alg. 1: noise ``noise * eps``, step ``eps``, no projection onto the
    ball; ``step_size`` defaults to 1 there). ``method="fgsm"`` is :class:`~mmrobust.attacks.FGSM` with a
    random start projected onto the box before the gradient (this library's earlier behaviour), kept to
    reproduce that collapse. The gradient-alignment regulariser of Andriushchenko & Flammarion 2020 is
    :class:`~mmrobust.geometry.GradientAlignment`, added with :class:`~mmrobust.callbacks.GeometricRegularization`.

    The callback adds a catastrophic-overfitting check: every ``probe_every_n_steps`` training steps a PGD
    attack (``probe_steps`` steps) and FGSM-RS are evaluated at the step's budget on the current clean
    batch (module in eval mode; both with their own random generators, so the probe leaves the training
    perturbations' random stream untouched), ``train/pgd_probe_acc`` and ``train/fgsm_probe_acc`` are logged, and a
    rank-zero warning is raised the first time the rule of :func:`catastrophic_overfitting` fires on the
    means of the last ``probe_window`` probes (one probe batch is noisy: on small batches a single
    batch's PGD accuracy drops 0.2 below its best by chance, a false alarm). It can still fire early in a
    healthy run: on Wong et al.'s MNIST recipe PGD accuracy stays low while FGSM's rises for the first
    ~800 of 6000 steps, as in a collapse (``benchmarks/results/single_step_mnist.md``), so read the
    warning together with the logged probe accuracies. Once it fires,
    ``overfitting_detected`` stays true (and is part of the checkpointed state). During the eps
    warm-up the probe is logged but never warns: with a growing budget PGD accuracy falls on a healthy
    model too, and FGSM lags behind on a model not yet robust, so both rules could fire falsely.

    What happens on a collapse is ``on_overfit``'s choice: ``"warn"`` (default) keeps training;
    ``"stop"`` asks the Trainer to stop after the current step; ``"restore"`` also stops and, when
    training ends, loads the module's weights (parameters and buffers) from the last healthy probe --
    Wong et al.'s early stopping, which keeps the weights from before a PGD-accuracy drop (their code
    checks once per epoch; here every ``probe_every_n_steps`` steps, so at most that many steps are
    lost). Healthy means the rule fired neither on the means nor on the probe alone; during the warm-up the PGD-vs-FGSM rule alone decides,
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
        method: ``"fgsm_rs"``, ``"n_fgsm"`` or ``"fgsm"`` (see above).
        step_size: the step as a fraction of the radius; ``None``: the paper's (1.25 for FGSM-RS and FGSM,
            1 for N-FGSM).
        noise: N-FGSM's noise magnitude as a multiple of the radius (2 in the paper).
        probe_every_n_steps: steps between probes (0 disables the probe).
        probe_steps: PGD steps of the probe.
        co_threshold / max_drop / min_fgsm_acc: the collapse rule, see :func:`catastrophic_overfitting`;
            it warns once (the first time it fires) and sets ``overfitting_detected``. ``co_threshold=0``
            leaves only Wong et al.'s drop rule.
        probe_window: the rule reads the means of this many last probes (1: every probe alone); the best
            PGD accuracy of the drop rule is the best such mean.
        on_overfit: ``"warn"``, ``"stop"`` or ``"restore"`` (see above).
        seed: seeds the training perturbations' random starts (``seed``), the probe's PGD (``seed + 1``) and
            FGSM (``seed + 2``) and the unit draws.
        Other keyword arguments go to :class:`AdversarialTraining`.
    """

    def __init__(self, threat, *, method: str = "fgsm_rs", step_size: Optional[float] = None, noise: float = 2.0,
                 probe_every_n_steps: int = 50, probe_steps: int = 10, co_threshold: float = 0.5,
                 max_drop: float = 0.2, min_fgsm_acc: float = 0.5, probe_window: int = 3, on_overfit: str = "warn",
                 seed: int = 0, **kwargs):
        self.method = check_choice("method", method, METHODS)
        if step_size is None:
            step_size = 1.0 if method == "n_fgsm" else 1.25
        step_size = check_positive("step_size", step_size)
        adapter = kwargs.get("adapter")
        seed = check_int("seed", seed, 0)
        if method == "n_fgsm":
            attack = NFGSM(threat, noise=noise, step_size=step_size, seed=seed, adapter=adapter)
        elif method == "fgsm":
            attack = FGSM(threat, step_size=step_size, random_start=True, seed=seed, adapter=adapter)
        else:
            attack = FGSMRS(threat, step_size=step_size, seed=seed, adapter=adapter)
        super().__init__(attack, seed=seed, **kwargs)
        self.probe_every_n_steps = check_int("probe_every_n_steps", probe_every_n_steps, 0)
        self.probe = PGD(threat, steps=check_int("probe_steps", probe_steps, 1), seed=seed + 1, adapter=adapter)
        # the single-step side of the probe: in the ball (N-FGSM's training points are not), own generator
        self.probe_fgsm = FGSMRS(threat, step_size=1.25, seed=seed + 2, adapter=adapter)
        self.co_threshold = check_fraction("co_threshold", co_threshold)
        self.max_drop = check_fraction("max_drop", max_drop)
        self.min_fgsm_acc = check_fraction("min_fgsm_acc", min_fgsm_acc)
        self.on_overfit = check_choice("on_overfit", on_overfit, ("warn", "stop", "restore"))
        self.probe_window = check_int("probe_window", probe_window, 1)
        self.best_probe_acc = -1.0
        #: the last ``probe_window`` judged probes, ``(pgd_acc, fgsm_acc)``
        self.recent_probes: List[Tuple[float, float]] = []
        self.overfitting_detected = False
        self.last_probe: Optional[Dict[str, float]] = None
        #: with ``on_overfit="restore"``: the module's state at the last healthy judged probe (CPU copies)
        self.healthy_state: Optional[Dict[str, torch.Tensor]] = None
        #: the training step (``steps_seen``) of that probe
        self.healthy_step: Optional[int] = None

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state.update(probe=self.probe.state_dict(), probe_fgsm=self.probe_fgsm.state_dict(), best_probe_acc=self.best_probe_acc,
                     recent_probes=list(self.recent_probes),
                     overfitting_detected=self.overfitting_detected, healthy_state=self.healthy_state,
                     healthy_step=self.healthy_step)
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.probe.load_state_dict(state_dict["probe"])
        if "probe_fgsm" in state_dict:
            self.probe_fgsm.load_state_dict(state_dict["probe_fgsm"])
        self.best_probe_acc = float(state_dict["best_probe_acc"])
        self.recent_probes = [tuple(p) for p in state_dict.get("recent_probes", [])]
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
        fgsm_attack = self._attack_at(budget_factor, device, self.probe_fgsm)
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
        rule = dict(co_threshold=self.co_threshold, max_drop=self.max_drop, min_fgsm_acc=self.min_fgsm_acc)
        # During the warm-up the budget grows: a drop from the best accuracy means nothing there, and the
        # PGD-vs-FGSM rule can misfire (FGSM lags behind on a model not yet robust). Such probes never
        # warn; they only decide whether the weights may serve as the healthy copy.
        if judged:  # judged on the mean of the last probe_window probes: one probe batch is noisy
            self.recent_probes = (self.recent_probes + [(pgd_acc, fgsm_acc)])[-self.probe_window:]
            pgd_mean = sum(p for p, _ in self.recent_probes) / len(self.recent_probes)
            fgsm_mean = sum(f for _, f in self.recent_probes) / len(self.recent_probes)
            reason = single = catastrophic_overfitting(pgd_mean, fgsm_mean, self.best_probe_acc, **rule)
            if reason is not None and len(self.recent_probes) > 1:
                reason += f" (means of the last {len(self.recent_probes)} probes)"
            elif reason is None and len(self.recent_probes) > 1 and self.on_overfit == "restore":
                single = catastrophic_overfitting(pgd_acc, fgsm_acc, self.best_probe_acc, **rule)
        else:
            reason = single = catastrophic_overfitting(pgd_acc, fgsm_acc, -1.0, **rule)
        if trainer is not None and trainer.world_size > 1:  # any process's flag counts on all of them
            flagged = trainer.strategy.reduce_boolean_decision(reason is not None, all=False)
            if flagged and reason is None:
                reason = "flagged by the probe of another process"
        if judged:
            self._judge(trainer, pgd_mean, reason)
        # the healthy copy needs this probe alone to be healthy too (the mean lags behind a collapse)
        if reason is None and single is None and not self.overfitting_detected and self.on_overfit == "restore":
            self.healthy_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
            self.healthy_step = self.steps_seen
        return reason if judged else None

    def _judge(self, trainer: Optional["pl.Trainer"], pgd_mean: float, reason: Optional[str]) -> None:
        self.best_probe_acc = max(self.best_probe_acc, pgd_mean)
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
