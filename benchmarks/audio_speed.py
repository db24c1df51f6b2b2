"""Audio PGD throughput: mmrobust's PGD vs ART's ProjectedGradientDescent on the same M5 model and batch.

    python benchmarks/audio_speed.py [--batch 64 --length 8000 --steps 10 --threads 1]

Both run L-inf PGD with the same budget, step size, number of steps and one random start; ours also
tracks the best iterate (one extra forward per step is folded into the gradient pass) and returns an
``AttackResult`` with clean and adversarial logits. Prints examples/s and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmrobust.adapters import WaveformAdapter  # noqa: E402
from mmrobust.attacks import PGD  # noqa: E402
from mmrobust.audio import M5, synth_digits  # noqa: E402
from mmrobust.threats import LinfBall  # noqa: E402


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), float(np.median(times))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=8000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--eps", type=float, default=0.005)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    torch.manual_seed(0)
    model = M5(10, width=args.width).eval()
    x, y, lengths = synth_digits(args.batch, seed=0, length=args.length)
    step = 2.5 / args.steps
    ours = PGD(LinfBall(args.eps, lower=-1.0, upper=1.0), steps=args.steps, step_size=step, seed=0,
               adapter=WaveformAdapter())
    clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(args.length,), nb_classes=10,
                            clip_values=(-1.0, 1.0), device_type="cpu")
    art = ProjectedGradientDescent(clf, norm=np.inf, eps=args.eps, eps_step=step * args.eps, max_iter=args.steps,
                                   num_random_init=1, batch_size=args.batch, verbose=False)
    xn, yn = x.numpy(), y.numpy()
    ours(model, (x, y))  # warm-up
    art.generate(xn, yn)
    t_ours, m_ours = best_time(lambda: ours(model, (x, y)), args.repeats)
    t_art, m_art = best_time(lambda: art.generate(xn, yn), args.repeats)
    # generate(): the perturbed batch only, as used in adversarial training
    t_gen, m_gen = best_time(lambda: ours.generate(model, (x, y)), args.repeats)
    print(f"\nL-inf PGD-{args.steps}, eps={args.eps}, M5 width {args.width}, batch {args.batch} x {args.length} samples, "
          f"{args.threads} thread(s), best of {args.repeats}\n")
    print("| implementation | examples/s (best) | examples/s (median) | speed-up vs ART |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| ART ProjectedGradientDescent | {args.batch / t_art:.1f} | {args.batch / m_art:.1f} | 1.00 |")
    print(f"| mmrobust PGD (__call__, AttackResult) | {args.batch / t_ours:.1f} | {args.batch / m_ours:.1f} | "
          f"{t_art / t_ours:.2f} |")
    print(f"| mmrobust PGD.generate (batch only) | {args.batch / t_gen:.1f} | {args.batch / m_gen:.1f} | "
          f"{t_art / t_gen:.2f} |")


if __name__ == "__main__":
    main()
