"""Three modalities, one set of callbacks: images, speech and graphs trained and evaluated the same way.

For each modality a reference model is trained twice on a plain Lightning ``Trainer``:

* ``normal``: cross-entropy only;
* ``AT + pruning``: the :class:`~mmrobust.callbacks.AdversarialTraining` callback (Madry et al. 2018,
  Eq. 2.1; PGD for images and speech, PRBCD edge flips for graphs) together with the
  :class:`~mmrobust.callbacks.Pruning` callback (gradual magnitude pruning to ``--sparsity``, Zhu & Gupta
  2017, Eq. 1) -- robust pruning in the sense of Sehwag et al. 2020.

Both are tested with the :class:`~mmrobust.callbacks.RobustnessEvaluation` callback, which logs
``test/clean_acc`` and ``test/robust_acc``; one table compares all six models.

    python recipes/three_modalities/run.py                 # offline: sklearn digits, synthetic speech, KarateClub
    python recipes/three_modalities/run.py --quick         # smoke test (about a minute)

Writes report.md / report.html / results.json to --out.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the checkout: recipes._common (and mmrobust)

import pytorch_lightning as pl

from mmrobust.adapters import GraphAdapter, WaveformAdapter
from mmrobust.attacks import PGD, PRBCD
from mmrobust.audio import M5, SyntheticSpeechDataModule
from mmrobust.callbacks import AdversarialTraining, Pruning, RobustnessEvaluation
from mmrobust.compression.pruning import weight_sparsity
from mmrobust.graph import GCN, KarateClubDataModule, NodeClassifier
from mmrobust.image import DigitsDataModule, SmallCNN
from mmrobust.reporting import Report
from mmrobust.threats import EdgeFlips, LinfBall, SNRBall
from mmrobust.training import RobustClassifier
from recipes._common import (add_run_options, parse_with_quick_presets, quiet_trainer, recipe_parser, use_threads,
                             write_report)


@dataclass
class Task:
    """One modality: how to build its datamodule, module and attacks, and how long to train."""

    modality: str
    model_name: str
    data: Callable[[], pl.LightningDataModule]
    module: Callable[[], pl.LightningModule]
    train_attack: Callable[[], object]
    eval_attack: Callable[[], object]
    attack_text: str
    epochs: int
    steps_per_epoch: int
    at_kwargs: Dict = field(default_factory=dict)


def tasks(args) -> List[Task]:
    q = args.quick
    seed = args.seed
    wave = WaveformAdapter(sample_rate=8000)
    n_speech = 300 if q else 800
    return [
        Task("image", "SmallCNN on sklearn digits",
             lambda: DigitsDataModule(batch_size=64, seed=seed, limit_test=120 if q else None),
             lambda: RobustClassifier(SmallCNN(image_size=8, width=0.5, hidden=128), optimizer="adam", lr=3e-3,
                                      weight_decay=0.0),
             lambda: PGD(LinfBall(0.1, lower=0, upper=1), steps=5, seed=seed),
             lambda: PGD(LinfBall(0.1, lower=0, upper=1), steps=10 if q else 20, seed=seed),
             f"PGD-{10 if q else 20}, L-inf 0.1", epochs=4 if q else 12, steps_per_epoch=20),
        Task("speech", "M5 on synthetic spoken digits",
             # augmentation off: the comparison isolates adversarial training
             lambda: SyntheticSpeechDataModule(num_train=n_speech, num_val=50, num_test=100 if q else 200,
                                               max_length=4000, batch_size=32, seed=seed, augment=False),
             lambda: RobustClassifier(M5(10, width=16), optimizer="adam", lr=3e-3, weight_decay=0.0, adapter=wave),
             lambda: PGD(SNRBall(30.0), steps=3, seed=seed, adapter=wave),
             # tested louder (20 dB) than trained (30 dB): at 30 dB both models are near 100% on this task
             lambda: PGD(SNRBall(20.0), steps=5 if q else 10, seed=seed, adapter=wave),
             f"PGD-{5 if q else 10}, SNR >= 20 dB", epochs=4 if q else 6, steps_per_epoch=-(-n_speech // 32)),
        Task("graph", "GCN on KarateClub",
             KarateClubDataModule,
             lambda: NodeClassifier(GCN(34, 4, hidden=16, dropout=0.5), lr=0.01),
             lambda: PRBCD(EdgeFlips(0.1), block_size=300, epochs=10 if q else 20, epochs_resampling=8 if q else 16,
                           loss="prob_margin", adapter=GraphAdapter(mask="train"), seed=seed),
             lambda: PRBCD(EdgeFlips(0.1), block_size=300, epochs=30 if q else 100, epochs_resampling=24 if q else 80,
                           loss="prob_margin", adapter=GraphAdapter(mask="test"), seed=seed),
             f"PRBCD-{30 if q else 100}, 10% of edges", epochs=80 if q else 150, steps_per_epoch=1,
             at_kwargs={"start_epoch": 40 if q else 50}),
    ]


def run_task(task: Task, variant: str, args) -> Dict:
    pl.seed_everything(args.seed, workers=True)
    data, module = task.data(), task.module()
    total = task.epochs * task.steps_per_epoch
    callbacks: List[pl.Callback] = []
    if variant != "normal":
        callbacks += [AdversarialTraining(task.train_attack(), **task.at_kwargs),
                      Pruning(args.sparsity, begin_step=int(0.2 * total), end_step=int(0.7 * total),
                              frequency=max(1, total // 20))]
    callbacks.append(RobustnessEvaluation(task.eval_attack(), stages=("test",)))
    trainer = quiet_trainer(task.epochs, callbacks, enable_progress_bar=False, accelerator="auto", devices=1,
                            limit_val_batches=0, num_sanity_val_steps=0, inference_mode=False, deterministic=True)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - start
    metrics = trainer.test(module, datamodule=data, verbose=False)[0]
    return {"modality": task.modality, "model": task.model_name, "training": variant,
            "clean acc": metrics["test/clean_acc"], "robust acc": metrics["test/robust_acc"],
            "attack": task.attack_text, "sparsity": weight_sparsity(module.model), "train s": seconds}


def parse_args(argv=None):
    p = recipe_parser(__doc__)
    p.add_argument("--modalities", nargs="+", choices=["image", "speech", "graph"], default=["image", "speech", "graph"])
    p.add_argument("--sparsity", type=float, default=0.5, help="final weight sparsity of the pruned models")
    add_run_options(p, out="runs/three_modalities", quick_help="fewer epochs and examples (smoke test)")
    args = parse_with_quick_presets(p, argv)  # refuses --threads < 1, naming the flag
    if not 0 <= args.sparsity <= 1:  # Pruning would refuse it only after the first modality's normal model
        p.error(f"--sparsity must lie in [0, 1], got {args.sparsity}")
    return args


def main(argv=None):
    args = parse_args(argv)
    use_threads(args)
    start = time.perf_counter()
    rows = []
    for task in tasks(args):
        if task.modality in args.modalities:
            for variant in ("normal", f"AT + pruning {args.sparsity:.0%}"):
                rows.append(run_task(task, variant, args))
    report = Report("Three modalities under the same callbacks", args.out)
    report.section("AdversarialTraining + Pruning + RobustnessEvaluation")
    report.text("Each modality: a reference model trained normally and with the AdversarialTraining and Pruning "
                "callbacks; the RobustnessEvaluation callback measures clean and robust accuracy on the test split.")
    table = report.table("Clean and robust test accuracy", rows,
                 columns=["modality", "model", "training", "clean acc", "robust acc", "attack", "sparsity", "train s"])
    report.settings({"seed": args.seed, "quick": args.quick, "sparsity": args.sparsity,
                     "pruning": "global magnitude, cubic schedule from 20% to 70% of the training steps",
                     "image": "DigitsDataModule; AT: PGD-5 L-inf 0.1; Adam 3e-3",
                     "speech": "SyntheticSpeechDataModule(max_length=4000, augment=False); AT: PGD-3 SNR 30 dB; Adam 3e-3",
                     "graph": "KarateClub; AT: PRBCD 10% on train nodes after clean epochs; Adam 0.01",
                     "total seconds": round(time.perf_counter() - start, 1)})
    write_report(report, table)
    return rows


if __name__ == "__main__":
    main()
