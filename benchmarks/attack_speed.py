"""PGD speed: examples per second, ours vs torchattacks vs ART, same model, batch and steps, one run.

Each round times every library once, in turn (interleaved, so background load hits all alike); the
table reports medians over rounds. Ours is timed three ways: ``attack(model, batch)`` (returns an
AttackResult: clean and best-iterate evaluations included), the same with ``early_stop=True`` (units
leave the working batch once adversarial: the same steps per example, less work) and
``attack.generate(model, batch)`` (the perturbed batch only, like the other two libraries return).

    python benchmarks/attack_speed.py --batch 256 --steps 10 --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, mnist_cnn, mnist_tensors  # noqa: E402
from mmrobust.attacks import PGD  # noqa: E402
from mmrobust.threats import LinfBall  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import torchattacks
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    model = mnist_cnn(epochs=args.epochs, train_limit=args.train_limit)
    x, y = mnist_tensors(False, args.batch)
    eps, alpha = args.eps, args.eps / 4

    ours = PGD(LinfBall(eps, lower=0, upper=1), steps=args.steps, step_size=0.25, seed=0)
    ours_early = PGD(LinfBall(eps, lower=0, upper=1), steps=args.steps, step_size=0.25, seed=0, early_stop=True)
    ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=args.steps, random_start=True)
    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                            nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
    art = ProjectedGradientDescent(clf, norm="inf", eps=eps, eps_step=alpha, max_iter=args.steps,
                                   num_random_init=1, batch_size=args.batch, verbose=False)
    x_np, y_np = x.numpy(), y.numpy()

    runs = {
        "mmrobust PGD (AttackResult)": lambda: ours(model, (x, y)),
        "mmrobust PGD (AttackResult, early_stop=True)": lambda: ours_early(model, (x, y)),
        "mmrobust PGD (generate)": lambda: ours.generate(model, (x, y)),
        "torchattacks PGD": lambda: ta(x, y),
        "ART ProjectedGradientDescent": lambda: art.generate(x_np, y=y_np),
    }
    for fn in runs.values():  # warm-up
        fn()
    times = {k: [] for k in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    ta_s, art_s = med["torchattacks PGD"], med["ART ProjectedGradientDescent"]
    rows = [(k, args.batch / s, s, ta_s / s, art_s / s) for k, s in med.items()]
    print(f"\nPGD L-inf eps={eps}, {args.steps} steps, batch {args.batch} MNIST images, SmallCNN, CPU, "
          f"{args.threads} threads, median of {args.rounds} interleaved rounds\n")
    print(markdown_table(["library", "examples / s", "seconds / batch", "speed vs torchattacks",
                          "speed vs ART"], rows))
    robust = {name: float(r.robust.float().mean()) for name, r in
              {"default": ours(model, (x, y)), "early_stop=True": ours_early(model, (x, y))}.items()}
    print(f"\nrobust accuracy of the timed batch: {robust} (early stopping runs the same steps per example; "
          "differences come only from floating-point effects of the smaller batches)")


if __name__ == "__main__":
    main()
