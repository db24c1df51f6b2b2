"""Compression and weight robustness on MNIST (CPU-sized).

Part ``biterrors``: 8-bit quantised SmallCNN trained normally, with weight clipping, and with RandBET
(Stutz et al. 2021); accuracy under random bit errors (mean/std/min over patterns) and the cost of
bit-error injection per training step.
Part ``pruning``: an adversarially trained (PGD-AT) small SmallCNN pruned to 50/90/95% sparsity by
magnitude vs by HYDRA importance scores (Sehwag et al. 2020); clean and PGD robust accuracy.

    python benchmarks/compression_mnist.py --part biterrors
    python benchmarks/compression_mnist.py --part pruning
    python benchmarks/compression_mnist.py --part injection --timing-reps 50   # the injection cost alone
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl  # noqa: E402

from benchmarks.common import (Timer, accuracy, add_bit_error_args, bit_error_rows, bit_error_settings,  # noqa: E402
                               bit_error_table, markdown_table, mnist_tensors, pruning_rows, pruning_table,
                               run_part, timed_fit)
from mmrobust import PGD, LinfBall  # noqa: E402
from mmrobust.callbacks import AdversarialTraining  # noqa: E402
from mmrobust.compression import bit_errors, model_size_bytes  # noqa: E402
from mmrobust.image import SmallCNN  # noqa: E402
from mmrobust.metrics import BitErrorAccuracy  # noqa: E402


class Lit(pl.LightningModule):
    def __init__(self, model, lr=1e-3):
        super().__init__()
        self.model, self.lr = model, lr

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), self.lr)


def robust_accuracy(model, x, y, eps, steps=10, batch_size=250):
    attack = PGD(LinfBall(eps, lower=0, upper=1), steps=steps, seed=0)
    robust = 0
    for i in range(0, len(y), batch_size):
        robust += int(attack(model, [x[i:i + batch_size], y[i:i + batch_size]]).robust.sum())
    return robust / len(y)


def part_biterrors(args):
    x, y = mnist_tensors(True, args.train)
    xt, yt = mnist_tensors(False, args.test)
    loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True)
    rates = tuple(args.rates)
    sizes = []

    def train(callbacks):
        lit = Lit(SmallCNN())
        return lit, timed_fit(lit, args.epochs, callbacks, train_dataloaders=loader)

    def measure(lit):
        metric = BitErrorAccuracy(rates, patterns=args.patterns, seed=1)
        for i in range(0, len(yt), 500):
            metric.update(lit, [xt[i:i + 500], yt[i:i + 500]])
        sizes.append(model_size_bytes(lit))
        return metric.compute()

    rows = bit_error_rows(bit_error_settings(args.settings, clip=0.1, randbet_rate=0.01), train, measure)
    print(f"\nSmallCNN, 8-bit asymmetric per-tensor QAT, {args.train} train / {args.test} test images, "
          f"{args.epochs} epochs Adam 1e-3, {args.patterns} bit-error patterns per rate; quantised size "
          f"{sizes[-1] / 1e6:.2f} MB (float32: {sum(p.numel() for p in SmallCNN().parameters()) * 4 / 1e6:.2f} MB)\n")
    print(bit_error_table(rates, rows), flush=True)

    part_injection(args)


def part_injection(args):
    """Cost of injection: one QAT step (batch 128) with vs without a fresh bit-error pattern, interleaved."""
    from mmrobust.compression import quantize_model
    model = SmallCNN()
    quantize_model(model, bits=8, symmetric=False, clip=0.1)
    xb, yb = mnist_tensors(True, 128)  # the first 128 training images
    gen = torch.Generator().manual_seed(0)

    def step(inject):
        if inject:
            with bit_errors(model, 0.01, generator=gen):
                nn.functional.cross_entropy(model(xb), yb).backward()
        else:
            nn.functional.cross_entropy(model(xb), yb).backward()

    times = {False: [], True: []}
    for _ in range(2):
        step(False), step(True)
    for _ in range(args.timing_reps):
        for inject in (False, True):
            with Timer() as t:
                step(inject)
            times[inject].append(t.seconds)
    clean_t, inj_t = min(times[False]), min(times[True])
    ratios = sorted(i / c for c, i in zip(times[False], times[True]))
    median_ratio = ratios[len(ratios) // 2]
    print("\n" + markdown_table(["QAT step (batch 128)", "seconds (min of reps)", "ratio of mins",
                                  "median of per-rep ratios"],
                                [["clean quantised forward+backward", clean_t, 1.0, 1.0],
                                 ["with bit-error injection (p=1%)", inj_t, inj_t / clean_t, median_ratio]]),
          flush=True)


def part_pruning(args):
    x, y = mnist_tensors(True, args.train)
    xt, yt = mnist_tensors(False, args.test)
    eps = args.eps
    loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True)
    pl.seed_everything(0)
    lit = Lit(SmallCNN(width=0.5, hidden=256))
    at = AdversarialTraining(PGD(LinfBall(eps, lower=0, upper=1), steps=args.at_steps, seed=0))
    seconds = timed_fit(lit, args.epochs, [at], train_dataloaders=loader)
    base = lit.model.eval()
    rows = [["dense (PGD-AT)", 0.0, 100 * accuracy(base, xt, yt), 100 * robust_accuracy(base, xt, yt, eps), "-"]]
    print(rows[-1], f"AT {seconds:.0f}s", flush=True)
    score_loader = DataLoader(TensorDataset(x[:args.score_train], y[:args.score_train]), batch_size=128,
                              shuffle=True, generator=torch.Generator().manual_seed(0))
    score_attack = PGD(LinfBall(eps, lower=0, upper=1), steps=args.at_steps, seed=1)

    def finetune(model):
        # adversarial fine-tuning of the surviving weights; the parametrised masks keep the rest at zero
        pl.seed_everything(0)
        timed_fit(Lit(model, lr=5e-4), args.finetune_epochs,
                  [AdversarialTraining(PGD(LinfBall(eps, lower=0, upper=1), steps=args.at_steps, seed=2))],
                  train_dataloaders=score_loader)

    plan = [(s, m) for s in (0.5, 0.9, 0.95) for m in ("magnitude (layer)", "HYDRA (layer)")]
    rows += pruning_rows(base, plan, scope="layer", hydra_data=score_loader, hydra_attack=lambda: score_attack,
                         hydra_epochs=1, finetune=finetune if args.finetune_epochs else None,
                         accuracies=lambda model: (accuracy(model, xt, yt), robust_accuracy(model, xt, yt, eps)))
    print(f"\nSmallCNN(width=0.5, hidden=256), PGD-AT eps={eps} ({args.at_steps} steps) for {args.epochs} epochs on "
          f"{args.train} images; after pruning {args.finetune_epochs} epoch(s) of PGD-AT fine-tuning on "
          f"{args.score_train} images; HYDRA scores: 1 epoch on {args.score_train} images "
          f"with PGD-{args.at_steps}; robust accuracy: PGD-10 eps={eps} on {args.test} test images\n")
    print(pruning_table(rows), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=8000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    add_bit_error_args(parser, patterns=5, with_randbet_options=False)
    parser.add_argument("--timing-reps", type=int, default=10)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--at-steps", type=int, default=5)
    parser.add_argument("--score-train", type=int, default=4000)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    run_part(parser, {"biterrors": part_biterrors, "injection": part_injection, "pruning": part_pruning})


if __name__ == "__main__":
    main()
