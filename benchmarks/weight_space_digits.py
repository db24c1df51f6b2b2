"""Weight-space robustness and certification on scikit-learn digits, CPU-sized.

1. Flatness (Stutz et al. 2021) of the tests' ``digits_cnn``: clean and robust loss, average case
   (random, relative L2 xi=0.5) and worst case (adversarial, xi=0.01).
2. Plain training vs PGD adversarial training vs AT + AWP (Wu et al. 2020): clean / PGD-20 accuracy, robust
   flatness, seconds per epoch.
3. Randomized smoothing (Cohen et al. 2019): certified accuracy of ``digits_cnn`` and of the same CNN trained
   with Gaussian noise.

    python benchmarks/weight_space_digits.py --epochs 10 --certify 100 --n 500 --threads 1
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl  # noqa: E402

from benchmarks.common import markdown_table, timed_fit, train_classifier  # noqa: E402
from mmrobust.attacks import PGD  # noqa: E402
from mmrobust.callbacks import AdversarialTraining, AdversarialWeightPerturbation, GaussianNoiseTraining  # noqa: E402
from mmrobust.certify import SmoothedClassifier  # noqa: E402
from mmrobust.metrics import CertifiedAccuracy, WeightFlatness  # noqa: E402
from mmrobust.threats import LinfBall  # noqa: E402


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def make_cnn() -> nn.Module:  # the tests' digits_cnn architecture
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 16, 64), nn.ReLU(), nn.Linear(64, 10))


def digits_cnn(x, y):
    """Trained exactly as the ``digits_cnn`` test fixture."""
    torch.manual_seed(0)
    return train_classifier(make_cnn(), x, y, epochs=15, lr=3e-3, batch_size=64, seed=None)


class Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = make_cnn()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), 3e-3)


def lightning_fit(x, y, callbacks, epochs):
    pl.seed_everything(0, verbose=False)
    module = Module()
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    seconds = timed_fit(module, epochs, callbacks, train_dataloaders=loader)
    return module.net.eval(), seconds / epochs


def flatness(model, x, y, attack=None, batch=128):
    metric = WeightFlatness(samples=10, steps=10, seed=0)
    for i in range(0, len(y), batch):
        metric.update(model, (x[i:i + batch], y[i:i + batch]), attack=attack)
    return {k: float(v) for k, v in metric.compute().items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--flat", type=int, default=256, help="test examples for flatness")
    parser.add_argument("--certify", type=int, default=100, help="test examples to certify")
    parser.add_argument("--n", type=int, default=500, help="Monte Carlo samples for CERTIFY")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    x, y, xt, yt = digits()
    threat = LinfBall(args.eps, lower=0, upper=1)
    eval_attack = PGD(threat, steps=20, seed=0)
    xf, yf = xt[:args.flat], yt[:args.flat]

    def evaluate(model):
        res = eval_attack(model, (xt, yt))
        return res.clean_correct.float().mean().item(), res.robust.float().mean().item()

    print(f"## 1. Flatness of digits_cnn ({args.flat} test examples, batches of 128, 10 samples, 10 ascent steps; "
          f"average xi=0.5, worst xi=0.01, relative L2 per layer, biases included)\n")
    base = digits_cnn(x, y)
    rows = []
    for name, attack in (("clean loss", None), (f"robust loss (PGD-10 Linf {args.eps})", PGD(threat, steps=10, seed=0))):
        f = flatness(base, xf, yf, attack)
        rows.append([name, f["clean_loss"], f["average_case"], f["worst_case"]])
    print(markdown_table(["loss", "loss at w", "average-case increase", "worst-case increase"], rows), "\n")

    print(f"## 2. Plain vs PGD-AT vs AT + AWP ({args.epochs} epochs, Adam 3e-3, batch 64, train PGD-5 Linf {args.eps}; "
          f"eval PGD-20 on {len(yt)} test examples; robust flatness as in 1)\n")
    rows = []
    train_attack = PGD(threat, steps=5, seed=0)
    setups = [("plain", []), ("PGD-AT", [AdversarialTraining(train_attack)]),
              ("PGD-AT + AWP (gamma 5e-3)", [AdversarialTraining(train_attack), AdversarialWeightPerturbation(5e-3)]),
              ("PGD-AT + AWP (gamma 1e-2)", [AdversarialTraining(train_attack), AdversarialWeightPerturbation(1e-2)])]
    for name, callbacks in setups:
        model, sec = lightning_fit(x, y, callbacks, args.epochs)
        clean, robust = evaluate(model)
        f = flatness(model, xf, yf, PGD(threat, steps=10, seed=0))
        rows.append([name, clean, robust, f["clean_loss"], f["average_case"], f["worst_case"], sec])
    print(markdown_table(["training", "clean acc", "PGD-20 acc", "robust loss", "avg-case flatness",
                          "worst-case flatness", "s/epoch"], rows), "\n")

    radii = [0.0, 0.25, 0.5, 0.75, 1.0]
    print(f"## 3. Certified accuracy (Cohen et al. CERTIFY, n0=50, n={args.n}, alpha=0.001, "
          f"first {args.certify} test examples; L2 radii; input range [0, 1], 64 pixels)\n")
    rows = []
    models = {"digits_cnn (standard)": base}
    for sigma in (0.25, 0.5):
        models[f"noise-trained sigma={sigma}"] = lightning_fit(
            x, y, [GaussianNoiseTraining(sigma, seed=0)], args.epochs)[0]
    for name, model in models.items():
        for sigma in (0.25, 0.5):
            if name.startswith("noise") and f"sigma={sigma}" not in name:
                continue
            smoothed = SmoothedClassifier(model, sigma, num_classes=10, n0=50, n=args.n, alpha=0.001,
                                          batch_size=500, generator=0)
            metric = CertifiedAccuracy(radii)
            start = time.perf_counter()
            cert = smoothed.certify(xt[:args.certify])
            sec = time.perf_counter() - start
            metric.update(cert, yt[:args.certify])
            acc = metric.compute().tolist()
            rows.append([name, sigma] + acc + [float(cert.abstained.float().mean()), sec])
    print(markdown_table(["base model", "sigma"] + [f"CA@{r}" for r in radii] + ["abstain", "s"], rows))


if __name__ == "__main__":
    main()
