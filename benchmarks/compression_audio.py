"""Compression and weight robustness of M5 on the Free Spoken Digit Dataset (CPU-sized; the audio column of
issue 6).

Part ``biterrors``: 8-bit quantised M5 (Conv1d/Linear weights) trained normally, with weight clipping, and
with RandBET (Stutz et al. 2021); test accuracy under random bit errors (mean ± std (min) over patterns,
:class:`~mmrobust.metrics.BitErrorAccuracy`).
Part ``pruning``: an M5 adversarially trained with PGD under an SNR ball (30 dB) pruned to 50/90/95%
sparsity by magnitude vs HYDRA importance scores (Sehwag et al. 2020), each followed by a short PGD-AT
fine-tuning; clean and robust test accuracy under PGD at 30 dB SNR.

    python benchmarks/compression_audio.py --part biterrors
    python benchmarks/compression_audio.py --part pruning

Needs ../shared/data/fsdd (or --root); official split (recordings 0-4 of every speaker and digit are the
300 test clips).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl  # noqa: E402

from benchmarks.common import (SHARED_DATA, add_bit_error_args, bit_error_rows, bit_error_settings,  # noqa: E402
                               bit_error_table, loader_accuracy, pruning_rows, pruning_table, run_part, timed_fit)
from mmrobust.adapters import WaveformAdapter  # noqa: E402
from mmrobust.attacks import PGD  # noqa: E402
from mmrobust.audio import M5, FSDDDataModule  # noqa: E402
from mmrobust.callbacks import AdversarialTraining  # noqa: E402
from mmrobust.metrics import BitErrorAccuracy  # noqa: E402
from mmrobust.threats import SNRBall  # noqa: E402

ADAPTER = WaveformAdapter(sample_rate=8000)


def waveform_loss(model: nn.Module, batch) -> torch.Tensor:
    victim = ADAPTER.victim(model, batch)
    return nn.functional.cross_entropy(victim.forward(victim.inputs), victim.target)


class LitAudio(pl.LightningModule):
    """M5 with Adam and a one-cycle schedule (the datamodule augments the training batches)."""

    def __init__(self, model: nn.Module, lr: float):
        super().__init__()
        self.model, self.lr = model, lr

    def forward(self, wave):
        return self.model(wave)

    def training_step(self, batch, batch_idx):
        return waveform_loss(self, batch)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), self.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, self.lr, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def fsdd(root: str) -> FSDDDataModule:
    dm = FSDDDataModule(root=root, split="official", batch_size=64, seed=0)
    dm.setup()
    return dm


def snr_pgd(snr: float, steps: int, seed: int) -> PGD:
    return PGD(SNRBall(snr), steps=steps, seed=seed, adapter=ADAPTER)


def robust_accuracy(model, loader, snr: float, steps: int) -> float:
    attack = snr_pgd(snr, steps, seed=0)
    robust = n = 0
    for batch in loader:
        res = attack(model, batch)
        robust += int(res.robust.sum())
        n += len(res.target)
    return robust / n


def part_biterrors(args):
    dm = fsdd(args.root)
    rates = tuple(args.rates)

    def train(callbacks):
        module = LitAudio(M5(10, width=args.width), args.lr)
        return module, timed_fit(module, args.epochs, callbacks, datamodule=dm)

    def measure(module):
        metric = BitErrorAccuracy(rates, patterns=args.patterns, seed=1, adapter=ADAPTER)
        for batch in dm.test_dataloader():
            metric.update(module, batch)
        return metric.compute()

    settings = bit_error_settings(args.settings, clip=args.clip, randbet_rate=args.randbet_rate,
                                  loss_fn=waveform_loss)
    rows = bit_error_rows(settings, train, measure)
    print(f"\nM5(width={args.width}) on FSDD (official split: {len(dm.train_set)} train / {len(dm.test_set)} test "
          f"clips, 1 s at 8 kHz, gain/shift augmentation), 8-bit asymmetric per-tensor QAT of the Conv1d/Linear "
          f"weights, {args.epochs} epochs Adam one-cycle {args.lr}, {args.patterns} bit-error patterns per rate\n")
    print(bit_error_table(rates, rows), flush=True)


def part_pruning(args):
    dm = fsdd(args.root)
    test = dm.test_dataloader()
    pl.seed_everything(0)
    lit = LitAudio(M5(10, width=args.width), args.lr)
    seconds = timed_fit(lit, args.epochs, [AdversarialTraining(snr_pgd(args.snr, args.at_steps, seed=1))], datamodule=dm)
    base = lit.model.eval()
    rows = [["dense (PGD-AT)", 0.0, 100 * loader_accuracy(base, test),
             100 * robust_accuracy(base, test, args.snr, args.steps),
             "-"]]
    print(rows[-1], f"AT {seconds:.0f}s", flush=True)
    score_loader = torch.utils.data.DataLoader(dm.train_set, batch_size=64, shuffle=True,
                                               generator=torch.Generator().manual_seed(0))
    # the dense model with the same fine-tuning as the pruned ones: the reference that isolates pruning
    methods = (f"magnitude ({args.scope})", f"HYDRA ({args.scope})")

    def finetune(model):
        # adversarial fine-tuning of the surviving weights; the parametrised masks keep the rest at zero
        pl.seed_everything(0)
        timed_fit(LitAudio(model, args.lr / 3), args.finetune_epochs,
                  [AdversarialTraining(snr_pgd(args.snr, args.at_steps, seed=3))], datamodule=dm)

    rows += pruning_rows(
        base, [(0.0, "dense + AT fine-tune")] + [(s, m) for s in args.sparsities for m in methods], scope=args.scope,
        hydra_data=score_loader, hydra_attack=lambda: snr_pgd(args.snr, args.at_steps, seed=2),
        hydra_epochs=args.score_epochs, hydra_loss=waveform_loss, finetune=finetune if args.finetune_epochs else None,
        accuracies=lambda model: (loader_accuracy(model, test), robust_accuracy(model, test, args.snr, args.steps)))
    print(f"\nM5(width={args.width}) on FSDD (official split, {len(dm.test_set)} test clips); PGD-AT under "
          f"SNRBall({args.snr:g} dB), PGD-{args.at_steps}, {args.epochs} epochs Adam one-cycle {args.lr}; HYDRA "
          f"scores: {args.score_epochs} epoch(s) with PGD-{args.at_steps}; after pruning {args.finetune_epochs} "
          f"epoch(s) of PGD-AT fine-tuning (lr {args.lr / 3:g}); robust accuracy: PGD-{args.steps} under "
          f"SNRBall({args.snr:g} dB)\n")
    print(pruning_table(rows), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=str(SHARED_DATA / "fsdd"))
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-3)
    add_bit_error_args(parser, patterns=5)
    parser.add_argument("--snr", type=float, default=30.0)
    parser.add_argument("--at-steps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--score-epochs", type=int, default=1)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--scope", choices=["layer", "global"], default="layer",
                        help="sparsity per layer (HYDRA's choice) or over all pruned weights together")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.9, 0.95])
    run_part(parser, {"biterrors": part_biterrors, "pruning": part_pruning})


if __name__ == "__main__":
    main()
