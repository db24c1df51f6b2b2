"""Single-step adversarial training (FGSM-RS, N-FGSM, GradAlign) with a catastrophic-overfitting monitor."""

from __future__ import annotations

from typing import Any, Dict, Optional

import pytorch_lightning as pl
from torch import Tensor

from ..attacks.pgd import FGSM
from ..attacks.single_step import FGSMRS, NFGSM
from ..errors import check_choice, check_finite_nonneg, check_int, check_positive
from ..geometry.alignment import GradientAlignment
from .adversarial import AdversarialTraining
from .overfitting_monitor import CatastrophicOverfittingMonitor, catastrophic_overfitting  # noqa: F401 (re-export)
from .regularization import GeometricRegularization


#: the training perturbations of :class:`FastAdversarialTraining`
METHODS = ("fgsm_rs", "n_fgsm", "grad_align", "fgsm")


class ReusedGradientAlignment(GeometricRegularization):
    """GradAlign's penalty inside :class:`FastAdversarialTraining`: ``first_gradient`` is the training FGSM's
    gradient at the clean point (set by the attack's ``on_gradient`` in this step, dropped at its end), so
    the penalty computes only the gradient at the noisy point, as the reference code does."""

    first_gradient: Optional[Tensor] = None

    def keep(self, grads: Dict[str, Tensor]) -> None:
        self.first_gradient = next(iter(grads.values())) if len(grads) == 1 else None

    def extra_loss(self, trainer, pl_module, batch) -> Tensor:
        return self.regularizer(pl_module, batch, first_gradient=self.first_gradient)

    def reset(self) -> None:
        self.first_gradient = None


class FastAdversarialTraining(AdversarialTraining):
    """Single-step adversarial training: FGSM-RS (Wong et al. 2020, https://arxiv.org/abs/2001.03994, Alg. 3) or N-FGSM.

    ``method="fgsm_rs"`` (default) trains on :class:`~mmrobust.attacks.FGSMRS`:

    .. math:: \\delta = \\Pi_{\\Delta(x)}\\big(\\eta + \\alpha\\,\\mathrm{sign}\\nabla_\\eta \\mathcal{L}(f(x+\\eta), y)\\big),
              \\quad \\eta \\sim U(B_\\epsilon),\\ \\alpha = 1.25\\,\\epsilon

    with the gradient taken at the *unclipped* start, as the paper's reference code (clipping the start to
    the value box first made Wong et al.'s MNIST recipe collapse, see ``benchmarks/results/single_step_mnist.md``).
    ``method="n_fgsm"`` trains on :class:`~mmrobust.attacks.NFGSM` (de Jorge et al. 2022,
    https://arxiv.org/abs/2202.01181, Alg. 1: noise ``noise * eps``, step ``eps``, no projection onto the
    ball; ``step_size`` defaults to 1 there). ``method="grad_align"`` is GradAlign (Andriushchenko & Flammarion
    2020, https://arxiv.org/abs/2007.02617, Eq. 6) as their reference code (``tml-epfl/understanding-fast-adv-training``,
    ``train.py``) runs it: FGSM from a *zero* start with a step of eps (their ``fgsm_alpha`` 1.25 clipped
    to the ball), plus ``grad_align_weight`` times :class:`~mmrobust.geometry.GradientAlignment` on the
    clean batch; the penalty's first gradient :math:`\\nabla_x \\mathcal L(x)` *is* the FGSM step's gradient
    (reused, as the reference does: one forward/backward pass fewer than computing it again), the second is
    taken at ``x + eta``, ``eta ~ U(B_eps)`` not clipped to the box, and double-back-propagated; examples
    where either gradient is exactly zero are left out of the mean, as there. The FGSM gradient is taken
    with the module in eval mode (the reference: train mode; the same for models without batch norm or
    dropout). ``method="fgsm"`` is :class:`~mmrobust.attacks.FGSM` with a
    random start projected onto the box before the gradient (this library's earlier behaviour), kept to
    reproduce that collapse. The gradient-alignment regulariser of Andriushchenko & Flammarion 2020 is
    :class:`~mmrobust.geometry.GradientAlignment`, added with :class:`~mmrobust.callbacks.GeometricRegularization`.

    It contains a :class:`~mmrobust.callbacks.CatastrophicOverfittingMonitor` (``monitor``; the ``probe_*``,
    rule and ``on_overfit`` arguments are its own), which probes PGD against FGSM every
    ``probe_every_n_steps`` steps, warns when the collapse signature persists (``patience``) or PGD accuracy
    drops from a robust best (``drop_patience``) and can stop
    training and restore the last healthy weights (``on_overfit="restore"``). The paper's cyclic learning
    rate is ``RobustClassifier(..., scheduler="cyclic")``.

    Where this path differs from the reference loop (Wong et al.'s ``MNIST/train_mnist.py``): the attack
    runs with the module in eval mode (the reference: train mode; the same for models without batch norm
    or dropout); the monitor's attacks have their own random generators, so the training perturbations
    and weights are bit-identical with and without it. The cyclic schedule is indexed as the reference's
    (step ``t`` trains with ``lr(t + 1)``; until this was fixed the library used ``lr(t)``).

    Args:
        threat: the budget (e.g. ``LinfBall(0.3, lower=0, upper=1)``).
        method: ``"fgsm_rs"``, ``"n_fgsm"``, ``"grad_align"`` or ``"fgsm"`` (see above).
        step_size: the step as a fraction of the radius; ``None``: the paper's (1.25 for FGSM-RS and FGSM,
            1 for N-FGSM and GradAlign's zero-start FGSM).
        noise: N-FGSM's noise magnitude as a multiple of the radius (2 in the paper).
        clip_noise: N-FGSM's noise clipped to the value box before the gradient (see
            :class:`~mmrobust.attacks.NFGSM`).
        grad_align_weight: GradAlign's :math:`\\lambda` (``method="grad_align"`` only). The reference gives
            0.2 for CIFAR-10 at eps 8/255 (up to 2.0 at 16/255) and no MNIST setting.
        probe_every_n_steps, probe_steps, co_threshold, max_drop, min_fgsm_acc, probe_window, patience,
            drop_patience, drop_from, on_overfit: the monitor's ``every_n_steps``, ``probe_steps``, ... (see
            :class:`~mmrobust.callbacks.CatastrophicOverfittingMonitor`; ``probe_every_n_steps=0`` disables it).
        seed: seeds the training perturbations' random starts (``seed``), the probe's PGD (``seed + 1``) and
            FGSM (``seed + 2``), GradAlign's noise (``seed + 3``) and the unit draws.
        Other keyword arguments go to :class:`AdversarialTraining`.
    """

    def __init__(self, threat, *, method: str = "fgsm_rs", step_size: Optional[float] = None, noise: float = 2.0,
                 clip_noise: bool = True, grad_align_weight: float = 0.2, probe_every_n_steps: int = 50, probe_steps: int = 10,
                 co_threshold: float = 0.5, max_drop: float = 0.2, min_fgsm_acc: float = 0.5, probe_window: int = 3,
                 patience: float = 0.4, drop_patience: Optional[float] = 0.05, drop_from: float = 0.5,
                 on_overfit: str = "warn", seed: int = 0, **kwargs):
        self.method = check_choice("method", method, METHODS)
        if step_size is None:
            step_size = {"n_fgsm": 1.0, "grad_align": 1.0}.get(method, 1.25)
        step_size = check_positive("step_size", step_size)
        adapter = kwargs.get("adapter")
        seed = check_int("seed", seed, 0)
        if method == "n_fgsm":
            attack = NFGSM(threat, noise=noise, step_size=step_size, clip_noise=clip_noise, seed=seed, adapter=adapter)
        elif method == "grad_align":
            attack = FGSMRS(threat, step_size=step_size, random_start=False, seed=seed, adapter=adapter)
        elif method == "fgsm":
            attack = FGSM(threat, step_size=step_size, random_start=True, seed=seed, adapter=adapter)
        else:
            attack = FGSMRS(threat, step_size=step_size, seed=seed, adapter=adapter)
        super().__init__(attack, seed=seed, **kwargs)
        self.monitor = CatastrophicOverfittingMonitor(
            threat, every_n_steps=probe_every_n_steps, probe_steps=probe_steps, co_threshold=co_threshold,
            max_drop=max_drop, min_fgsm_acc=min_fgsm_acc, probe_window=probe_window, patience=patience,
            drop_patience=drop_patience, drop_from=drop_from, on_overfit=on_overfit, adapter=adapter, seed=seed, training=self)
        self.monitor.name = type(self).__name__
        self.alignment: Optional[ReusedGradientAlignment] = None
        if method == "grad_align":
            weight = check_finite_nonneg("grad_align_weight", grad_align_weight)
            self.alignment = ReusedGradientAlignment(GradientAlignment(threat, seed=seed + 3, adapter=adapter),
                                                     weight=weight)
            self.attack.on_gradient = self.alignment.keep

    # the monitor's results, read where users looked for them before the monitor was split out
    overfitting_detected = property(lambda self: self.monitor.overfitting_detected)
    last_probe = property(lambda self: self.monitor.last_probe)
    best_probe_acc = property(lambda self: self.monitor.best_probe_acc)
    healthy_state = property(lambda self: self.monitor.healthy_state)
    healthy_step = property(lambda self: self.monitor.healthy_step)

    def run_probe(self, pl_module: "pl.LightningModule", batch: Any, budget_factor: float = 1.0) -> Optional[str]:
        """The monitor's :meth:`~mmrobust.callbacks.CatastrophicOverfittingMonitor.run_probe`."""
        return self.monitor.run_probe(pl_module, batch, budget_factor)

    def state_dict(self) -> Dict[str, Any]:
        state = {**super().state_dict(), "monitor": self.monitor.state_dict()}
        if self.alignment is not None:
            state["grad_align"] = self.alignment.state_dict()
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.monitor.load_state_dict(state_dict["monitor"])
        if self.alignment is not None and "grad_align" in state_dict:
            self.alignment.load_state_dict(state_dict["grad_align"])

    # GradAlign's penalty (method="grad_align") runs through the shared extra-loss path
    def on_fit_start(self, trainer, pl_module) -> None:
        if self.alignment is not None:
            self.alignment.on_fit_start(trainer, pl_module)

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.alignment is not None:
            self.alignment.on_after_backward(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.alignment is not None:
            self.alignment.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self.alignment is not None:
            self.alignment.on_exception(trainer, pl_module, exception)

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.monitor.on_train_start(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.monitor.on_train_batch_start(trainer, pl_module, batch, batch_idx)  # on the clean batch
        if self.alignment is not None:
            self.alignment.on_train_batch_start(trainer, pl_module, batch, batch_idx)  # keeps the clean batch
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.monitor.on_train_end(trainer, pl_module)
