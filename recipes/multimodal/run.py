"""Multimodal recipe: spoken digit + handwritten digit of the same class -> a late-fusion classifier.

Trains the fused model (SmallCNN on the image + M5 on the waveform, logits summed) normally and with
joint adversarial training (the AdversarialTraining callback with PGD in a Joint threat: an L-inf ball
on the image and an SNR ball on the audio, each within its own budget), then evaluates clean accuracy,
single-modality attacks (``Joint(...).only("image")``, ``.only("audio")``) and the joint attack.

    python recipes/multimodal/run.py                      # sklearn digits + synthetic speech, offline
    python recipes/multimodal/run.py --mnist ../shared/data/MNIST/raw --fsdd ../shared/data/fsdd
    python recipes/multimodal/run.py --quick              # smoke test, well under a minute

Writes report.md/report.html (table + bar chart), results.json and the PNG to --out.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the checkout: recipes._common (and mmrobust)

import pytorch_lightning as pl
import torch

from mmrobust.adapters import MultimodalAdapter
from mmrobust.attacks import PGD
from mmrobust.callbacks import AdversarialTraining
from mmrobust.evaluation import evaluate
from mmrobust.multimodal import PairedDigitsDataModule, paired_digits_model
from mmrobust.reporting import Report
from mmrobust.threats import Joint, LinfBall, SNRBall
from mmrobust.training import RobustClassifier
from recipes._common import (add_run_options, parse_with_quick_presets, pyplot, quiet_trainer, recipe_parser,
                             use_threads, write_report)

ATTACKS = ("image only", "audio only", "joint")


def parse_args(argv=None):
    p = recipe_parser(__doc__)
    p.add_argument("--mnist", default=None, help="folder with the MNIST .gz archives (default: sklearn digits)")
    p.add_argument("--fsdd", default=None, help="FSDD folder with recordings/ (default: synthetic speech)")
    p.add_argument("--fusion", choices=["sum", "concat"], default="sum")
    p.add_argument("--eps", type=float, default=None, help="image L-inf budget (default 0.1 digits, 0.2 MNIST)")
    p.add_argument("--snr", type=float, default=30.0, help="audio SNR budget in dB (larger = smaller perturbation)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--train-steps", type=int, default=5, help="PGD steps in adversarial training")
    p.add_argument("--steps", type=int, default=20, help="PGD steps in evaluation")
    p.add_argument("--limit-train", type=int, default=None, help="training pairs to keep")
    p.add_argument("--eval-batches", type=int, default=None)
    add_run_options(p, out="runs/multimodal",
                    quick_help="600 training pairs, 3 epochs, PGD-2 training, PGD-5 evaluation, 2 test batches "
                               "(smoke test); flags given still win")
    args = parse_with_quick_presets(p, argv, epochs=3, train_steps=2, steps=5, limit_train=600,
                                    eval_batches=2)  # refuses bad counts, naming the flag
    if args.eps is None:
        args.eps = 0.2 if args.mnist else 0.1
    return args


def make_data(args) -> PairedDigitsDataModule:
    return PairedDigitsDataModule(image="mnist" if args.mnist else "digits", audio="fsdd" if args.fsdd else "synthetic",
                                  mnist_root=args.mnist, fsdd_root=args.fsdd, limit_train=args.limit_train,
                                  num_test=200 if args.quick else 400, batch_size=64, seed=args.seed,
                                  work_dir=Path(args.out) / "data")


def train(args, data, joint, adversarial: bool):
    pl.seed_everything(args.seed, workers=True)
    model = paired_digits_model(image_size=data.image_size, fusion=args.fusion)
    callbacks = []
    if adversarial:
        callbacks.append(AdversarialTraining(PGD(joint, steps=args.train_steps, seed=args.seed,
                                                 adapter=MultimodalAdapter())))
    module = RobustClassifier(model, optimizer="adam", lr=3e-3, weight_decay=0.0, adapter=MultimodalAdapter())
    trainer = quiet_trainer(args.epochs, callbacks, enable_progress_bar=False, accelerator="auto", devices=1,
                            num_sanity_val_steps=0, limit_val_batches=0, deterministic=True)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    return module.model.eval(), time.perf_counter() - start


def robustness(model, data, joint, args):
    attacks = {"image only": PGD(joint.only("image"), steps=args.steps, seed=args.seed),
               "audio only": PGD(joint.only("audio"), steps=args.steps, seed=args.seed),
               "joint": PGD(joint, steps=args.steps, seed=args.seed)}
    return evaluate(model, data.test_dataloader(), attacks, adapter=MultimodalAdapter(),
                    max_batches=args.eval_batches, progress=False)


def branch_accuracy(model, data, args):
    """Clean accuracy of each branch alone (how much evidence each modality carries)."""
    correct, total = {"image": 0, "audio": 0}, 0
    with torch.no_grad():
        for i, batch in enumerate(data.test_dataloader()):
            if args.eval_batches is not None and i >= args.eval_batches:
                break
            out = model.branches(batch["image"], batch["audio"])
            for k in correct:
                correct[k] += int((out[k].argmax(1) == batch["y"]).sum())
            total += len(batch["y"])
    return {k: v / total for k, v in correct.items()}


def main(argv=None):
    args = parse_args(argv)
    use_threads(args)
    start = time.perf_counter()
    data = make_data(args)
    data.prepare_data()
    data.setup("fit")
    joint = Joint({"image": LinfBall(args.eps, lower=0.0, upper=1.0), "audio": SNRBall(args.snr)})
    rows, results = [], {}
    for name, adversarial in (("normal", False), ("joint PGD-AT", True)):
        model, seconds = train(args, data, joint, adversarial)
        res = robustness(model, data, joint, args)
        branches = branch_accuracy(model, data, args)
        results[name] = res
        rows.append({"training": name, "clean": res["clean_accuracy"],
                     **{f"{a} attack": res["per_attack"][a] for a in ATTACKS},
                     "image branch alone": branches["image"], "audio branch alone": branches["audio"],
                     "train s": seconds})

    images = "MNIST" if args.mnist else "sklearn digits 8x8"
    audio = "FSDD" if args.fsdd else "synthetic speech"
    report = Report(f"Multimodal robustness: spoken + handwritten digits ({images} + {audio})", args.out)
    report.section("Accuracy under single-modality and joint attacks")
    report.text("Late fusion (logits " + ("summed" if args.fusion == "sum" else "concatenated, linear head") +
                f") of SmallCNN (image) and M5 (waveform). Budgets: image L-inf {args.eps:g} in [0, 1], audio SNR "
                f">= {args.snr:g} dB; an attack on one modality leaves the other clean.")
    table = report.table("Test accuracy", rows, note=f"{results['normal']['num_examples']} test pairs; PGD-{args.steps}")

    plt = pyplot()
    labels = ["clean", *ATTACKS]
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    width = 0.38
    for k, row in enumerate(rows):
        values = [row["clean"]] + [row[f"{a} attack"] for a in ATTACKS]
        ax.bar([i + (k - 0.5) * width for i in range(len(labels))], values, width, label=row["training"])
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Paired digits: which modality does the attack need?", fontsize=10)
    report.figure("Accuracy by attacked modality", fig, caption="PGD on the image only, the audio only, or both.")
    report.settings({"data": f"PairedDigitsDataModule(image={data.image!r}, audio={data.audio!r}, "
                             f"limit_train={args.limit_train}, seed={args.seed})",
                     "model": f"paired_digits_model(image_size={data.image_size}, fusion={args.fusion!r})",
                     "training": f"Adam lr 3e-3, {args.epochs} epochs, batch 64; AT: PGD-{args.train_steps} "
                                 f"Joint(image L-inf {args.eps:g}, audio SNR {args.snr:g} dB)",
                     "evaluation": f"PGD-{args.steps}, step 2.5/steps of the radius, random start, seed {args.seed}, "
                                   f"eval_batches={args.eval_batches}",
                     "total seconds": round(time.perf_counter() - start, 1),
                     "command": "python recipes/multimodal/run.py " + " ".join(argv if argv is not None else sys.argv[1:])})
    write_report(report, table)
    return rows


if __name__ == "__main__":
    main()
