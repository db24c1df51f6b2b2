"""Worker script for tests/test_reliability_ddp.py: adversarial training + pruning + robustness evaluation.

Run as ``python tests/_ddp_worker.py OUT_DIR --devices N --batch-size B``; with ``N > 1`` Lightning's ``strategy="ddp"``
re-launches this script once per extra process (gloo on CPU).  Every rank writes
``OUT_DIR/rank<r>.pt`` with its final weights, the masks' sparsity and the robust accuracy Lightning
logged (synchronised by torchmetrics over both shards of the validation set).

``--scenario extra_loss`` fits GeometricRegularization (an ExtraLossCallback): its gradient must be averaged over
the ranks like the module's, so the replicas stay identical and equal the single-process run.

``--scenario fast_at_restore`` instead fits FastAdversarialTraining(on_overfit="restore") with the collapse
rule rigged to fire on rank 1 only, from its third judged probe on: both ranks must stop together and
restore the same weights.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset  # noqa: E402

from _reliability_common import DigitsModule  # noqa: E402
from mmrobust.attacks import PGD  # noqa: E402
from mmrobust.callbacks import AdversarialTraining, FastAdversarialTraining, Pruning, RobustnessEvaluation  # noqa: E402
from mmrobust.callbacks import overfitting_monitor as adversarial_callbacks  # noqa: E402  (the monitor's collapse rule)
from mmrobust.compression import weight_sparsity  # noqa: E402
from mmrobust.threats import LinfBall  # noqa: E402

EPS = 0.1


def digits_data(n_train: int, n_val: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    return (x[:n_train], y[:n_train]), (x[-n_val:], y[-n_val:])


def evaluation() -> RobustnessEvaluation:
    # no random start: each example's attack is the same whichever shard and batch it lands in
    return RobustnessEvaluation({"pgd": PGD(LinfBall(EPS, lower=0, upper=1), steps=3, random_start=False)},
                                stages=("validate",))


def rank_one_collapses_at_third_probe():
    """Replace the collapse rule: it fires on rank 1 from its third judged probe on, never on rank 0."""
    calls = []

    def rule(*args, **kwargs):
        calls.append(1)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return "rigged collapse on rank 1" if rank == 1 and len(calls) >= 3 else None

    adversarial_callbacks.catastrophic_overfitting = rule


def fast_at_restore() -> list:
    rank_one_collapses_at_third_probe()
    return [FastAdversarialTraining(LinfBall(EPS, lower=0, upper=1), probe_every_n_steps=2, probe_steps=2,
                                    probe_window=1, patience=0, on_overfit="restore", seed=0)]


def run(out: Path, devices: int, n_train: int = 256, n_val: int = 64, batch_size: int = 32,
        epochs: int = 2, scenario: str = "at") -> dict:
    """Fit on ``devices`` processes with ``batch_size`` per process; returns (and saves) this rank's results."""
    pl.seed_everything(0)
    (x, y), (xv, yv) = digits_data(n_train, n_val)
    # Under DDP Lightning shuffles the training set with DistributedSampler(seed=PL_GLOBAL_SEED) and rank r
    # reads positions r, r + W, ... of the permutation; the single process draws the same permutation, so the
    # W shards of a step together are exactly the single-process batch of W times the size.
    dataset = TensorDataset(x, y)
    sampler = None if devices > 1 else DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    train = DataLoader(dataset, batch_size=batch_size, sampler=sampler)
    val = DataLoader(TensorDataset(xv, yv), batch_size=batch_size, shuffle=False)
    module = DigitsModule(lr=0.1)
    if scenario == "fast_at_restore":
        callbacks = fast_at_restore()
    elif scenario == "extra_loss":
        from mmrobust.callbacks import GeometricRegularization
        from mmrobust.geometry import InputGradientNorm

        callbacks = [GeometricRegularization(InputGradientNorm(), weight=5.0), evaluation()]
    else:
        callbacks = [AdversarialTraining(PGD(LinfBall(EPS, lower=0, upper=1), steps=2, random_start=False)),
                     Pruning(0.5, begin_step=2, end_step=6, frequency=2), evaluation()]
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, deterministic=True,
                         callbacks=callbacks)
    trainer.fit(module, train, val)
    result = {"weights": {k: v.detach().clone() for k, v in module.state_dict().items()},
              "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
              "sparsity": weight_sparsity(module), "world_size": trainer.world_size,
              "val_batches_per_rank": int(trainer.num_val_batches[0]), "global_step": trainer.global_step,
              "pid": os.getpid(), "healthy_step": getattr(callbacks[0], "healthy_step", None),
              "overfitting_detected": getattr(callbacks[0], "overfitting_detected", None)}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(result, out / f"rank{trainer.global_rank}.pt")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--scenario", choices=("at", "fast_at_restore", "extra_loss"), default="at")
    args = parser.parse_args()
    run(args.out, args.devices, batch_size=args.batch_size, scenario=args.scenario)


if __name__ == "__main__":
    main()
