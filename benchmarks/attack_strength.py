"""Attack strength on a normally trained MNIST SmallCNN: robust accuracy at L-inf eps (lower = stronger).

Each of our attacks runs beside torchattacks' implementation with the same settings: PGD (10 steps, step
eps/4, random start), APGD-CE, APGD-T (Croce & Hein 2020) and Square; our AutoAttack-style Ensemble runs
beside torchattacks' ``AutoAttack(version="standard")`` (its own settings: APGD-CE, APGD-T, FAB-T, Square
with 5000 queries). Requirements: our PGD-10 <= torchattacks PGD, APGD / the ensemble lower still, and
each attack no weaker than its public counterpart.

    python benchmarks/attack_strength.py --n 1000 --eps 0.1
    python benchmarks/attack_strength.py --no-autoattack     # skip the slowest reference
    python benchmarks/attack_strength.py --only Ensemble     # one pair
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


def torchattacks_robust_accuracy(atk, model, x, y, batch_size):
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
    ap.add_argument("--no-autoattack", action="store_true", help="skip torchattacks' AutoAttack (slow on a CPU)")
    ap.add_argument("--only", default=None, help="comma-separated subset of PGD,APGD-CE,APGD-T,Square,Ensemble")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = mnist_cnn(epochs=args.epochs, train_limit=args.train_limit)
    x, y = mnist_tensors(False, args.n)
    threat = LinfBall(args.eps, lower=0, upper=1)
    import torchattacks

    rows = [("clean", "-", accuracy(model, x, y), 0.0)]
    eps, k, t, q, seed = args.eps, args.apgd_steps, args.targets, args.queries, args.seed
    pairs = [  # (name, settings, ours, torchattacks' counterpart)
        ("PGD", "10 steps, alpha eps/4, random start", PGD(threat, steps=10, step_size=0.25, seed=seed),
         lambda: torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=10, random_start=True)),
        # early_stop: restarts / target classes only on units still robust, as the reference code does
        ("APGD-CE", f"{k} steps", APGD(threat, steps=k, seed=seed, early_stop=True),
         lambda: torchattacks.APGD(model, eps=eps, steps=k, loss="ce", seed=seed)),
        ("APGD-T", f"{k} steps, {t} targets", APGDT(threat, steps=k, n_target_classes=t, seed=seed, early_stop=True),
         # torchattacks takes the target count as n_classes - 1
         lambda: torchattacks.APGDT(model, eps=eps, steps=k, n_classes=t + 1, seed=seed)),
        ("Square", f"{q} queries", Square(threat, n_queries=q, seed=seed),
         lambda: torchattacks.Square(model, eps=eps, n_queries=q, seed=seed)),
        ("Ensemble", f"ours: APGD-CE, APGD-T, Square as above; torchattacks: AutoAttack standard",
         Ensemble.standard(threat, steps=k, n_target_classes=t, n_queries=q, seed=seed),
         None if args.no_autoattack else lambda: torchattacks.AutoAttack(model, eps=eps, n_classes=10, seed=seed)),
    ]
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {p[0] for p in pairs}
        if unknown:
            raise SystemExit(f"--only: unknown attacks {sorted(unknown)}; choose from {[p[0] for p in pairs]}")
        pairs = [p for p in pairs if p[0] in wanted]
    by = {}
    for name, settings, ours, theirs in pairs:
        with Timer() as timer:
            acc = robust_accuracy(ours, model, x, y, args.batch_size)
        rows.append((f"mmrobust {name}", settings, acc, timer.seconds))
        by[f"mmrobust {name}"] = acc
        print(f"mmrobust {name}: {acc:.4f} ({timer.seconds:.1f} s)", file=sys.stderr, flush=True)
        if theirs is None:
            continue
        torch.manual_seed(seed)
        with Timer() as timer:
            acc = torchattacks_robust_accuracy(theirs(), model, x, y, args.batch_size)
        label = "torchattacks AutoAttack" if name == "Ensemble" else f"torchattacks {name}"
        rows.append((label, "standard" if name == "Ensemble" else settings, acc, timer.seconds))
        by[label] = acc
        print(f"{label}: {acc:.4f} ({timer.seconds:.1f} s)", file=sys.stderr, flush=True)
    print(f"\nMNIST SmallCNN ({args.epochs} epochs, train limit {args.train_limit}), {args.n} test images, "
          f"L-inf eps={args.eps}, {args.threads} threads\n")
    print(markdown_table(["attack", "settings", "robust accuracy", "seconds"], rows))
    rules = {  # (left, right): left's robust accuracy must not exceed right's
        "our PGD-10 <= torchattacks PGD": ("mmrobust PGD", ["torchattacks PGD"]),
        "APGD-CE <= our PGD-10": ("mmrobust APGD-CE", ["mmrobust PGD"]),
        "Ensemble <= every member": ("mmrobust Ensemble", ["mmrobust APGD-CE", "mmrobust APGD-T", "mmrobust Square"]),
        "our Ensemble <= torchattacks AutoAttack": ("mmrobust Ensemble", ["torchattacks AutoAttack"]),
    }
    for name in ("APGD-CE", "APGD-T", "Square"):
        rules[f"our {name} <= torchattacks {name}"] = (f"mmrobust {name}", [f"torchattacks {name}"])
    checks = {k: by[left] <= min(by[r] for r in right) for k, (left, right) in rules.items()
              if left in by and all(r in by for r in right)}
    print()
    for k, ok in checks.items():
        print(f"- {k}: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
