"""Robustness evaluation side by side with torchattacks, CPU-sized.

On a normally trained SmallCNN (MNIST, ``benchmarks/.cache``), measures at L-inf budgets:

* ``mmrobust.evaluate`` with PGD (random start, step 2.5 * eps / steps) vs ``torchattacks.PGD`` with the
  same settings: robust accuracy and wall time (both over the same examples);
* the overhead of the ``RobustnessEvaluation`` callback inside ``Trainer.validate`` (default
  ``inference_mode=True``) over calling ``evaluate`` directly, and that both give the same number.

    python benchmarks/evaluation_mnist.py --test 500 --steps 20 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl  # noqa: E402

from benchmarks.common import accuracy, markdown_table, mnist_cnn, mnist_tensors  # noqa: E402
from mmrobust import evaluate  # noqa: E402
from mmrobust.attacks import PGD  # noqa: E402
from mmrobust.callbacks import RobustnessEvaluation  # noqa: E402
from mmrobust.threats import LinfBall  # noqa: E402


class Wrapped(pl.LightningModule):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)

    def validation_step(self, batch, batch_idx):
        pass


def torchattacks_robust_accuracy(model, x, y, eps, steps, batch_size, seed):
    import torchattacks

    torch.manual_seed(seed)
    attack = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
    robust = 0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        adv = attack(xb, yb)
        with torch.no_grad():
            robust += ((model(adv).argmax(1) == yb) & (model(xb).argmax(1) == yb)).sum().item()
    return robust / len(y)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--train", type=int, default=10000, help="training examples for the cached CNN")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    model = mnist_cnn(epochs=1, train_limit=args.train)
    x, y = mnist_tensors(False, args.test)
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size)
    print(f"SmallCNN trained on {args.train} MNIST examples, clean accuracy {accuracy(model, x, y):.4f} "
          f"on {args.test} test examples; PGD-{args.steps}, step 2.5*eps/steps, 1 restart, random start\n")

    rows = []
    for eps in args.eps:
        attack = PGD(LinfBall(eps, lower=0.0, upper=1.0), steps=args.steps, seed=args.seed)
        start = time.perf_counter()
        ours = evaluate(model, loader, attack, progress=False)
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        theirs = torchattacks_robust_accuracy(model, x, y, eps, args.steps, args.batch_size, args.seed)
        t_theirs = time.perf_counter() - start
        rows.append([eps, ours["robust_accuracy"], theirs, t_ours, t_theirs, t_ours / t_theirs])
    print(markdown_table(["eps", "mmrobust robust acc", "torchattacks robust acc", "mmrobust s", "torchattacks s",
                          "time ratio"], rows))

    eps = args.eps[-1]
    make = lambda: PGD(LinfBall(eps, lower=0.0, upper=1.0), steps=args.steps, seed=args.seed)  # noqa: E731
    start = time.perf_counter()
    direct = evaluate(model, loader, make(), progress=False)
    t_direct = time.perf_counter() - start
    trainer = pl.Trainer(callbacks=[RobustnessEvaluation(make())], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    start = time.perf_counter()
    trainer.validate(Wrapped(model), dataloaders=loader, verbose=False)
    t_callback = time.perf_counter() - start
    logged = trainer.callback_metrics["val/robust_acc"].item()
    print()
    print(markdown_table(["eps", "evaluate() robust acc", "callback val/robust_acc", "evaluate() s", "callback s",
                          "overhead"], [[eps, direct["robust_accuracy"], logged, t_direct, t_callback,
                                         t_callback / t_direct]]))


if __name__ == "__main__":
    main()
