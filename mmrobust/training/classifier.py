"""A LightningModule that trains any classifier with a robust objective, for any batch adapter."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from ..adapters.base import BatchAdapter, BatchView, stage_adapter
from ..attacks.base import Attack, attack_mode
from ..errors import check_choice, check_finite_nonneg, check_fraction, check_positive
from ..objectives import OBJECTIVES, ccat_loss, mart_loss, trades_loss

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = (None, "cosine", "multistep", "cyclic")


class RobustClassifier(pl.LightningModule):
    """Robust training of ``model`` with one of the standard objectives.

    * ``"ce"``: cross-entropy on the adversarial batch from ``attack`` (PGD-AT, Madry et al. 2018,
      https://arxiv.org/abs/1706.06083, Eq. 2.1), or on the clean batch without an attack;
    * ``"trades"``: :func:`~mmrobust.objectives.trades_loss` (Zhang et al. 2019, Eq. 5) with ``beta``;
      use :class:`~mmrobust.objectives.TradesAttack` as the attack;
    * ``"mart"``: :func:`~mmrobust.objectives.mart_loss` (Wang et al. 2020, Eq. 7) with ``beta``;
    * ``"ccat"``: :func:`~mmrobust.objectives.ccat_loss` (Stutz et al. 2020): the first half of each batch
      clean, the second half attacked with ``attack`` (use
      ``PGD(threat, loss=mmrobust.objectives.other_class_confidence)``) and trained towards
      :math:`(1-\\lambda)\\,\\mathrm{onehot} + \\lambda/K`, :math:`\\lambda = 1-(1-\\min(1, \\|\\delta\\|/\\epsilon))^\\rho`;
      both halves go through the model in one pass, as in the paper's code (batch norm sees the mixed batch).
      Evaluate by confidence thresholding.

    Batches go through adapters (``adapter`` or :func:`~mmrobust.adapters.base.stage_adapter`), so image, audio and graph
    batches all work; the attack runs in eval mode (batch-norm statistics untouched).

    Logs ``train/loss``, ``train/clean_acc``, ``train/adv_acc`` (with an attack), ``val/clean_acc`` and
    ``test/clean_acc``.

    Args:
        model: the classifier (``self.model``); called through the adapter.
        objective: ``"ce"``, ``"trades"``, ``"mart"`` or ``"ccat"``.
        attack: the training attack (required for the robust objectives).
        beta: TRADES' ``1/lambda`` or MART's ``lambda``.
        rho: CCAT's transition exponent.
        optimizer: ``"sgd"`` (``torch.optim.SGD``, momentum ``momentum``, Nesterov off), ``"adam"``
            (``torch.optim.Adam``) or ``"adamw"`` (``torch.optim.AdamW``). ``weight_decay`` is what each
            torch optimiser makes of it: with ``"sgd"`` and ``"adam"`` it is an L2 penalty coupled to the
            gradient (``weight_decay * w`` added to the gradient, so with Adam it is rescaled by the adaptive
            step and weak on weights with large gradients); with ``"adamw"`` it is decoupled weight decay
            (Loshchilov & Hutter 2019, https://arxiv.org/abs/1711.05101, Alg. 2: ``w -= lr * weight_decay * w``
            each step, apart from the Adam step). The default ``weight_decay=5e-4`` is the usual SGD value;
            pass ``weight_decay=0`` for plain Adam (the library's benchmarks with Adam do).
        lr, weight_decay, momentum: optimizer settings (``momentum`` only for ``"sgd"``); decay applies to
            every trainable parameter of ``model``, biases and normalisation weights included.
        scheduler: ``None``, ``"cosine"`` (to 0 over ``trainer.max_epochs``) or ``"multistep"`` (decay by
            ``gamma`` at the ``milestones`` fractions of ``trainer.max_epochs``), stepped per epoch; or
            ``"cyclic"``: the triangular schedule of fast adversarial training (Wong et al. 2020,
            https://arxiv.org/abs/2001.03994, Sec. 5.1), stepped per batch: linear from 0 to ``lr`` over the
            first ``peak`` fraction of all training steps, then linear back to 0, indexed as the paper's
            code (``locuslab/fast_adversarial``, ``lr_schedule(epoch + (i + 1) / N)`` before step ``i``):
            step ``s`` of ``T`` (from 0) trains with ``lr * triangle(s + 1)``, so the first step has
            ``lr / (peak * T)``, the peak is at step ``peak * T - 1`` and the last step has 0.
        adapter: how to read batches.
        track_clean_acc: with ``objective="ce"`` and an attack, spend one extra forward pass (eval mode, no
            gradients) per step to log ``train/clean_acc``; switch off for timing.
    """

    def __init__(self, model: nn.Module, *, objective: str = "ce", attack: Optional[Attack] = None,
                 beta: float = 6.0, rho: float = 10.0, optimizer: str = "sgd", lr: float = 0.1,
                 weight_decay: float = 5e-4, momentum: float = 0.9, scheduler: Optional[str] = None,
                 milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1, peak: float = 0.4,
                 adapter: Optional[BatchAdapter] = None, track_clean_acc: bool = True):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.objective = check_choice("objective", objective, OBJECTIVES)
        if attack is not None and not isinstance(attack, Attack):
            raise TypeError(f"attack must be an mmrobust Attack or None, got {type(attack).__name__}")
        if objective != "ce" and attack is None:
            raise ValueError(f"objective={objective!r} needs a training attack (attack=...)")
        if attack is not None and attack.targeted:
            raise ValueError(f"attack must be untargeted (targeted=False) for training, got {attack.describe()}")
        self.attack = attack
        self.beta = check_finite_nonneg("beta", beta)
        self.rho = check_positive("rho", rho)
        self.optimizer_name = check_choice("optimizer", optimizer, OPTIMIZERS)
        self.lr = check_positive("lr", lr)
        self.weight_decay = check_finite_nonneg("weight_decay", weight_decay)
        self.momentum = check_fraction("momentum", momentum, open_high=True)
        self.scheduler_name = check_choice("scheduler", scheduler, SCHEDULERS)
        self.milestones = [check_fraction("milestones", m, open_low=True, open_high=True) for m in milestones]
        self.gamma = check_fraction("gamma", gamma, open_low=True)
        self.peak = check_fraction("peak", peak, open_low=True, open_high=True)
        self.adapter = adapter
        self.track_clean_acc = bool(track_clean_acc)

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        # adapters call the module the way they call the user's model (e.g. (x, edge_index) for graphs)
        return self.model(*args, **kwargs)

    # -- attack state travels with the checkpoint -------------------------------------------------
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if self.attack is not None:
            checkpoint["mmrobust_attack"] = self.attack.state_dict()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if self.attack is not None and "mmrobust_attack" in checkpoint:
            self.attack.load_state_dict(checkpoint["mmrobust_attack"])

    # -- helpers ----------------------------------------------------------------------------------
    def _adapter(self, batch: Any, stage: str) -> BatchAdapter:
        explicit = self.adapter or (self.attack.adapter if self.attack is not None else None)
        return stage_adapter(batch, stage, explicit)

    def victim(self, batch: Any, stage: str = "train") -> BatchView:
        """The batch read for ``stage``: a graph's train/val/test nodes unless an adapter was given."""
        return self._adapter(batch, stage).victim(self, batch)

    def _adversarial_inputs(self, victim: BatchView) -> Dict[str, Tensor]:
        """The training attack's perturbed inputs for the batch as read for training (:meth:`victim`)."""
        with attack_mode(self):
            return self.attack.run_training(victim)

    @staticmethod
    def _accuracy(logits: Tensor, y: Tensor) -> Tensor:
        return (logits.argmax(1) == y).float().mean()

    # -- steps ------------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        victim = self.victim(batch)
        y = victim.target
        n = y.shape[0]
        if self.attack is None:
            logits = victim.forward(victim.inputs)
            loss = nn.functional.cross_entropy(logits, y)
            self.log("train/clean_acc", self._accuracy(logits.detach(), y), batch_size=n)
        elif self.objective == "ccat":
            loss = self._ccat_step(batch, victim)
        else:
            logits_adv = victim.forward(self._adversarial_inputs(victim))
            if self.objective == "ce":
                loss = nn.functional.cross_entropy(logits_adv, y)
                logits_clean = None
                if self.track_clean_acc:  # eval mode: must not move batch-norm statistics
                    with attack_mode(self), torch.no_grad():
                        logits_clean = victim.forward(victim.inputs)
            else:
                logits_clean = victim.forward(victim.inputs)
                fn = trades_loss if self.objective == "trades" else mart_loss
                loss = fn(logits_clean, logits_adv, y, self.beta)
            if logits_clean is not None:
                self.log("train/clean_acc", self._accuracy(logits_clean.detach(), y), batch_size=n)
            self.log("train/adv_acc", self._accuracy(logits_adv.detach(), y), batch_size=n)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=n)
        return loss

    def _ccat_step(self, batch: Any, victim: BatchView) -> Tensor:
        """Half clean, half adversarial (Stutz et al. 2020, Sec. 3.2); falls back to both on the whole batch
        when the adapter cannot split units (``BatchView.select`` is ``None``)."""
        n_units = victim.num_units
        if victim.select is not None and n_units >= 2:
            half = n_units // 2
            device = victim.target.device
            clean_v = victim.select(torch.arange(half, device=device))
            adv_src = victim.select(torch.arange(half, n_units, device=device))
        else:
            clean_v = adv_src = victim
        adv_inputs = self._adversarial_inputs(adv_src)
        threats = self.attack.threats_for(adv_src)
        relative = torch.zeros(adv_src.num_units, device=adv_src.target.device)
        for name, threat in threats.items():
            x = adv_src.inputs[name]
            size = threat.size(adv_inputs[name] - x, x) / threat.radius(x).clamp_min(1e-12)
            relative = torch.maximum(relative, size.to(relative.dtype))
        relative = adv_src.per_output(relative)
        logits_clean, logits_adv = self._ccat_logits(victim, clean_v, adv_src, adv_inputs)
        loss = ccat_loss(logits_clean, clean_v.target, logits_adv, adv_src.target, relative.detach(), self.rho)
        self.log("train/clean_acc", self._accuracy(logits_clean.detach(), clean_v.target),
                 batch_size=clean_v.num_outputs)
        self.log("train/adv_acc", self._accuracy(logits_adv.detach(), adv_src.target), batch_size=adv_src.num_outputs)
        return loss

    @staticmethod
    def _ccat_logits(victim: BatchView, clean_v: BatchView, adv_src: BatchView, adv_inputs: Dict[str, Tensor]):
        """Logits of the clean and the adversarial half from *one* forward pass of the whole batch (clean half
        first), as Stutz et al.'s code (``torch.cat((clean_inputs, adversarial_inputs))``): batch
        normalisation sees the mixed batch once. Two passes where the halves do not make up the batch."""
        if clean_v is not adv_src:
            joint = {k: torch.cat([clean_v.inputs[k], adv_inputs.get(k, adv_src.inputs[k])])
                     for k in clean_v.inputs}
            n_clean = clean_v.num_outputs
            if (joint.keys() == victim.inputs.keys() and victim.num_outputs == n_clean + adv_src.num_outputs
                    and all(joint[k].shape == v.shape for k, v in victim.inputs.items())):
                logits = victim.forward(joint)
                return logits[:n_clean], logits[n_clean:]
        return clean_v.forward(clean_v.inputs), adv_src.forward(adv_inputs)

    def _evaluate(self, batch: Any, stage: str) -> Tensor:
        victim = self.victim(batch, stage)
        logits = victim.forward(victim.inputs)
        acc = self._accuracy(logits, victim.target)
        self.log(f"{stage}/clean_acc", acc, prog_bar=stage == "val", batch_size=victim.num_outputs)
        self.log(f"{stage}/loss", nn.functional.cross_entropy(logits, victim.target), batch_size=victim.num_outputs)
        return acc

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._evaluate(batch, "test")

    # -- optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        else:
            cls = torch.optim.AdamW if self.optimizer_name == "adamw" else torch.optim.Adam
            opt = cls(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.scheduler_name is None:
            return opt
        if self.scheduler_name == "cyclic":
            total = max(2, int(self.trainer.estimated_stepping_batches))
            top = max(1, min(total - 1, round(self.peak * total)))

            def triangle(t: int) -> float:  # the factor at t steps into the schedule
                return t / top if t <= top else max(0.0, (total - t) / (total - top))

            # Lightning steps the scheduler after each optimiser step, so step s (from 0) trains with the
            # factor lr_lambda(s); Wong et al.'s code sets lr(epoch + (i + 1) / N) before step i, i.e.
            # the factor at s + 1 steps: first step lr / top, peak at step top - 1, last step 0
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: triangle(s + 1))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        epochs = max(1, int(self.trainer.max_epochs or 1))
        if self.scheduler_name == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        else:
            marks = sorted({max(1, int(round(m * epochs))) for m in self.milestones})
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=marks, gamma=self.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
