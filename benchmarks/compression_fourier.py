"""Fourier-domain sparsity vs spatial magnitude pruning of an adversarially trained MNIST CNN (CPU-sized).

A SmallCNN trained with PGD-AT is compressed two ways at equal storage for its conv kernels:

* Fourier: kernels re-parametrised by their 2-D real DFT and the smallest coefficients masked
  (:func:`~mmrobust.compression.fourier_prune`; Liu et al. 2018), at 50/75/90% of the coefficients;
  the storage is 2 reals per kept complex coefficient (``fourier_stats(...)["compression_ratio"]``).
* spatial: magnitude pruning of the same conv kernels (Han et al. 2015) to the sparsity that stores the
  same number of reals, ``1 - 1 / compression_ratio`` (index storage of either format ignored).

Each is measured one-shot and after adversarial fine-tuning in which the sparsity is reached gradually
(the :class:`~mmrobust.callbacks.FourierSparsity` / :class:`~mmrobust.callbacks.Pruning` callbacks, Zhu &
Gupta 2017 schedule) -- clean and PGD robust accuracy.

    python benchmarks/compression_fourier.py [--train 8000 --test 1000 --epochs 2 --finetune-epochs 1]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl  # noqa: E402

from benchmarks.common import accuracy, markdown_table, mnist_tensors, quiet_run, timed_fit  # noqa: E402
from benchmarks.compression_mnist import Lit, robust_accuracy  # noqa: E402
from mmrobust import PGD, LinfBall  # noqa: E402
from mmrobust.callbacks import AdversarialTraining, FourierSparsity, Pruning  # noqa: E402
from mmrobust.compression import (fourier_parametrize, fourier_prune, fourier_stats, prune_magnitude,  # noqa: E402
                                  weight_sparsity)
from mmrobust.image import SmallCNN  # noqa: E402

CONVS = (nn.Conv2d,)


def pgd_at(eps: float, steps: int, seed: int) -> AdversarialTraining:
    return AdversarialTraining(PGD(LinfBall(eps, lower=0, upper=1), steps=steps, seed=seed))


def equal_storage_sparsity(fourier_sparsity: float) -> tuple:
    """Spatial conv sparsity storing as many reals as Fourier sparsity ``s`` does, and that compression ratio."""
    probe = fourier_parametrize(SmallCNN(width=0.5, hidden=256), types=CONVS)
    fourier_prune(probe, fourier_sparsity)
    ratio = fourier_stats(probe)["compression_ratio"]
    return max(0.0, 1 - 1 / ratio), ratio


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=8000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--at-steps", type=int, default=5)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    quiet_run(args.threads)

    x, y = mnist_tensors(True, args.train)
    xt, yt = mnist_tensors(False, args.test)
    loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    steps_per_epoch = math.ceil(args.train / 128)
    # reach the target sparsity half-way through fine-tuning; the rest recovers at the final sparsity
    schedule = dict(begin_step=0, end_step=max(1, args.finetune_epochs * steps_per_epoch // 2), frequency=5)

    pl.seed_everything(0)
    lit = Lit(SmallCNN(width=0.5, hidden=256))
    seconds = timed_fit(lit, args.epochs, [pgd_at(args.eps, args.at_steps, 0)], train_dataloaders=loader)
    base = lit.model.eval()

    def row(name, sparsity, ratio, model):
        return [name, f"{100 * sparsity:.0f}", f"{ratio:.2f}", 100 * accuracy(model, xt, yt),
                100 * robust_accuracy(model, xt, yt, args.eps)]

    rows = [row("dense (PGD-AT)", 0.0, 1.0, base)]
    print(rows[-1], f"AT {seconds:.0f}s", flush=True)
    for s in args.sparsities:
        spatial, ratio = equal_storage_sparsity(s)
        one_shot_f = fourier_parametrize(copy.deepcopy(base), types=CONVS)
        fourier_prune(one_shot_f, s)
        assert abs(fourier_stats(one_shot_f)["compression_ratio"] - ratio) < 1e-6
        rows.append(row("Fourier, one-shot", s, ratio, one_shot_f.eval()))
        print(rows[-1], flush=True)
        one_shot_m = prune_magnitude(copy.deepcopy(base), spatial, types=CONVS)
        rows.append(row("spatial magnitude, one-shot", weight_sparsity(one_shot_m, CONVS), ratio, one_shot_m.eval()))
        print(rows[-1], flush=True)
        if not args.finetune_epochs:
            continue
        pl.seed_everything(0)
        tuned_f = Lit(copy.deepcopy(base), lr=5e-4)
        timed_fit(tuned_f, args.finetune_epochs,
                  [FourierSparsity(s, types=CONVS, **schedule), pgd_at(args.eps, args.at_steps, 2)], train_dataloaders=loader)
        stats = fourier_stats(tuned_f.model)
        rows.append(row("Fourier + AT fine-tune", stats["sparsity"], stats["compression_ratio"], tuned_f.model.eval()))
        print(rows[-1], flush=True)
        pl.seed_everything(0)
        tuned_m = Lit(copy.deepcopy(base), lr=5e-4)
        timed_fit(tuned_m, args.finetune_epochs,
                  [Pruning(spatial, types=CONVS, **schedule), pgd_at(args.eps, args.at_steps, 2)], train_dataloaders=loader)
        rows.append(row("spatial magnitude + AT fine-tune", weight_sparsity(tuned_m.model, CONVS), ratio,
                        tuned_m.model.eval()))
        print(rows[-1], flush=True)
    print(f"\nSmallCNN(width=0.5, hidden=256) on MNIST ({args.train} train / {args.test} test images), PGD-AT "
          f"eps={args.eps} (PGD-{args.at_steps}) for {args.epochs} epochs Adam 1e-3; only the two 5x5 conv layers "
          f"are compressed (the dense layers stay dense in both); fine-tuning: {args.finetune_epochs} epoch(s) "
          f"PGD-AT, Adam 5e-4, sparsity ramped (cubic) over the first half; robust accuracy: PGD-10 eps={args.eps}. "
          f"'sparsity %' is of the Fourier coefficients (Fourier rows) or of the conv weights (spatial rows); "
          f"'conv compression' = conv weights / reals stored\n")
    print(markdown_table(["method", "sparsity %", "conv compression", "clean %", "robust %"], rows), flush=True)


if __name__ == "__main__":
    main()
