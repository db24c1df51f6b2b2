"""Attack strength on a normally trained MNIST SmallCNN: robust accuracy at L-inf eps (lower = stronger).

Compares torchattacks' PGD with our PGD at the same settings (10 steps, step eps/4, random start), and
our APGD-CE, APGD-T, Square and the AutoAttack-style Ensemble. Requirement: our PGD-10 <= torchattacks
PGD, and APGD / the ensemble lower still.

    python benchmarks/attack_strength.py --n 1000 --eps 0.1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Timer, accuracy, markdown_table, mnist_cnn, mnist_tensors  # noqa: E402
from mmrobust.attacks import APGD, APGDT, PGD, Ensemble, Square  # noqa: E402
from mmrobust.threats import LinfBall  # noqa: E402


def robust_accuracy(attack, model, x, y, batch_size):
    robust = 0
    for i in range(0, len(y), batch_size):
        robust += int(attack(model, (x[i:i + batch_size], y[i:i + batch_size])).robust.sum())
    return robust / len(y)


def torchattacks_robust_accuracy(model, x, y, eps, steps, batch_size, seed):
    import torchattacks

    torch.manual_seed(seed)
    atk = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=steps, random_start=True)
    robust = 0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        adv = atk(xb, yb)
        with torch.no_grad():
            robust += int(((model(adv).argmax(1) == yb) & (model(xb).argmax(1) == yb)).sum())
    return robust / len(y)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="test images")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=2, help="training epochs of the cached SmallCNN")
    ap.add_argument("--train-limit", type=int, default=None, help="training images (None: all 60k)")
    ap.add_argument("--apgd-steps", type=int, default=100)
    ap.add_argument("--targets", type=int, default=9, help="APGD-T target classes")
    ap.add_argument("--queries", type=int, default=1000, help="Square queries")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = mnist_cnn(epochs=args.epochs, train_limit=args.train_limit)
    x, y = mnist_tensors(False, args.n)
    threat = LinfBall(args.eps, lower=0, upper=1)
    rows = [("clean", "-", accuracy(model, x, y), 0.0)]
    with Timer() as t:
        ta = torchattacks_robust_accuracy(model, x, y, args.eps, 10, args.batch_size, args.seed)
    rows.append(("torchattacks PGD", "10 steps, alpha eps/4, random start", ta, t.seconds))
    ours = [
        ("mmrobust PGD", "10 steps, alpha eps/4, random start",
         PGD(threat, steps=10, step_size=0.25, seed=args.seed)),
        ("mmrobust APGD-CE", f"{args.apgd_steps} steps", APGD(threat, steps=args.apgd_steps, seed=args.seed)),
        ("mmrobust APGD-T", f"{args.apgd_steps} steps, {args.targets} targets",
         APGDT(threat, steps=args.apgd_steps, n_target_classes=args.targets, seed=args.seed)),
        ("mmrobust Square", f"{args.queries} queries", Square(threat, n_queries=args.queries, seed=args.seed)),
        ("mmrobust Ensemble", "APGD-CE, APGD-T, Square as above",
         Ensemble.standard(threat, steps=args.apgd_steps, n_target_classes=args.targets, n_queries=args.queries,
                           seed=args.seed)),
    ]
    for name, settings, attack in ours:
        with Timer() as t:
            acc = robust_accuracy(attack, model, x, y, args.batch_size)
        rows.append((name, settings, acc, t.seconds))
        print(f"{name}: {acc:.4f} ({t.seconds:.1f} s)", file=sys.stderr, flush=True)
    print(f"\nMNIST SmallCNN ({args.epochs} epochs, train limit {args.train_limit}), {args.n} test images, "
          f"L-inf eps={args.eps}, {args.threads} threads\n")
    print(markdown_table(["attack", "settings", "robust accuracy", "seconds"], rows))
    by = {r[0]: r[2] for r in rows}
    checks = {
        "our PGD-10 <= torchattacks PGD": by["mmrobust PGD"] <= by["torchattacks PGD"],
        "APGD-CE <= our PGD-10": by["mmrobust APGD-CE"] <= by["mmrobust PGD"],
        "Ensemble <= every member": by["mmrobust Ensemble"] <= min(by["mmrobust APGD-CE"], by["mmrobust APGD-T"],
                                                                   by["mmrobust Square"]),
    }
    print()
    for k, ok in checks.items():
        print(f"- {k}: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
