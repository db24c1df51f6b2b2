"""Robust training on MNIST at L-inf eps 0.3, CPU-sized: normal vs PGD-AT vs TRADES vs fast AT vs CCAT.

Reports clean accuracy, PGD-20 robust accuracy, worst case over an attack ensemble, CCAT's
confidence-thresholded robust error under an unseen L2 attack (vs PGD-AT's), wall time per epoch, and the
cost of one adversarial training step relative to a clean step.

    python benchmarks/training_mnist.py                      # full MNIST, StridedCNN, 8 epochs (~40 min, 1 core)
    python benchmarks/training_mnist.py --methods pgd_at,trades --threads 2
    python benchmarks/training_mnist.py --model small --width 0.5 --hidden 256 --train 8000 --epochs 3

The default model is :class:`~mmrobust.image.StridedCNN` (Wong & Kolter 2018's small MNIST CNN, trained at
eps 0.3 by Wong et al. 2020), cheap enough to adversarially train on all 60k images on a CPU. Adam 1e-3,
decayed 10x after 75% of the epochs (fast AT: Wong et al.'s cyclic schedule, peak 5e-3); PGD-AT and fast
AT ramp eps up over ``--warmup`` epochs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl  # noqa: E402

from benchmarks.common import accuracy, markdown_table, mnist_tensors  # noqa: E402
from mmrobust.attacks import FGSMRS, PGD  # noqa: E402
from mmrobust.callbacks import AdversarialTraining, FastAdversarialTraining  # noqa: E402
from mmrobust.image import SmallCNN, StridedCNN  # noqa: E402
from mmrobust.metrics import ConfidenceThresholdedError, worst_case_robust  # noqa: E402
from mmrobust.objectives import TradesAttack, other_class_confidence  # noqa: E402
from mmrobust.threats import L2Ball, LinfBall  # noqa: E402
from mmrobust.training import RobustClassifier  # noqa: E402

EPS = 0.3


def make_model(args) -> nn.Module:
    torch.manual_seed(args.seed)
    if args.model == "strided":
        return StridedCNN(width=args.width, hidden=args.hidden or 100)
    return SmallCNN(width=args.width, hidden=args.hidden or 1024)


def fit(name, module, callbacks, loader, args):
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                         deterministic=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(module, loader)
    # epochs actually run: early stopping (fast AT's on_overfit) may end training before max_epochs
    epochs = max(trainer.global_step / max(1, trainer.num_training_batches), 1e-9)
    per_epoch = (time.perf_counter() - start) / epochs
    cpu_per_epoch = (time.process_time() - cpu_start) / epochs  # what a quiet core needs (1 thread)
    print(f"[{name}] trained {epochs:.2f} epochs, {per_epoch:.1f} s/epoch wall, {cpu_per_epoch:.1f} CPU s/epoch",
          flush=True)
    return module.model.eval(), per_epoch, cpu_per_epoch


def ensemble_attacks(threat, seed, kind="apgd"):
    """Attacks whose per-example worst case (together with PGD-20) gives the ensemble robust accuracy.

    ``kind="standard"``: :meth:`mmrobust.attacks.Ensemble.standard` at CPU-sized budgets (APGD-CE and
    APGD-T with 50 steps and 3 target classes, Square with 300 queries); ``"apgd"``: APGD-CE(50) and
    APGD-DLR(50).
    """
    if kind == "standard":
        from mmrobust.attacks import Ensemble
        return ("AutoAttack-style Ensemble.standard(steps=50, n_target_classes=3, n_queries=300) + PGD-20",
                [Ensemble.standard(threat, steps=50, n_target_classes=3, n_queries=300, seed=seed)])
    from mmrobust.attacks.apgd import APGD
    return ("worst case of PGD-20, APGD-CE(50), APGD-DLR(50) per example",
            [APGD(threat, steps=50, loss="ce", seed=seed), APGD(threat, steps=50, loss="dlr", seed=seed)])


def evaluate(model, x, y, args):
    threat = LinfBall(EPS, lower=0, upper=1)
    pgd = PGD(threat, steps=20, seed=args.seed)
    _, ens = ensemble_attacks(threat, args.seed, args.ensemble)
    robust, worst = 0, 0
    for i in range(0, len(y), 250):
        batch = [x[i:i + 250], y[i:i + 250]]
        first = pgd(model, batch)
        robust += first.robust.sum().item()
        worst += worst_case_robust([first] + [a(model, batch) for a in ens]).sum().item()
    return robust / len(y), worst / len(y)


def thresholded_l2(model, x, y, args):
    """Unseen L2 attack (eps 3, as Stutz et al. 2020 on MNIST) maximising other-class confidence, plus CE PGD."""
    threat = L2Ball(3.0, lower=0, upper=1)
    attacks = [PGD(threat, steps=40, loss=other_class_confidence, seed=args.seed),
               PGD(threat, steps=40, seed=args.seed)]
    metric = ConfidenceThresholdedError(tpr=0.99)
    for i in range(0, len(y), 250):
        batch = [x[i:i + 250], y[i:i + 250]]
        metric.update([a(model, batch) for a in attacks])
    return {k: float(v) for k, v in metric.compute().items()}


def step_costs(args, x, y, k=10, reps=15):
    """Seconds per training step (batch 128): clean, PGD-k AT, fast AT; same model and optimizer."""
    model = make_model(args)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    threat = LinfBall(EPS, lower=0, upper=1)
    pgd = PGD(threat, steps=k, seed=0)
    fgsm = FGSMRS(threat, step_size=1.25, seed=0)

    def train_step(batch):
        opt.zero_grad()
        nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()
        opt.step()

    def clean(batch):
        train_step(batch)

    def at(batch):
        train_step(pgd.generate(model, batch))

    def fast(batch):
        train_step(fgsm.generate(model, batch))

    reps = max(1, min(reps, len(y) // 128))
    batches = [[x[i * 128:(i + 1) * 128], y[i * 128:(i + 1) * 128]] for i in range(reps)]
    times = {}
    for name, fn in (("clean", clean), (f"PGD-{k} AT", at), ("fast AT (FGSM-RS)", fast)):
        fn(batches[0])  # warm-up
        best = float("inf")
        for _ in range(3):  # min over repeats: the machine is shared
            start = time.perf_counter()
            for b in batches:
                fn(b)
            best = min(best, (time.perf_counter() - start) / reps)
        times[name] = best
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=None, help="training images (default: all 60k)")
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=2.0, help="eps warm-up epochs of PGD-AT and fast AT")
    parser.add_argument("--model", choices=("strided", "small"), default="strided")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--hidden", type=int, default=None, help="hidden units (default: the model's own)")
    parser.add_argument("--train-steps", type=int, default=10, help="PGD steps during training")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="normal,pgd_at,trades,fast_at,fast_at_075,ccat")
    parser.add_argument("--ensemble", choices=("apgd", "standard"), default="apgd")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    x, y = mnist_tensors(True, args.train)
    xt, yt = mnist_tensors(False, args.test)
    threat = LinfBall(EPS, lower=0, upper=1)
    loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed))
    common = dict(optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="multistep", milestones=[0.75],
                  gamma=0.1)
    cyclic = dict(optimizer="adam", lr=5e-3, weight_decay=0.0, scheduler="cyclic")
    k = args.train_steps
    plans = {
        "normal": lambda: (RobustClassifier(make_model(args), **common), []),
        "pgd_at": lambda: (RobustClassifier(make_model(args), **common),
                           [AdversarialTraining(PGD(threat, steps=k, seed=args.seed), warmup_epochs=args.warmup)]),
        "trades": lambda: (RobustClassifier(make_model(args), objective="trades", beta=6.0,
                                            attack=TradesAttack(threat, steps=k, seed=args.seed), **common), []),
        # Wong et al. 2020's recipe: alpha = 1.25 eps and the cyclic learning rate (peak 5e-3)
        "fast_at": lambda: (RobustClassifier(make_model(args), **cyclic),
                            [FastAdversarialTraining(threat, seed=args.seed, warmup_epochs=args.warmup,
                                                     probe_every_n_steps=20)]),
        # the paper's setting with Wong et al.'s early stopping: stop at the collapse, rewind to the last
        # healthy probe
        "fast_at_restore": lambda: (RobustClassifier(make_model(args), **cyclic),
                                    [FastAdversarialTraining(threat, seed=args.seed, warmup_epochs=args.warmup,
                                                             probe_every_n_steps=20, on_overfit="restore")]),
        # a smaller FGSM step
        "fast_at_075": lambda: (RobustClassifier(make_model(args), **cyclic),
                                [FastAdversarialTraining(threat, step_size=0.75, seed=args.seed,
                                                         warmup_epochs=args.warmup, probe_every_n_steps=20)]),
        "ccat": lambda: (RobustClassifier(make_model(args), objective="ccat", rho=10.0,
                                          attack=PGD(threat, steps=k, loss=other_class_confidence, seed=args.seed),
                                          **common), []),
    }
    results = {}
    for name in [m for m in args.methods.split(",") if m]:  # --methods "" measures step costs only
        pl.seed_everything(args.seed, verbose=False)
        module, callbacks = plans[name]()
        model, per_epoch, cpu_per_epoch = fit(name, module, callbacks, loader, args)
        clean = accuracy(model, xt, yt)
        pgd20, ens = evaluate(model, xt, yt, args)
        results[name] = {"clean": clean, "pgd20": pgd20, "ensemble": ens, "s_per_epoch": per_epoch,
                         "cpu_s_per_epoch": cpu_per_epoch}
        if name in ("pgd_at", "ccat"):
            results[name]["l2_thresholded"] = thresholded_l2(model, xt, yt, args)
        print(name, json.dumps(results[name]), flush=True)

    ens_name, _ = ensemble_attacks(threat, args.seed, args.ensemble)
    model_name = type(make_model(args)).__name__
    print(f"\nMNIST, {len(y)} train / {len(yt)} test images, {args.epochs} epochs, batch 128, Adam 1e-3 (x0.1 after "
          f"75%), {model_name}(width={args.width}, hidden={args.hidden or 'default'}), Linf eps {EPS}, "
          f"warm-up {args.warmup} epochs, training attacks with {k} steps, "
          f"{args.threads} CPU thread(s). Ensemble: {ens_name}.\n")
    print(markdown_table(["method", "clean acc", "PGD-20 robust acc", "ensemble robust acc", "s / epoch (wall)",
                          "CPU s / epoch"],
                         [[n, r["clean"], r["pgd20"], r["ensemble"], r["s_per_epoch"], r["cpu_s_per_epoch"]]
                          for n, r in results.items()]))
    rows = [[n, r["l2_thresholded"]["robust_error"], r["l2_thresholded"]["robust_error_unthresholded"],
             r["l2_thresholded"]["clean_error"], r["l2_thresholded"]["threshold"]]
            for n, r in results.items() if "l2_thresholded" in r]
    if rows:
        print("\nUnseen L2 attack (eps 3, PGD-40 on other-class confidence and on CE, worst case), threshold at 99% TPR:\n")
        print(markdown_table(["method", "RErr @99%TPR", "RErr (no threshold)", "clean Err @99%TPR", "tau"], rows))
    costs = step_costs(args, x, y, k=k)
    base = costs["clean"]
    print("\nCost of one training step (batch 128, best of 3 repeats of 15 steps):\n")
    goals = {"clean": "", f"PGD-{k} AT": f"<= {1.1 * (k + 1):.1f}", "fast AT (FGSM-RS)": "<= 2.2"}
    print(markdown_table(["step", "ms", "x clean", "goal"],
                         [[n, 1000 * t, t / base, goals[n]] for n, t in costs.items()]))
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results, "step_costs": costs}, indent=1))


if __name__ == "__main__":
    main()
