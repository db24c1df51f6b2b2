"""Leave-one-speaker-out on the Free Spoken Digit Dataset: every speaker held out in turn, a KeywordCNN
(MFCC + CMVN + deltas, 1-D convolutions, SpecAugment; --no-deltas for MFCC only) trained on the other five
for 40 epochs with SpeechAugmentation's defaults (speed 0.8-1.25, shift, gain, synthetic RIR on half the clips,
noise at 5-40 dB SNR; --speed/--reverb-probability/--noise-snr change them), clean accuracy per held-out speaker and, with --snrs,
robust accuracy under PGD in an SNRBall; --adversarial adds PGD adversarial training at --train-snr
(from scratch, or with --init-dir fine-tuning each fold's saved normal model).

    nice python benchmarks/audio_fsdd_speakers.py [--epochs 40 --speakers theo george --snrs 40 30 20]

Needs ../shared/data/fsdd (MMROBUST_SHARED_DATA or --root). Appends each finished fold to
benchmarks/results/audio_fsdd_speakers.json and prints a markdown table.
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

from benchmarks.audio_fsdd import ADAPTER, robust_accuracy  # noqa: E402
from benchmarks.common import SHARED_DATA, loader_accuracy, log  # noqa: E402
from mmrobust.attacks import PGD  # noqa: E402
from mmrobust.audio import FSDDDataModule, KeywordCNN, SpeechAugmentation  # noqa: E402
from mmrobust.audio.data import FSDD_SPEAKERS  # noqa: E402
from mmrobust.threats import SNRBall  # noqa: E402

def train(model, dm, epochs, lr, attack=None, seed=0):
    """AdamW (weight decay 1e-2), one-cycle schedule, label smoothing 0.1, the datamodule's augmentation;
    PGD adversarial training on the augmented batch if ``attack``."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=1e-2)
    loader = dm.train_dataloader()
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * len(loader))
    for ep in range(epochs):
        model.train()
        for wave, y, lengths in loader:
            wave, lengths = dm.augment(wave, lengths)
            if attack is not None:
                wave = attack.generate(model, (wave, y, lengths))[0]
            opt.zero_grad()
            nn.functional.cross_entropy(model(wave), y, label_smoothing=0.1).backward()
            opt.step()
            sched.step()
    return model.eval()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--root", default=str(SHARED_DATA / "fsdd"))
    p.add_argument("--speakers", nargs="+", default=list(FSDD_SPEAKERS))
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--snrs", type=float, nargs="*", default=[])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--adversarial", action="store_true")
    p.add_argument("--adversarial-only", action="store_true", help="train only the PGD-AT model of each fold")
    p.add_argument("--train-snr", type=float, default=30.0)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-deltas", action="store_true")
    p.add_argument("--width", type=int, default=32, help="KeywordCNN width")
    p.add_argument("--speed", type=float, nargs=2, default=None, help="SpeechAugmentation speed range")
    p.add_argument("--reverb-probability", type=float, default=None)
    p.add_argument("--noise-snr", type=float, nargs=2, default=None, help="SpeechAugmentation noise SNR range, dB")
    p.add_argument("--save-dir", default=None, help="save each fold's weights as <speaker>_<kind>.pt here")
    p.add_argument("--init-dir", default=None,
                   help="start each fold from <speaker>_normal.pt in this folder (adversarial fine-tuning)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "audio_fsdd_speakers.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["settings"] = vars(args)
    kinds = ["normal"] + (["adversarial"] if args.adversarial else [])
    if args.adversarial_only:
        kinds = ["adversarial"]
    aug = {k: v for k, v in (("speed", args.speed), ("reverb_probability", args.reverb_probability),
                              ("noise_snr_db", args.noise_snr)) if v is not None}
    for speaker in args.speakers:
        dm = FSDDDataModule(root=args.root, split="speaker", test_speakers=(speaker,), val_fraction=0.0,
                            batch_size=64, augment=SpeechAugmentation(**aug))
        dm.setup()
        for kind in kinds:
            start = time.time()
            attack = PGD(SNRBall(args.train_snr), steps=args.train_steps, seed=0, adapter=ADAPTER) \
                if kind == "adversarial" else None
            model = KeywordCNN(10, width=args.width, deltas=not args.no_deltas)
            if args.init_dir:
                model.load_state_dict(torch.load(Path(args.init_dir) / f"{speaker}_normal.pt"))
            model = train(model, dm, args.epochs, args.lr, attack=attack)
            row = {"clean": loader_accuracy(model, dm.test_dataloader()), "train_s": round(time.time() - start)}
            for s in args.snrs:
                row[f"snr{s:g}"] = robust_accuracy(model, dm.test_dataloader(), s, args.steps)
            if args.save_dir:
                Path(args.save_dir).mkdir(parents=True, exist_ok=True)
                torch.save(model.state_dict(), Path(args.save_dir) / f"{speaker}_{kind}.pt")
            results[f"{speaker}/{kind}"] = row
            log(f"{speaker} held out, {kind}: {row}")
            out.parent.mkdir(exist_ok=True)
            out.write_text(json.dumps(results, indent=1))
    cols = ["clean"] + [f"snr{s:g}" for s in args.snrs]
    print("\n| held-out speaker | model | " + " | ".join(cols) + " |")
    print("| --- | --- |" + " ---: |" * len(cols))
    for kind in kinds:
        keys = [k for k in results if k.endswith("/" + kind)]
        rows = [results[k] for k in keys]
        for k, r in zip(keys, rows):
            print(f"| {k.split('/')[0]} | {kind} | " + " | ".join(f"{r.get(c, float('nan')):.3f}" for c in cols) + " |")
        if rows:
            print(f"| **mean** | {kind} | " + " | ".join(
                f"**{sum(r.get(c, 0) for r in rows) / len(rows):.3f}**" for c in cols) + " |")


if __name__ == "__main__":
    main()
