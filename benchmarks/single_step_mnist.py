"""Single-step adversarial training on MNIST through the library: Wong et al. 2020's recipe, N-FGSM, GradAlign, PGD-AT.

Wong et al.'s published MNIST recipe (``locuslab/fast_adversarial``, ``MNIST/train_mnist.py``): the Wong &
Kolter small CNN (:class:`~mmrobust.image.StridedCNN`), L-inf eps 0.3, batch 100, 10 epochs, Adam with the
cyclic learning rate 0 -> 5e-3 (at 2/5 of the epochs) -> 0 stepped per iteration, no eps warm-up, run as
``RobustClassifier(..., scheduler="cyclic")`` + :class:`~mmrobust.callbacks.FastAdversarialTraining` with
its defaults. Every method uses the same model, data order and schedule. Evaluation on the first 1000
test images: PGD-50 x 10 restarts (step 0.01, the paper's evaluation) and, beside it, APGD-CE and APGD-T
(100 steps, 9 target classes); "worst" is the per-example worst case of all three.

    python benchmarks/single_step_mnist.py --method fgsm_rs --seed 0      # one run -> results/single_step/*.json
    python benchmarks/single_step_mnist.py --seed 3 --save-model          # + weights in benchmarks/.cache/single_step/
    python benchmarks/single_step_mnist.py --report                       # the table of all runs so far
    python benchmarks/single_step_mnist.py --cost                         # time per step, interleaved rounds
    python benchmarks/single_step_mnist.py --passes                       # time of each pass a step is made of

Methods: ``fgsm_rs`` (the paper), ``fgsm_clipped`` (random start clipped to the box before the gradient:
``method="fgsm"``, the library's earlier behaviour), ``n_fgsm`` (de Jorge et al. 2022, k=2, step eps),
``grad_align`` (Andriushchenko & Flammarion 2020 as their code ``tml-epfl/understanding-fast-adv-training``
runs it, ``FastAdversarialTraining(method="grad_align")``: FGSM from a zero start, step eps (their
``fgsm_alpha`` 1.25 clipped to the ball), plus GradAlign with weight ``--grad-align-weight`` reusing the
FGSM step's gradient as the first gradient; their code gives no MNIST setting), ``grad_align_rs`` (FGSM-RS, as
``fgsm_rs``, plus GradAlign), ``pgd_at`` (PGD-10, step eps/4).
Each run logs the catastrophic-overfitting probe (every 50 steps, PGD-10 vs FGSM-RS on the training batch).
Runs store ``lr_indexing``: ``"wong"`` since the cyclic schedule is indexed as Wong et al.'s code (step s
trains with triangle(s + 1)); files without it are of before that fix (step s with triangle(s)).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl  # noqa: E402

from benchmarks.common import CACHE, accuracy, markdown_table, mnist_tensors  # noqa: E402
from mmrobust import evaluate  # noqa: E402
from mmrobust.attacks import APGD, APGDT, PGD  # noqa: E402
from mmrobust.callbacks import (AdversarialTraining, CollapseRule,  # noqa: E402
                                FastAdversarialTraining, GeometricRegularization)
from mmrobust.geometry import GradientAlignment  # noqa: E402
from mmrobust.image import StridedCNN  # noqa: E402
from mmrobust.threats import LinfBall  # noqa: E402
from mmrobust.training import RobustClassifier  # noqa: E402

EPS = 0.3
OUT = Path(__file__).resolve().parent / "results" / "single_step"
METHODS = ("fgsm_rs", "fgsm_clipped", "n_fgsm", "grad_align", "grad_align_rs", "pgd_at", "wong_loop")


class ProbeLog(pl.Callback):
    """Keeps every probe of a FastAdversarialTraining callback or a monitor: (step, PGD acc, FGSM acc)."""

    def __init__(self, fast: FastAdversarialTraining, verbose: bool = True):
        self.fast, self.rows, self._last, self.verbose = fast, [], None, verbose

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        probe = self.fast.last_probe
        if probe is not None and probe is not self._last:
            self._last = probe
            self.rows.append((self.fast.steps_seen - 1, round(probe["pgd_acc"], 3), round(probe["fgsm_acc"], 3)))
            if self.verbose:
                print("probe", *self.rows[-1], flush=True)


def callbacks_for(method: str, threat, args):
    """The library's callbacks for ``method`` (defaults unless the method says otherwise) and the monitor
    whose probes are logged."""
    if method == "pgd_at":
        return [AdversarialTraining(PGD(threat, steps=10, seed=args.seed), warmup_epochs=args.warmup)], None
    reg = GeometricRegularization(GradientAlignment(threat, seed=args.seed), weight=args.grad_align_weight,
                                  module_attr="model")
    fast_method = {"fgsm_rs": "fgsm_rs", "grad_align_rs": "fgsm_rs", "fgsm_clipped": "fgsm", "n_fgsm": "n_fgsm",
                   "grad_align": "grad_align"}[method]
    extra = {"clip_noise": not args.unclipped_noise} if method == "n_fgsm" else {}
    if method == "grad_align":  # the reference's step: zero-start FGSM (step eps) + GradAlign reusing its gradient
        extra = {"grad_align_weight": args.grad_align_weight}
    fast = FastAdversarialTraining(threat, method=fast_method, seed=args.seed, on_overfit=args.on_overfit,
                                   warmup_epochs=args.warmup, **extra)
    # the regulariser listed first: it reads the clean batch, before fast AT replaces it
    return ([reg] if method == "grad_align_rs" else []) + [fast, ProbeLog(fast)], fast


def setup(method: str, x, y, args, epochs: int, limit_batches=1.0):
    """The module, loader, callbacks and Trainer of one run (the recipe above)."""
    pl.seed_everything(args.seed, verbose=False)
    model = StridedCNN()
    module = RobustClassifier(model, optimizer="adam", lr=5e-3, weight_decay=0.0, scheduler="cyclic",
                              track_clean_acc=False)
    loader = DataLoader(TensorDataset(x, y), batch_size=100, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed))
    callbacks, fast = callbacks_for(method, LinfBall(EPS, lower=0, upper=1), args)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                         limit_train_batches=limit_batches)
    return model, module, loader, callbacks, fast, trainer


class EpochClock(pl.Callback):
    """Prints the wall time of every finished epoch (to plan long runs on a shared machine)."""

    def __init__(self):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        print(f"epoch {trainer.current_epoch} done at {time.perf_counter() - self.start:.0f} s", flush=True)


class StepTimer(pl.Callback):
    """Wall time of every training step, attack and extra losses included (listed first)."""

    def __init__(self):
        self.times, self._start = [], 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._start)


def costs(args) -> dict:
    """Median seconds per training step of every method through the library: ``--rounds`` interleaved
    rounds (background load hits all alike), each a fresh run of ``--cost-steps`` steps per method; the
    median over all steps leaves out the probe's steps (one in 50) and the first step."""
    torch.set_num_threads(args.threads)
    x, y = mnist_tensors(True, 100 * args.cost_steps)
    times = {m: [] for m in ("pgd_at", "fgsm_rs", "n_fgsm", "grad_align", "grad_align_rs")}
    for _ in range(args.rounds):
        for method in times:
            _, module, loader, _, _, trainer = setup(method, x, y, args, 1)
            timer = StepTimer()
            trainer.callbacks.insert(0, timer)
            trainer.fit(module, loader)
            times[method] += timer.times[1:]
    return {m: statistics.median(t) for m, t in times.items()}


def pass_costs(args) -> dict:
    """Median seconds of the passes a training step is made of, on one batch of 100 (plain PyTorch, no
    Lightning), in interleaved rounds: ``attack`` = forward + input gradient with the parameters frozen (one
    PGD/FGSM iteration), ``train`` = forward + parameter gradients, ``grad_align`` = GradAlign's own work
    (forward at x + eta, input gradient with ``create_graph``, cosine with a given first gradient,
    parameter gradients through both: the double back-propagation). Predicted steps: PGD-10 AT = 10 attack
    + train; FGSM-RS = attack + train; GradAlign = attack + train + grad_align (one attack more when its
    first gradient is computed again)."""
    torch.set_num_threads(args.threads)
    x, y = mnist_tensors(True, 100)
    pl.seed_everything(0, verbose=False)
    model = StridedCNN()
    params = list(model.parameters())
    eta = torch.empty_like(x).uniform_(-EPS, EPS)

    def attack():
        for p in params:
            p.requires_grad_(False)
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(nn.functional.cross_entropy(model(xg), y), xg)
        for p in params:
            p.requires_grad_(True)

    def train():
        torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params)

    g1 = torch.randn_like(x)

    def grad_align():
        xn = (x + eta).requires_grad_(True)
        (g2,) = torch.autograd.grad(nn.functional.cross_entropy(model(xn), y), xn, create_graph=True)
        cos = nn.functional.cosine_similarity(g1.flatten(1), g2.flatten(1))
        torch.autograd.grad(1.0 - cos.mean(), params)

    parts = {"attack": attack, "train": train, "grad_align": grad_align}
    times = {k: [] for k in parts}
    for _ in range(args.rounds * 20):
        for k, f in parts.items():
            start = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - start)
    t = {k: statistics.median(v) for k, v in times.items()}
    pgd = 10 * t["attack"] + t["train"]
    return {"s": t, "predicted_x_pgd10": {
        "fgsm_rs": (t["attack"] + t["train"]) / pgd,
        "grad_align (first gradient reused)": (t["attack"] + t["train"] + t["grad_align"]) / pgd,
        "grad_align (first gradient computed again)": (2 * t["attack"] + t["train"] + t["grad_align"]) / pgd}}


def wong_loop(x, y, args, probe_every: int = 50):
    """Wong et al.'s ``MNIST/train_mnist.py`` FGSM loop written out (the library's baseline): the same model
    initialisation and data order as the library runs of this seed; noise from the global generator;
    ``lr = interp(epoch + (i + 1) / N)`` set before each step; train mode; logs the same probe (PGD-10 and
    FGSM-RS on the clean batch, own seeds) every ``probe_every`` steps."""
    from mmrobust.attacks import FGSMRS
    import numpy as np

    pl.seed_everything(args.seed, verbose=False)
    model = StridedCNN()
    loader = DataLoader(TensorDataset(x, y), batch_size=100, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    threat = LinfBall(EPS, lower=0, upper=1)
    probe, probe_fgsm = PGD(threat, steps=10, seed=args.seed + 1), FGSMRS(threat, seed=args.seed + 2)
    rows, step, clock = [], 0, time.perf_counter()
    for epoch in range(args.epochs):
        for i, (xb, yb) in enumerate(loader):
            if step % probe_every == 0:
                rows.append((step, round(probe(model, [xb, yb]).adv_correct.float().mean().item(), 3),
                             round(probe_fgsm(model, [xb, yb]).adv_correct.float().mean().item(), 3)))
                print("probe", *rows[-1], flush=True)
            model.train()
            lr = np.interp([epoch + (i + 1) / len(loader)], [0, args.epochs * 2 // 5, args.epochs], [0, 5e-3, 0])[0]
            opt.param_groups[0].update(lr=lr)
            delta = torch.zeros_like(xb).uniform_(-EPS, EPS).requires_grad_(True)
            (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(xb + delta), yb), delta)
            delta = torch.clamp(delta.detach() + 1.25 * EPS * grad.sign(), -EPS, EPS)
            delta = torch.max(torch.min(1 - xb, delta), -xb)
            loss = nn.functional.cross_entropy(model(torch.clamp(xb + delta, 0, 1)), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        print(f"epoch {epoch} done at {time.perf_counter() - clock:.0f} s", flush=True)
    return model, rows


def eval_attacks(threat, seed: int) -> dict:
    """PGD-50 x 10 (step 0.01, the paper's evaluate_mnist.py), APGD-CE and APGD-T (100 steps, 9 targets)."""
    return {"pgd50x10": PGD(threat, steps=50, restarts=10, step_size=0.01 / EPS, seed=seed),
            "apgd_ce": APGD(threat, steps=100, loss="ce", seed=seed),
            "apgd_t": APGDT(threat, steps=100, n_target_classes=9, seed=seed)}


def evaluate_batch(model, batch, threat, seed: int) -> dict:
    torch.set_num_threads(1)
    return evaluate(model, [batch], eval_attacks(threat, seed), progress=False)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    x, y = mnist_tensors(True, args.train)
    xt, yt = mnist_tensors(False, args.test)
    threat = LinfBall(EPS, lower=0, upper=1)
    start = time.perf_counter()
    if args.method == "wong_loop":
        model, rows = wong_loop(x, y, args)
        fast, caught, epochs, callbacks = None, [], args.epochs, [SimpleNamespace(rows=rows)]
        seconds = time.perf_counter() - start
    else:
        model, module, loader, callbacks, fast, trainer = setup(args.method, x, y, args, args.epochs,
                                                                args.limit_batches)
        trainer.callbacks.append(EpochClock())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(module, loader)
        seconds = time.perf_counter() - start
        epochs = trainer.global_step / max(1, trainer.num_training_batches)
    model.eval()
    test = [[xt[i:i + 250], yt[i:i + 250]] for i in range(0, len(yt), 250)]
    if args.eval_workers > 1:  # batches in forked processes, each with freshly seeded attacks
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(args.eval_workers) as pool:
            parts = pool.starmap(evaluate_batch, [(model, b, threat, args.seed) for b in test])
        n = sum(p["num_examples"] for p in parts)
        ev = {"robust_accuracy": sum(p["robust_accuracy"] * p["num_examples"] for p in parts) / n,
              "per_attack": {k: sum(p["per_attack"][k] * p["num_examples"] for p in parts) / n
                             for k in parts[0]["per_attack"]}}
    else:
        ev = evaluate(model, test, eval_attacks(threat, args.seed), progress=False)
    print(f"evaluated in {time.perf_counter() - start - seconds:.0f} s", flush=True)
    co_warnings = [str(w.message) for w in caught if "catastrophic overfitting" in str(w.message)]
    return {"method": args.method, "seed": args.seed, "epochs": epochs, "planned_epochs": args.epochs, "s_per_epoch": seconds / max(epochs, 1e-9),
            "clean": accuracy(model, xt, yt), "pgd50x10": ev["per_attack"]["pgd50x10"],
            "apgd_ce": ev["per_attack"]["apgd_ce"], "apgd_t": ev["per_attack"]["apgd_t"],
            "worst": ev["robust_accuracy"], "train": len(y), "test": len(yt), "threads": args.threads,
            "eval_workers": args.eval_workers, "on_overfit": args.on_overfit,
            "restored_step": None if fast is None else fast.healthy_step,
            "grad_align_weight": args.grad_align_weight if args.method.startswith("grad_align") else None,
            "clip_noise": (not args.unclipped_noise) if args.method == "n_fgsm" else None,
            "probe_flagged": None if fast is None else fast.overfitting_detected, "probe_warnings": co_warnings,
            "lr_indexing": "wong", "warmup_epochs": 0.0 if args.method == "wong_loop" else args.warmup,
            "probes": None if args.method == "pgd_at" else callbacks[-1].rows, "_model": model}


def replayed_probe(r: dict) -> str:
    """The stored probes replayed through the current rule (the monitor's defaults: patience 0.4 and drop
    patience 0.05 of the planned run); probes during an eps warm-up are skipped, as the live monitor judges
    only full-budget probes."""
    if not r.get("probes"):
        return "-"
    planned_steps = r["train"] // 100 * r.get("planned_epochs", 10)
    rule = CollapseRule(patience_steps=math.ceil(0.4 * planned_steps),
                        drop_patience_steps=math.ceil(0.05 * planned_steps))
    warmup_steps = r.get("warmup_epochs", 0.0) * (r["train"] // 100)
    for step, pgd, fgsm in r["probes"]:
        if step < warmup_steps:  # as the live monitor: warm-up probes (budget below eps) are not judged
            continue
        if rule.update(step, pgd, fgsm)[0] is not None:
            return f"flagged at step {step}"
    return "silent"


def report() -> str:
    rows = []
    for path in sorted(p for p in OUT.glob("*.json") if p.name not in ("costs.json", "passes.json", "reference_models.json")):
        r = json.loads(path.read_text())
        name = r["method"] + (f" (lambda {r['grad_align_weight']:g})" if r.get("grad_align_weight") else "")
        name += " (noise not clipped)" if r.get("clip_noise") is False else ""
        name += f" (eps warm-up {r['warmup_epochs']:g} epochs)" if r.get("warmup_epochs") else ""
        name += f" + restore (to step {r['restored_step']})" if r.get("on_overfit") == "restore" else ""
        name += "" if r.get("lr_indexing") == "wong" or r["method"] == "wong_loop" else " (before the lr fix)"
        rows.append([name, r["seed"], f"{r['epochs']:.2f}", r["clean"], r["pgd50x10"], r["apgd_ce"], r["apgd_t"],
                     r["worst"], f"{r['s_per_epoch']:.1f}", replayed_probe(r)])
    return markdown_table(["method", "seed", "epochs", "clean", "PGD-50x10", "APGD-CE", "APGD-T", "worst",
                           "s / epoch", "probe (current rule)"], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=METHODS, default="fgsm_rs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train", type=int, default=None, help="training images (default: all 60k)")
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--limit-batches", type=float, default=1.0, help="Trainer(limit_train_batches)")
    parser.add_argument("--grad-align-weight", type=float, default=1.0,
                        help="GradAlign's lambda (the reference code has no MNIST setting; CIFAR-10: 0.2 at eps "
                             "8/255 up to 2.0 at 16/255)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=0.0,
                        help="eps warm-up epochs (warmup_epochs= of AdversarialTraining / FastAdversarialTraining; "
                             "not wong_loop); Wong et al.'s FGSM recipe has none")
    parser.add_argument("--on-overfit", choices=("warn", "stop", "restore"), default="warn",
                        help="FastAdversarialTraining(on_overfit=...): 'restore' is Wong et al.'s early stopping")
    parser.add_argument("--eval-workers", type=int, default=1,
                        help="evaluate the test batches (250 images each) in this many forked processes")
    parser.add_argument("--unclipped-noise", action="store_true",
                        help="N-FGSM: gradient at the noise not clipped to the box (the reference code clips it)")
    parser.add_argument("--save-model", action="store_true",
                        help="also save the trained weights to benchmarks/.cache/single_step/<run>.pt")
    parser.add_argument("--report", action="store_true", help="print the table of all stored runs and exit")
    parser.add_argument("--cost", action="store_true", help="only time the training steps of every method")
    parser.add_argument("--passes", action="store_true", help="only time the passes a step is made of (no Lightning)")
    parser.add_argument("--cost-steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    if args.report:
        print(report())
        return
    if args.passes:
        result = pass_costs(args)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "passes.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return
    if args.cost:
        per_step = costs(args)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "costs.json").write_text(json.dumps({"s_per_step": per_step, "steps": args.cost_steps,
                                                    "rounds": args.rounds, "threads": args.threads}, indent=1))
        print(markdown_table(["method", "ms / step", "x PGD-10 AT"],
                             [[m, 1000 * t, t / per_step["pgd_at"]] for m, t in per_step.items()]))
        return
    result = run(args)
    OUT.mkdir(parents=True, exist_ok=True)
    variant = ("_unclipped" if args.unclipped_noise else "") + ("_restore" if args.on_overfit == "restore" else "")
    variant += f"_lam{args.grad_align_weight:g}" if args.method.startswith("grad_align") else ""
    variant += f"_warmup{args.warmup:g}" if args.method != "wong_loop" and args.warmup else ""
    name = f"{args.method}{variant}_s{args.seed}" + ("" if args.epochs == 10 and args.train is None else
                                            f"_e{args.epochs}_n{args.train}")
    (OUT / f"{name}.json").write_text(json.dumps({k: v for k, v in result.items() if k != "_model"}, indent=1))
    if args.save_model:  # the trained weights, for single_step_reference.py --checkpoint (not committed)
        (CACHE / "single_step").mkdir(parents=True, exist_ok=True)
        torch.save(result.pop("_model").state_dict(), CACHE / "single_step" / f"{name}.pt")
    result.pop("_model", None)
    print(json.dumps({k: v for k, v in result.items() if k not in ("probes", "_model")}), flush=True)


if __name__ == "__main__":
    main()
