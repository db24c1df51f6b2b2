"""M5 on the Free Spoken Digit Dataset: clean and robust accuracy (PGD at 40/30/20 dB SNR) of a normally
and an adversarially trained model, on the official split and with a held-out speaker.

    python benchmarks/audio_fsdd.py [--epochs 20 --adv-epochs 10 --width 32 --threads 1]

Needs ../shared/data/fsdd (or --root). Prints markdown tables and writes benchmarks/results/audio_fsdd.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import loader_accuracy, log  # noqa: E402
from mmrobust.adapters import WaveformAdapter  # noqa: E402
from mmrobust.attacks import PGD  # noqa: E402
from mmrobust.audio import M5, FSDDDataModule, augment_batch  # noqa: E402
from mmrobust.threats import SNRBall  # noqa: E402
from mmrobust.threats.verify import run_checked  # noqa: E402

ADAPTER = WaveformAdapter(sample_rate=8000)


def train(model, dm, epochs, lr, attack=None, seed=0):
    """Adam with a one-cycle schedule; on-the-fly augmentation; PGD adversarial training if ``attack``."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr, weight_decay=1e-4)
    loader = dm.train_dataloader()
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * len(loader))
    for ep in range(epochs):
        model.train()
        start = time.time()
        for wave, y, lengths in loader:
            wave = augment_batch(wave, lengths, max_shift=400)
            if attack is not None:
                wave = attack.generate(model, (wave, y, lengths))[0]
            opt.zero_grad()
            nn.functional.cross_entropy(model(wave), y).backward()
            opt.step()
            sched.step()
        val = loader_accuracy(model, dm.val_dataloader())
        log(f"  epoch {ep + 1}/{epochs} ({time.time() - start:.0f} s) val acc {val:.3f}")
    return model.eval()


def robust_accuracy(model, loader, snr, steps):
    attack = PGD(SNRBall(snr), steps=steps, seed=0, adapter=ADAPTER)
    robust = n = 0
    for batch in loader:
        res = run_checked(attack, model, batch)  # every point measured against SNRBall(snr), independently
        assert bool((res.extras["audio/snr_db"] >= snr - 1e-3).all())
        robust += int(res.robust.sum())
        n += len(res.target)
    return robust / n


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--adv-epochs", type=int, default=10)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--train-snr", type=float, default=30.0)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--snrs", type=float, nargs="+", default=[40, 30, 20])
    p.add_argument("--speaker", default="theo")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-speaker", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {"settings": vars(args)}

    official = FSDDDataModule(root=args.root, split="official", batch_size=64, seed=0)
    official.setup()
    log(f"official split: {len(official.train_set)} train, {len(official.val_set)} val, {len(official.test_set)} test")
    test = official.test_dataloader()
    normal = train(M5(10, width=args.width), official, args.epochs, args.lr)
    results["official/normal"] = {"clean": loader_accuracy(normal, test)}
    for s in args.snrs:
        results["official/normal"][f"snr{s:g}"] = robust_accuracy(normal, test, s, args.steps)
    log(f"normal: {results['official/normal']}")
    at = PGD(SNRBall(args.train_snr), steps=args.train_steps, seed=0, adapter=ADAPTER)
    robust = train(M5(10, width=args.width), official, args.adv_epochs, args.lr, attack=at)
    results["official/adversarial"] = {"clean": loader_accuracy(robust, test)}
    for s in args.snrs:
        results["official/adversarial"][f"snr{s:g}"] = robust_accuracy(robust, test, s, args.steps)
    log(f"adversarial: {results['official/adversarial']}")

    if not args.skip_speaker:
        held = FSDDDataModule(root=args.root, split="speaker", test_speakers=(args.speaker,), batch_size=64, seed=0)
        held.setup()
        model = train(M5(10, width=args.width), held, args.epochs, args.lr)
        results["speaker/normal"] = {"clean": loader_accuracy(model, held.test_dataloader())}
        for s in args.snrs:
            results["speaker/normal"][f"snr{s:g}"] = robust_accuracy(model, held.test_dataloader(), s, args.steps)
        log(f"speaker held out: {results['speaker/normal']}")

    cols = ["clean"] + [f"snr{s:g}" for s in args.snrs]
    print(f"\nM5 (width {args.width}) on FSDD; PGD-{args.steps} under SNRBall; "
          f"adversarial training PGD-{args.train_steps} at {args.train_snr:g} dB\n")
    print("| setting | clean | " + " | ".join(f"{s:g} dB" for s in args.snrs) + " |")
    print("| --- |" + " ---: |" * len(cols))
    for k, v in results.items():
        if k != "settings":
            print(f"| {k} | " + " | ".join(f"{v[c]:.3f}" for c in cols) + " |")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "audio_fsdd.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
