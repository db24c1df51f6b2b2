"""Keyword spotting on Speech Commands (Warden 2018, https://arxiv.org/abs/1804.03209) as it is shipped:
train a KeywordCNN (MFCC + deltas, CMVN, SpecAugment) with SpeechAugmentation, report clean test accuracy
and PGD robust accuracy in SNR balls, optionally PGD-adversarially train and report again.

    python recipes/speech/keywords.py --root DIR --version v0.02 --task 12      # 10 keywords + unknown + silence
    python recipes/speech/keywords.py --root DIR --version v0.01 --task 10      # the ten keywords only
    python recipes/speech/keywords.py --root DIR --version v0.02 --task 35      # every word (v0.01: --task 30)
    python recipes/speech/keywords.py --root DIR --subset 300                   # at most 300 clips per split

``DIR`` is the release folder (``yes/``, ``no/``, ..., ``testing_list.txt``) or a folder holding
``speech_commands_<version>`` or torchaudio's ``SpeechCommands/speech_commands_<version>``. The splits are
the release's ``validation_list.txt`` / ``testing_list.txt`` restricted to the files present; listed files
that are absent (a partial copy) are counted and reported. Nothing is downloaded.

Writes ``results.md`` (also printed) and ``results.json`` to ``--out``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the checkout: recipes._common (and mmrobust)

import torch

from mmrobust.adapters import WaveformAdapter
from mmrobust.attacks import PGD
from mmrobust.audio import KeywordCNN, ReleaseNotFound, SpeechAugmentation, SpeechCommandsDataModule
from mmrobust.audio.speech_commands import TASKS, VERSIONS
from mmrobust.evaluation import evaluate
from mmrobust.threats import SNRBall
from mmrobust.training import RobustClassifier
from recipes._common import add_run_options, parse_with_quick_presets, quiet_trainer, recipe_parser, start_run


def parse_args(argv=None):
    p = recipe_parser(__doc__)
    p.add_argument("--root", required=True, help="Speech Commands release folder (or a folder above it)")
    p.add_argument("--version", choices=VERSIONS, default="v0.02")
    p.add_argument("--task", choices=TASKS, default="12",
                   help="10: the ten keywords; 12: + _unknown_ and _silence_; 35 (v0.02) / 30 (v0.01) / all: every word")
    p.add_argument("--subset", type=int, default=None,
                   help="keep at most this many clips per split (seeded draw); default: every clip present")
    p.add_argument("--unknown-fraction", type=float, default=0.1,
                   help="task 12: share of the non-keyword clips kept as _unknown_")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--adv-epochs", type=int, default=0, help="> 0: also PGD-adversarially train a model")
    p.add_argument("--train-snr", type=float, default=30.0, help="SNR (dB) of the adversarial training budget")
    p.add_argument("--train-steps", type=int, default=2, help="PGD steps in adversarial training")
    p.add_argument("--snrs", type=float, nargs="*", default=[40, 30, 20], help="PGD evaluation budgets (dB SNR)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps in evaluation")
    p.add_argument("--width", type=int, default=64, help="KeywordCNN width")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (clips are read from disk)")
    p.add_argument("--eval-batches", type=int, default=None, help="limit evaluation batches (quick runs)")
    p.add_argument("--sample-rate", type=int, default=16000)
    add_run_options(p, out="recipes/speech/output_keywords",
                    quick_help="1 epoch, one evaluation batch, 30 dB only (smoke test); flags given still win")
    args = parse_with_quick_presets(p, argv, epochs=1, eval_batches=1, snrs=[30])  # refuses bad counts
    if not args.snrs:
        p.error("--snrs must name at least one evaluation budget in dB SNR (e.g. --snrs 40 30 20)")
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    return args


def missing_release(root, missing: ReleaseNotFound) -> str:
    """What a user of this recipe can do when ``--root`` holds no release (the library's message speaks of
    its own arguments, ``root=`` and ``download=True``, which this recipe does not take)."""
    v = missing.version
    if missing.other_version:
        return (f"keywords.py: error: --root {root} holds speech_commands_{missing.other_version}: "
                f"pass --version {missing.other_version}")
    return (f"keywords.py: error: --root {root}: no Speech Commands {v} release (a folder with testing_list.txt) "
            f"at any of {[str(c) for c in missing.candidates]}. --root must be the release folder (yes/, no/, ..., "
            f"testing_list.txt, validation_list.txt) or a folder holding speech_commands_{v}/ or "
            f"SpeechCommands/speech_commands_{v}/. This recipe downloads nothing: get {missing.url}, unpack it "
            f"with `mkdir -p DIR/speech_commands_{v} && tar -xzf speech_commands_{v}.tar.gz -C "
            f"DIR/speech_commands_{v}` and pass --root DIR (online, SpeechCommandsDataModule(root=DIR, "
            f"version={v!r}, download=True) from Python lets torchaudio fetch it instead).")


def make_data(args) -> SpeechCommandsDataModule:
    """The datamodule, not set up yet; refused (:func:`missing_release`) when ``--root`` holds no release."""
    dm = SpeechCommandsDataModule(
        root=args.root, version=args.version, task=args.task, unknown_fraction=args.unknown_fraction,
        limit_per_split=args.subset, seed=args.seed, sample_rate=args.sample_rate, max_length=args.sample_rate,
        batch_size=args.batch_size, num_workers=args.num_workers,
        augment=SpeechAugmentation(sample_rate=args.sample_rate))
    try:
        dm.folder()
    except ReleaseNotFound as missing:
        raise SystemExit(missing_release(args.root, missing)) from None
    return dm


def set_up(dm: SpeechCommandsDataModule) -> None:
    """``dm.setup("fit")``, printing the partial-copy warning (it goes into the report)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("fit")
    for w in caught:
        print(f"warning: {w.message}")


def fit(args, dm, adapter, attack=None, epochs=1):
    module = RobustClassifier(KeywordCNN(dm.num_classes, sample_rate=dm.sample_rate, width=args.width),
                              attack=attack, optimizer="adam", lr=args.lr, weight_decay=1e-4, scheduler="cyclic",
                              adapter=adapter)
    trainer = quiet_trainer(epochs, accelerator="auto", devices=1, enable_progress_bar=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    return module.model.eval()


@torch.no_grad()
def clean_accuracy(model, dm, max_batches=None) -> float:
    hits = n = 0
    for i, (wave, y, _) in enumerate(dm.test_dataloader()):
        if max_batches is not None and i >= max_batches:
            break
        hits += int((model(wave).argmax(1) == y).sum())
        n += len(y)
    return hits / n


def robustness(model, dm, args, adapter):
    """``{"clean": acc, "PGD SNR s dB": robust acc, ...}`` on the test split (its first ``--eval-batches``)."""
    row = {"clean": clean_accuracy(model, dm, args.eval_batches)}
    for snr in args.snrs:
        r = evaluate(model, dm.test_dataloader(), PGD(SNRBall(snr), steps=args.steps, seed=args.seed),
                     adapter=adapter, max_batches=args.eval_batches, progress=False)
        row["clean"] = float(r["clean_accuracy"])  # the same metric as the robust accuracy
        row[f"PGD SNR {snr:g} dB"] = float(r["robust_accuracy"])
    return row


def main(argv=None):
    args = parse_args(argv)
    dm = make_data(args)  # a --root without the release is refused before --out is created
    out = start_run(args)
    start = time.time()
    set_up(dm)
    adapter = WaveformAdapter(sample_rate=dm.sample_rate)
    rows = {"normal": robustness(fit(args, dm, adapter, epochs=args.epochs), dm, args, adapter)}
    if args.adv_epochs:
        attack = PGD(SNRBall(args.train_snr), steps=args.train_steps, seed=args.seed, adapter=adapter)
        model = fit(args, dm, adapter, attack=attack, epochs=args.adv_epochs)
        rows[f"PGD-AT {args.train_snr:g} dB"] = robustness(model, dm, args, adapter)

    subset = "every clip present" if args.subset is None else f"at most {args.subset} clips per split"
    data = {"version": args.version, "task": args.task, "classes": list(dm.classes), "clips": dict(dm.counts),
            "listed but absent": dict(dm.missing), "subset": subset}
    cols = list(rows["normal"])
    lines = [f"# Keyword spotting, Speech Commands {args.version}, task {args.task} ({dm.num_classes} classes; "
             f"{subset}; seed {args.seed}, {time.time() - start:.0f} s)", "",
             f"Clips per split: {dm.counts}; files named by the lists but absent: {dm.missing}.",
             f"KeywordCNN width {args.width}, {args.epochs} epochs"
             + (f"; PGD-{args.train_steps} adversarial training at {args.train_snr:g} dB, {args.adv_epochs} epochs"
                if args.adv_epochs else "") + f". Evaluation: PGD-{args.steps}.", "",
             "| model | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c])
                                                 for c in cols) + " |")
    table = "\n".join(lines) + "\n"
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"data": data, "settings": vars(args), "rows": rows}, indent=1))
    print(table)
    return {"data": data, "rows": rows}


if __name__ == "__main__":
    main()
