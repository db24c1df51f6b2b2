"""Audio PGD throughput: mmrobust's PGD vs ART's ProjectedGradientDescent, same trained M5, batch and settings.

    python benchmarks/audio_speed.py [--batch 64 --steps 10 --rounds 5 --threads 2]

The M5 is trained first (FSDD from ../shared/data/fsdd when present, else the embedded synthetic digits;
cached under benchmarks/.cache), because attack cost on a trained model is what users pay: an untrained
model is fooled by any step and says nothing about early stopping. Both libraries run L-inf PGD with the
same budget, step size, steps and one random start (ART has no dB budgets; our SNR ball costs the same per
step). Both perturb the whole padded clip, since ART cannot leave padding alone (with lengths, ours
never touches it). Ours is timed three ways: ``attack(model, batch)`` (an ``AttackResult``: clean and best-iterate
evaluations included), with ``early_stop=True`` (a clip leaves the working batch once it is misclassified;
same robust accuracy, less work) and ``attack.generate`` (the perturbed batch only, as ART returns).
Every round times each implementation once, in turn; the table reports medians over rounds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CACHE, SHARED_DATA, interleaved_medians, markdown_table, train_classifier  # noqa: E402
from mmrobust.adapters import WaveformAdapter  # noqa: E402
from mmrobust.attacks import PGD  # noqa: E402
from mmrobust.audio import M5, FSDDDataModule, synth_digits  # noqa: E402
from mmrobust.threats import LinfBall  # noqa: E402


def clips(data: str, train: bool, length: int):
    """``(waves, labels, lengths)``: FSDD's official split, or synthetic digits."""
    if data == "fsdd":
        dm = FSDDDataModule(SHARED_DATA / "fsdd", batch_size=512, augment=False, max_length=length)
        dm.setup()
        waves, labels, lengths = map(torch.cat, zip(*(dm.train_dataloader() if train else dm.test_dataloader())))
        return waves, labels, lengths
    return synth_digits(2000 if train else 256, seed=0 if train else 1, length=length)


def trained_m5(data: str, width: int, length: int, epochs: int) -> nn.Module:
    path = CACHE / f"m5_{data}_w{width}_l{length}_e{epochs}.pt"
    torch.manual_seed(0)
    model = M5(10, width=width)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    waves, labels, _ = clips(data, True, length)
    train_classifier(model, waves, labels, epochs=epochs, batch_size=64)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=("auto", "fsdd", "synthetic"), default="auto")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=8000, help="samples per clip (8000 = 1 s at 8 kHz)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--eps", type=float, nargs="+", default=[0.0005, 0.002],
                   help="L-inf budgets in waveform units ([-1, 1] audio); one table each")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--epochs", type=int, default=15, help="training epochs of the attacked M5")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    data = args.data if args.data != "auto" else ("fsdd" if (SHARED_DATA / "fsdd" / "recordings").is_dir()
                                                  else "synthetic")
    model = trained_m5(data, args.width, args.length, args.epochs)
    x, y, _ = (t[:args.batch] for t in clips(data, False, args.length))
    batch = (x, y)  # no lengths: ART perturbs the padding too, so ours does here (same problem, same work)
    step = 2.5 / args.steps
    xn, yn = x.numpy(), y.numpy()
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    for eps in args.eps:
        threat = LinfBall(eps, lower=-1.0, upper=1.0)
        ours = PGD(threat, steps=args.steps, step_size=step, seed=0, adapter=WaveformAdapter())
        ours_early = PGD(threat, steps=args.steps, step_size=step, seed=0, adapter=WaveformAdapter(), early_stop=True)
        clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(args.length,), nb_classes=10,
                                clip_values=(-1.0, 1.0), device_type="cpu")
        art = ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=step * eps, max_iter=args.steps,
                                       num_random_init=1, batch_size=args.batch, verbose=False)
        runs = {
            "mmrobust PGD (AttackResult)": lambda: ours(model, batch),
            "mmrobust PGD (AttackResult, early_stop=True)": lambda: ours_early(model, batch),
            "mmrobust PGD (generate)": lambda: ours.generate(model, batch),
            "ART ProjectedGradientDescent": lambda: art.generate(xn, yn),
        }
        for fn in runs.values():  # warm-up
            fn()
        med = interleaved_medians(runs, args.rounds)
        art_s = med["ART ProjectedGradientDescent"]
        robust = float(ours(model, batch).robust.float().mean())
        robust_early = float(ours_early(model, batch).robust.float().mean())
        adv_art = torch.from_numpy(art.generate(xn, yn))
        with torch.no_grad():
            robust_art = float((model(adv_art).argmax(1) == y).float().mean())
        print(f"\nL-inf PGD-{args.steps}, eps={eps}, step {step:g} x eps, trained M5 (width {args.width}, {data}, "
              f"clean acc of the batch {clean:.3f}), batch {args.batch} x {args.length} samples, CPU, "
              f"{args.threads} thread(s), median of {args.rounds} interleaved rounds\n")
        print(markdown_table(["implementation", "examples / s", "seconds / batch", "speed vs ART"],
                             [(k, args.batch / s, s, art_s / s) for k, s in med.items()]))
        print(f"\nrobust accuracy of the timed batch: ours {robust:.3f}, ours early_stop {robust_early:.3f}, "
              f"ART (last iterate) {robust_art:.3f}")


if __name__ == "__main__":
    main()
