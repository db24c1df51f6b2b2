"""Robust accuracy during Lightning validation and testing, logged so checkpoints can monitor it."""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn
from torchmetrics import Metric

from ..adapters.base import BatchAdapter
from ..checks import CheckResult, FailureChecks
from ..errors import check_choice, check_int
from ..evaluation import Attacks, named_attacks, stop_early
from ..metrics.robust_accuracy import CleanAccuracy, RobustAccuracy
from ..threats.verify import verify_result

STAGES = ("validate", "test")
_LOG_PREFIX = {"validate": "val", "test": "test"}


class RobustnessEvaluation(Callback):
    """Attack validation/test batches and log clean, worst-case robust and per-attack accuracy.

    Logs, per stage (``val`` or ``test``): ``<stage>/clean_acc``, ``<stage>/robust_acc`` (worst case
    over the attacks, Croce & Hein 2020, https://arxiv.org/abs/2003.01690) and
    ``<stage>/robust_acc/<attack name>``, as epoch-level torchmetrics values (synchronised across
    processes by torchmetrics), so ``ModelCheckpoint(monitor="val/robust_acc", mode="max")`` and
    ``EarlyStopping`` can use them:

    .. math:: \\mathrm{RA} = \\frac1N\\sum_n \\mathbb 1[f(x_n)=y_n]\\prod_a \\mathbb 1[f(x_n+\\delta^a_n)=y_n]

    Attacks run on the LightningModule's ``forward`` in eval mode with frozen parameters
    (:func:`~mmrobust.attacks.attack_mode`); the module's modes, flags and weights are unchanged
    afterwards, also when an attack raises. They work under Lightning's default
    ``Trainer(inference_mode=True)``: batch tensors created in inference mode are cloned into normal
    tensors. A model whose parameters are themselves inference tensors cannot be differentiated; then a
    clear error asks for ``Trainer(inference_mode=False)``.

    Args:
        attacks: an Attack, a list, or a dict ``name -> Attack`` (names appear in the logged keys).
        every_n_epochs: during ``fit`` attack validation only every n-th epoch (``current_epoch % n == 0``);
            standalone ``validate``/``test`` runs are always attacked.
        max_batches: attack only the first ``max_batches`` batches of every dataloader per epoch.
        stages: any of ``"validate"``, ``"test"``.
        adapter: how to read batches, for attacks that have none.
        prefix: prepended to the logged keys, e.g. ``"adv_"`` -> ``adv_val/robust_acc``.
        prog_bar: show ``<stage>/robust_acc`` in Lightning's progress bar.
        early_stop: as in :func:`mmrobust.evaluate`: attacks that can (``can_stop_early``) drop each output
            from their work once it is adversarial -- the accuracies are those of the full attacks at less
            cost. Attacks whose results feed ``result_metrics`` keep their own setting, since such metrics
            may read losses or confidences. The user's attack objects are not changed.

    Every returned point is checked against its threat model as in :func:`mmrobust.evaluate`
    (:class:`~mmrobust.errors.BudgetViolation`; points of unbounded attacks such as ``FMN(cap=False)``
    outside the budget count as not broken; ``result_metrics`` still get the attack's own result).

    If the LightningModule logs the same key itself (e.g. ``val/clean_acc``), Lightning keeps the
    callback's value, computed over the attacked batches only; set ``prefix`` to keep both.

    The sanity-check validation run is skipped. Every evaluation run (each validation epoch, each
    ``validate``/``test`` call) restarts the attacks' random streams at their seeds (:meth:`Attack.reseed`),
    so the same weights give the same numbers: ``trainer.validate()`` after ``fit`` reproduces the last
    logged ``val/robust_acc``. ``prog_bar=True`` shows the robust accuracy in the progress bar.

    ``result_metrics`` feeds further metrics with one attack's results, ``{log name: (attack name,
    Metric)}``; e.g. ``{"boundary": ("fmn", BoundaryDistance())}`` with an ``FMN`` attack named ``"fmn"``
    logs the distance to the decision boundary as ``val/boundary/median`` etc. (metrics whose
    ``compute()`` returns a dict are logged one key per entry). Each stage and dataloader gets its own
    copy of the metric; it is computed (synced across processes by torchmetrics) and reset at epoch end.

    ``checks`` (default ``True``: all; a list of names; ``False``: none) runs the attack-failure checks of
    :mod:`mmrobust.checks` in every evaluation epoch (on the first attacked batch, plus the results of every
    batch; :class:`~mmrobust.checks.FailureChecks` gives the cost): each check is logged as
    ``<stage>/checks/<name>`` (1 = fired, the maximum over processes), the results (evidence and advice) are
    kept in :attr:`check_results` by stage, and a check that fires is reported once per stage with
    ``rank_zero_warn``.
    """

    def __init__(self, attacks: Attacks, *, every_n_epochs: int = 1, max_batches: Optional[int] = None,
                 stages: Sequence[str] = STAGES, adapter: Optional[BatchAdapter] = None,
                 prefix: Optional[str] = None, result_metrics: Optional[Mapping[str, Tuple[str, Metric]]] = None,
                 early_stop: bool = True, prog_bar: bool = False, checks=True):
        super().__init__()
        self._checks = {stage: FailureChecks(checks) for stage in STAGES}
        #: the last evaluation epoch's check results by stage (``"validate"``, ``"test"``)
        self.check_results: Dict[str, list] = {}
        self._warned: set = set()
        self.prog_bar = bool(prog_bar)
        self.attacks = named_attacks(attacks, adapter)
        self.result_metrics: Dict[str, Tuple[str, Metric]] = {}
        for log_name, entry in (result_metrics or {}).items():
            if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[1], Metric)):
                raise TypeError(f"result_metrics[{log_name!r}] must be a pair (attack name, torchmetrics Metric), "
                                f"got {entry!r}")
            if entry[0] not in self.attacks:
                raise KeyError(f"result_metrics[{log_name!r}] names attack {entry[0]!r}; the attacks are "
                               f"{sorted(self.attacks)}")
            self.result_metrics[log_name] = (entry[0], entry[1])
        if early_stop:  # private copies (named_attacks); the ones feeding result metrics keep their setting
            stop_early(self.attacks, keep=(attack_name for attack_name, _ in self.result_metrics.values()))
        self._extra: Dict[Tuple[str, int], Dict[str, Metric]] = {}
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, 1)
        self.max_batches = None if max_batches is None else check_int("max_batches", max_batches, 1)
        if isinstance(stages, str):
            stages = (stages,)
        self.stages = tuple(check_choice("stages entries", s, STAGES) for s in stages)
        if prefix is not None and not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string or None, got {type(prefix).__name__}")
        self.prefix = prefix or ""
        self._metrics: Dict[Tuple[str, int], Dict[str, RobustAccuracy]] = {}

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"attacks": {name: a.state_dict() for name, a in self.attacks.items()}}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        for name, state in state_dict.get("attacks", {}).items():
            if name in self.attacks:
                self.attacks[name].load_state_dict(state)

    # -- hooks ------------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._reseed()

    def on_test_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._reseed()

    def _reseed(self) -> None:
        for attack in self.attacks.values():
            attack.reseed()
        for checks in self._checks.values():
            checks.reset()

    def on_validation_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking:
            return
        self._attack_batch("validate", trainer, pl_module, batch, batch_idx, dataloader_idx)

    def on_test_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._attack_batch("test", trainer, pl_module, batch, batch_idx, dataloader_idx)

    # -- work -------------------------------------------------------------------------------------
    def _active(self, stage: str, trainer: "pl.Trainer", batch_idx: int) -> bool:
        if stage not in self.stages:
            return False
        if self.max_batches is not None and batch_idx >= self.max_batches:
            return False
        # the schedule thins validation during fit(); standalone validate()/test() runs sit at whatever epoch
        # number fit() left behind and are always attacked
        fitting = getattr(trainer.state.fn, "value", trainer.state.fn) == "fit"
        return not fitting or trainer.current_epoch % self.every_n_epochs == 0

    def _metric_set(self, stage: str, dataloader_idx: int, device: torch.device) -> Dict[str, RobustAccuracy]:
        key = (stage, dataloader_idx)
        if key not in self._metrics:
            metrics: Dict[str, RobustAccuracy] = {"clean_acc": CleanAccuracy(), "robust_acc": RobustAccuracy()}
            metrics.update({f"robust_acc/{name}": RobustAccuracy() for name in self.attacks})
            self._metrics[key] = metrics
        metrics = self._metrics[key]
        for k, m in metrics.items():
            if m.device != device:
                metrics[k] = m.to(device)
        return metrics

    def _attack_batch(self, stage: str, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any,
                      batch_idx: int, dataloader_idx: int) -> None:
        if not self._active(stage, trainer, batch_idx):
            return
        try:
            split = "val" if stage == "validate" else "test"
            staged = [attack.for_stage(batch, split) for attack in self.attacks.values()]
            raw = [attack(pl_module, batch) for attack in staged]
            # robust accuracy only counts points inside the budget; result metrics (e.g. FMN's minimal
            # norms) read the attacks' own results
            results = [verify_result(attack, pl_module, batch, r) for attack, r in zip(staged, raw)]
        except RuntimeError as e:
            if "nference tensor" in str(e):
                raise RuntimeError(
                    "RobustnessEvaluation could not differentiate the model inside Lightning's inference mode "
                    f"({e}). Create the model outside torch.inference_mode() or pass "
                    "Trainer(inference_mode=False).") from e
            raise
        if dataloader_idx == 0:
            self._checks[stage].observe(pl_module, batch, dict(zip(self.attacks, staged)), results)
        if self.result_metrics:
            extra = self._extra.setdefault((stage, dataloader_idx), {
                name: copy.deepcopy(metric) for name, (_, metric) in self.result_metrics.items()})
            by_attack = dict(zip(self.attacks, raw))
            for name, (attack_name, _) in self.result_metrics.items():
                extra[name] = extra[name].to(pl_module.device)
                extra[name].update(by_attack[attack_name])
        metrics = self._metric_set(stage, dataloader_idx, pl_module.device)
        metrics["clean_acc"].update(results)
        metrics["robust_acc"].update(results)
        for name, r in zip(self.attacks, results):
            metrics[f"robust_acc/{name}"].update(r)
        stage_name = _LOG_PREFIX[stage]
        for key, metric in metrics.items():
            # the Metric object itself is logged: Lightning computes (and syncs) it at epoch end, then resets it
            pl_module.log(f"{self.prefix}{stage_name}/{key}", metric, on_step=False, on_epoch=True,
                          prog_bar=self.prog_bar and key == "robust_acc",
                          metric_attribute=f"_robustness_evaluation_{stage_name}_{dataloader_idx}_{key}")

    def on_validation_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._log_result_metrics("validate", pl_module)
        self._log_checks("validate", pl_module)

    def on_test_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._log_result_metrics("test", pl_module)
        self._log_checks("test", pl_module)

    def _log_checks(self, stage: str, pl_module: "pl.LightningModule") -> None:
        checks = self._checks[stage]
        if not checks or not checks.observed:
            return
        found: List[CheckResult] = checks.results()
        self.check_results[stage] = found
        for check in found:
            pl_module.log(f"{self.prefix}{_LOG_PREFIX[stage]}/checks/{check.name}", float(check.fired),
                          on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")
        new = [c for c in found if c.fired and (stage, c.name) not in self._warned]
        if new:
            self._warned.update((stage, c.name) for c in new)
            lines = "\n".join(f"- {c.name}: {c.evidence}. {c.advice}" for c in new)
            rank_zero_warn(f"RobustnessEvaluation ({stage}): attack-failure checks fired; the robust accuracy may be "
                           f"overestimated:\n{lines}")

    def _log_result_metrics(self, stage: str, pl_module: "pl.LightningModule") -> None:
        for (metric_stage, dataloader_idx), extra in self._extra.items():
            if metric_stage != stage:
                continue
            suffix = "" if dataloader_idx == 0 else f"/dataloader_{dataloader_idx}"
            for name, metric in extra.items():
                if not metric.update_called:
                    continue
                value = metric.compute()
                values = value if isinstance(value, Mapping) else {"": value}
                for key, v in values.items():
                    tag = f"{self.prefix}{_LOG_PREFIX[stage]}/{name}" + (f"/{key}" if key else "") + suffix
                    pl_module.log(tag, torch.as_tensor(v, dtype=torch.float32).mean(), on_step=False, on_epoch=True,
                                  sync_dist=False)  # already synced by the metric's compute()
                metric.reset()

