"""Geometry of robustness on MNIST (CPU-sized).

Part 1 trains the same small CNN five ways -- normal, PGD-AT (Madry et al. 2018), TRADES (Zhang et al. 2019),
CLIP (Bungert et al. 2021) and CURE (Moosavi-Dezfooli et al. 2019) -- and compares them by clean accuracy,
L2 robust accuracy (PGD), median L2 distance to the decision boundary (minimal-norm search), local Lipschitz
estimate of the logits and curvature of the loss.

Part 2 compares adversarial training with the amortised (AdvGAN-style, online) attack against PGD-AT at equal
wall-clock time: steps done, seconds per step, clean and robust accuracy.

    python benchmarks/geometry_mnist.py [--train 6000] [--test 300] [--epochs 2] [--seconds 60]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, mnist_tensors  # noqa: E402
from mmrobust.attacks import PGD, AmortizedAttack, MLPPerturbationGenerator  # noqa: E402
from mmrobust.geometry import (CurvatureRegularizer, LipschitzRegularizer, MinimalNormSearch,  # noqa: E402
                               curvature, local_lipschitz, with_predicted_labels)
from mmrobust.image import SmallCNN  # noqa: E402
from mmrobust.metrics.geometry import BoundaryDistance  # noqa: E402
from mmrobust.objectives import TradesAttack, trades_loss  # noqa: E402
from mmrobust.threats import L2Ball  # noqa: E402

EPS = 1.5          # L2 budget on [0, 1] MNIST (28x28)
TRAIN_STEPS = 5    # attack steps during training


def small_cnn() -> nn.Module:
    return SmallCNN(width=0.25, hidden=128)


def batches(x, y, batch_size, seed):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    for i in range(0, len(y) - batch_size + 1, batch_size):
        idx = perm[i:i + batch_size]
        yield x[idx], y[idx]


def train(method: str, x, y, epochs: int, batch_size: int = 100, seed: int = 0, seconds: float | None = None,
          amortized: AmortizedAttack | None = None):
    torch.manual_seed(seed)
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    threat = L2Ball(EPS, lower=0, upper=1)
    pgd = PGD(threat, steps=TRAIN_STEPS, seed=seed)
    trades = TradesAttack(threat, steps=TRAIN_STEPS, seed=seed)
    clip = LipschitzRegularizer(L2Ball(0.5), steps=3, seed=seed, reduction="mean")
    cure = CurvatureRegularizer(h=0.5)
    steps, start = 0, time.perf_counter()
    for epoch in range(epochs if seconds is None else 10 ** 6):
        for xb, yb in batches(x, y, batch_size, seed + epoch):
            model.train()
            if method == "pgd_at":
                xb_adv = pgd.generate(model, [xb, yb])[0]
                loss = nn.functional.cross_entropy(model(xb_adv), yb)
            elif method == "amortized_at":
                xb_adv = amortized.generate(model, [xb, yb])[0]
                loss = nn.functional.cross_entropy(model(xb_adv), yb)
            elif method == "trades":
                xb_adv = trades.generate(model, [xb, yb])[0]
                loss = trades_loss(model(xb), model(xb_adv), yb, beta=6.0)
            else:
                loss = nn.functional.cross_entropy(model(xb), yb)
                if method == "clip":
                    loss = loss + 0.1 * clip(model, (xb, yb))
                elif method == "cure":
                    loss = loss + 4.0 * cure(model, (xb, yb))
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if seconds is not None and time.perf_counter() - start > seconds:
                return model.eval(), steps, time.perf_counter() - start
    return model.eval(), steps, time.perf_counter() - start


def evaluate(model, xt, yt, geometry: bool = True):
    with torch.no_grad():
        clean = (model(xt).argmax(1) == yt).float().mean().item()
    robust = PGD(L2Ball(EPS, lower=0, upper=1), steps=20, seed=0)(model, (xt, yt)).robust.float().mean().item()
    row = {"clean": clean, "robust": robust}
    if geometry:
        search = MinimalNormSearch(PGD(L2Ball(6.0, lower=0, upper=1), steps=10, loss="margin", random_start=False),
                                   search_steps=6)
        metric = BoundaryDistance()
        metric.update(with_predicted_labels(search)(model, (xt, yt)))
        stats = metric.compute()
        row["median_dist"] = stats["median_correct"].item()
        row["spearman"] = stats["spearman_correct"].item()
        row["lipschitz"] = local_lipschitz(model, (xt, yt), L2Ball(0.5, lower=0, upper=1), steps=10, seed=0).mean().item()
        row["curvature"] = curvature(model, (xt, yt), h=0.5).mean().item()
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0, help="wall time per model in part 2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip", default="", help="comma-separated methods to skip in part 1")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y = mnist_tensors(True, args.train)
    xt, yt = mnist_tensors(False, args.test)

    rows = []
    for method in ["normal", "pgd_at", "trades", "clip", "cure"]:
        if method in args.skip.split(","):
            continue
        model, steps, secs = train(method, x, y, args.epochs)
        r = evaluate(model, xt, yt)
        rows.append([method, steps, secs / steps, r["clean"], r["robust"], r["median_dist"], r["spearman"],
                     r["lipschitz"], r["curvature"]])
        print(f"{method}: {r} ({secs:.0f}s)", flush=True)
    print(f"\n## Part 1: geometry (SmallCNN width 0.25, {args.train} train / {args.test} test, {args.epochs} epochs, "
          f"L2 eps={EPS}, train attacks {TRAIN_STEPS} steps)\n")
    print(markdown_table(["method", "steps", "s/step", "clean acc", f"PGD-20 L2 {EPS} acc", "median L2 dist (correct)",
                          "Spearman(dist, conf)", "Lipschitz (r=0.5)", "curvature (h=0.5)"], rows))

    rows2 = []
    torch.manual_seed(0)
    amortized = AmortizedAttack(L2Ball(EPS, lower=0, upper=1), MLPPerturbationGenerator((1, 28, 28), 256),
                                lr=1e-3, online=True, seed=0)
    for method in ["pgd_at", "amortized_at"]:
        model, steps, secs = train(method, x, y, 1, seconds=args.seconds, amortized=amortized)
        r = evaluate(model, xt, yt, geometry=False)
        rows2.append([method, steps, secs / steps, r["clean"], r["robust"]])
        print(f"{method}: {r} ({steps} steps, {secs:.0f}s)", flush=True)
    print(f"\n## Part 2: amortised-attack AT vs PGD-AT at equal wall time ({args.seconds:.0f} s each, "
          f"L2 eps={EPS})\n")
    print(markdown_table(["method", "steps in budget", "s/step", "clean acc", f"PGD-20 L2 {EPS} acc"], rows2))


if __name__ == "__main__":
    main()
