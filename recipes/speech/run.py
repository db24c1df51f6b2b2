"""Speech recipe: train a spoken-digit classifier, measure robust accuracy vs SNR, adversarially train,
measure again (PGD curve, universal perturbation, EOT under random delays/reverb/noise).

    python recipes/speech/run.py                                   # synthetic speech, offline, a few minutes
    python recipes/speech/run.py --data fsdd --root ../shared/data/fsdd

Writes ``robust_accuracy_vs_snr.png`` and ``results.md`` (also printed) to ``--out``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the checkout: recipes._common (and mmrobust)

from mmrobust.adapters import WaveformAdapter
from mmrobust.attacks import EOT, PGD, UniversalPerturbation
from mmrobust.audio import (M5, AddNoise, FSDDDataModule, LogMelCNN, RandomReverb, RandomTimeShift,
                            SyntheticSpeechDataModule)
from mmrobust.evaluation import evaluate
from mmrobust.threats import PeakDBBall, SNRBall
from mmrobust.training import RobustClassifier
from recipes._common import add_run_options, parse_with_quick_presets, pyplot, quiet_trainer, recipe_parser, start_run


def parse_args(argv=None):
    p = recipe_parser(__doc__)
    p.add_argument("--data", choices=["synthetic", "fsdd"], default="synthetic")
    p.add_argument("--root", default="../shared/data/fsdd", help="FSDD folder with recordings/ (for --data fsdd)")
    p.add_argument("--split", choices=["official", "speaker"], default="official")
    p.add_argument("--model", choices=["m5", "logmel"], default="m5")
    p.add_argument("--width", type=int, default=16, help="M5 first-layer channels (paper: 128)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--adv-epochs", type=int, default=5)
    p.add_argument("--train-snr", type=float, default=30.0, help="SNR (dB) of the PGD adversarial training budget")
    p.add_argument("--snrs", type=float, nargs="+", default=[50, 40, 30, 20, 10])
    p.add_argument("--steps", type=int, default=10, help="PGD steps in evaluation")
    p.add_argument("--train-steps", type=int, default=3, help="PGD steps in adversarial training")
    p.add_argument("--universal-db", type=float, default=-30.0,
                   help="universal perturbation peak level in dB relative to the data's median peak")
    p.add_argument("--eval-batches", type=int, default=None, help="limit evaluation batches (quick runs)")
    p.add_argument("--batch-size", type=int, default=64)
    add_run_options(p, out="recipes/speech/output",
                    quick_help="2 + 1 epochs, one evaluation batch, SNR 40 and 20 dB (smoke test); other flags still win")
    return parse_with_quick_presets(p, argv, epochs=2, adv_epochs=1, eval_batches=1, snrs=[40, 20])


def make_data(args):
    if args.data == "fsdd":
        return FSDDDataModule(root=args.root, split=args.split, batch_size=args.batch_size, seed=args.seed)
    return SyntheticSpeechDataModule(num_train=1500, num_val=200, num_test=300, batch_size=args.batch_size,
                                     seed=args.seed)


def make_model(args, num_classes, sample_rate):
    if args.model == "logmel":
        return LogMelCNN(num_classes, sample_rate=sample_rate)
    return M5(num_classes, width=args.width)


def fit(module, dm, epochs):
    trainer = quiet_trainer(epochs, accelerator="auto", devices=1)
    trainer.fit(module, datamodule=dm)
    return module.model.eval()


def robustness(model, dm, args, adapter, label):
    """Robust accuracy vs SNR (PGD), universal and EOT attacks on the test set."""
    test = dm.test_dataloader()
    rows = {}
    for snr in args.snrs:
        attack = PGD(SNRBall(snr), steps=args.steps, seed=args.seed)
        r = evaluate(model, test, attack, adapter=adapter, max_batches=args.eval_batches, progress=True)
        rows[f"PGD SNR {snr:g} dB"] = r
    clean = r["clean_accuracy"]
    reference = float(dm.train_set.waves.abs().amax(1).median())
    universal = UniversalPerturbation(PeakDBBall(args.universal_db), reference_level=reference, adapter=adapter,
                                      step_size=0.05, seed=args.seed)
    universal.fit(model, dm.train_dataloader(), epochs=2, progress=True)
    rows[f"universal {args.universal_db:g} dB (peak)"] = evaluate(model, test, universal, adapter=adapter,
                                                                  max_batches=args.eval_batches)
    transforms = [RandomTimeShift(dm.sample_rate // 20), RandomReverb(dm.sample_rate, rt60=(0.1, 0.3),
                                                                      rir_seconds=0.1), AddNoise((30, 40))]
    eot = EOT(PGD(SNRBall(args.train_snr), steps=args.steps, seed=args.seed, adapter=adapter), transforms,
              samples=4, eval_samples=8, seed=args.seed)
    over_air, over_air_clean, n = 0.0, 0.0, 0
    for i, batch in enumerate(test):
        if args.eval_batches is not None and i >= args.eval_batches:
            break
        res = eot(model, batch)
        over_air += float(res.extras["eot/transformed_accuracy"].sum())
        over_air_clean += float(res.extras["eot/clean_transformed_accuracy"].sum())
        n += len(res.target)
    rows[f"EOT-PGD SNR {args.train_snr:g} dB, transformed"] = {"robust_accuracy": over_air / n,
                                                               "clean_accuracy": over_air_clean / n}
    print(f"[{label}] clean accuracy {clean:.3f}")
    return clean, rows


def main(argv=None):
    args = parse_args(argv)
    out = start_run(args)
    dm = make_data(args)
    dm.setup("fit")
    adapter = WaveformAdapter(sample_rate=dm.sample_rate)
    start = time.time()

    normal = fit(RobustClassifier(make_model(args, dm.num_classes, dm.sample_rate), optimizer="adam", lr=3e-3,
                                  weight_decay=0, adapter=adapter), dm, args.epochs)
    clean_n, rows_n = robustness(normal, dm, args, adapter, "normal")

    train_attack = PGD(SNRBall(args.train_snr), steps=args.train_steps, seed=args.seed, adapter=adapter)
    robust = fit(RobustClassifier(make_model(args, dm.num_classes, dm.sample_rate), attack=train_attack,
                                  optimizer="adam", lr=3e-3, weight_decay=0, adapter=adapter), dm, args.adv_epochs)
    clean_r, rows_r = robustness(robust, dm, args, adapter, "adversarial")

    lines = [f"# Speech robustness ({args.data}, {args.model}, seed {args.seed}, {time.time() - start:.0f} s)", "",
             f"Adversarial training: PGD-{args.train_steps} at SNR {args.train_snr:g} dB. Evaluation: PGD-{args.steps}.",
             "", "| evaluation | normal | adversarially trained |", "| --- | ---: | ---: |",
             f"| clean | {clean_n:.3f} | {clean_r:.3f} |"]
    for k in rows_n:
        lines.append(f"| {k} | {rows_n[k]['robust_accuracy']:.3f} | {rows_r[k]['robust_accuracy']:.3f} |")
    table = "\n".join(lines) + "\n"
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps(
        {"normal": {k: v["robust_accuracy"] for k, v in rows_n.items()} | {"clean": clean_n},
         "adversarial": {k: v["robust_accuracy"] for k, v in rows_r.items()} | {"clean": clean_r}}, indent=1))

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, rows, clean in (("normal", rows_n, clean_n), (f"PGD-AT @ {args.train_snr:g} dB", rows_r, clean_r)):
        ys = [rows[f"PGD SNR {s:g} dB"]["robust_accuracy"] for s in args.snrs]
        ax.plot(args.snrs, ys, marker="o", label=label)
    ax.set_xlabel("SNR of the perturbation (dB)  <- stronger")
    ax.set_ylabel("robust accuracy")
    ax.invert_xaxis() if args.snrs[0] < args.snrs[-1] else None
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"PGD-{args.steps} robust accuracy ({args.data})")
    fig.tight_layout()
    fig.savefig(out / "robust_accuracy_vs_snr.png", dpi=120)
    print(table)
    print(f"wrote {out / 'results.md'} and {out / 'robust_accuracy_vs_snr.png'}")


if __name__ == "__main__":
    main()
