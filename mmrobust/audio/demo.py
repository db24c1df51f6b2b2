"""The speech part of ``mmrobust demo``: synthetic spoken digits, M5, normal vs PGD adversarial training
at an SNR budget, robust accuracy as a function of the SNR.

Adversarial training is the :class:`~mmrobust.callbacks.AdversarialTraining` callback (Madry et al. 2018,
https://arxiv.org/abs/1706.06083, Eq. 2.1) with PGD inside an :class:`~mmrobust.threats.SNRBall`,

.. math:: \\min_\\theta \\mathbb E\\big[\\max_{\\|\\delta\\|_2 \\le \\|x\\|_2 10^{-s/20}} \\mathcal L(f_\\theta(x+\\delta), y)\\big],

the same callback the image and graph parts use; padding beyond each clip's length is never perturbed
(:class:`~mmrobust.adapters.WaveformAdapter` reads the lengths).
"""

from __future__ import annotations

import time
from typing import Dict, List

#: SNR budgets (dB) of the robustness curve; larger SNR = smaller perturbation.
SNR_GRID = (50.0, 40.0, 30.0, 20.0)
#: SNR of the summary row: louder than the training budget, where the two models differ most
SUMMARY_SNR = 20.0


def settings(quick: bool) -> Dict:
    """Sizes and epochs; ``quick`` keeps the whole part well under a minute on 2 CPU cores."""
    if quick:
        return {"num_train": 400, "num_test": 100, "epochs": 4, "width": 16, "train_snr": 30.0,
                "train_steps": 3, "eval_steps": 5, "length": 4000}
    return {"num_train": 800, "num_test": 200, "epochs": 6, "width": 16, "train_snr": 30.0,
            "train_steps": 5, "eval_steps": 10, "length": 4000}


def run(report, args) -> List[Dict]:
    """Train M5 normally and with SNR-PGD adversarial training; add a section with the SNR curve."""
    import pytorch_lightning as pl

    from ..adapters import WaveformAdapter
    from ..attacks import PGD
    from ..callbacks import AdversarialTraining
    from ..evaluation import evaluate
    from ..threats import SNRBall
    from ..training import RobustClassifier
    from .data import SyntheticSpeechDataModule
    from .models import M5

    cfg = settings(args.quick)
    # on-device augmentation is off: the comparison isolates adversarial training
    data = SyntheticSpeechDataModule(num_train=cfg["num_train"], num_val=50, num_test=cfg["num_test"],
                                     max_length=cfg["length"], batch_size=32, seed=args.seed, augment=False)
    data.setup("fit")
    adapter = WaveformAdapter(sample_rate=data.sample_rate)
    train_snr = cfg["train_snr"]
    rows, curves = [], {}
    variants = {
        "normal": [],
        f"PGD-AT @ {train_snr:g} dB": [AdversarialTraining(
            PGD(SNRBall(train_snr), steps=cfg["train_steps"], seed=args.seed, adapter=adapter))],
    }
    for name, callbacks in variants.items():
        pl.seed_everything(args.seed, workers=True)
        module = RobustClassifier(M5(data.num_classes, width=cfg["width"]), optimizer="adam", lr=3e-3,
                                  weight_decay=0.0, adapter=adapter)
        trainer = pl.Trainer(max_epochs=cfg["epochs"], callbacks=callbacks, logger=False, enable_checkpointing=False,
                             enable_model_summary=False, enable_progress_bar=False, accelerator="cpu", devices=1,
                             num_sanity_val_steps=0, limit_val_batches=0)
        start = time.perf_counter()
        trainer.fit(module, datamodule=data)
        seconds = time.perf_counter() - start
        model = module.model.eval()
        attacks = {f"snr{snr:g}": PGD(SNRBall(snr), steps=cfg["eval_steps"], seed=args.seed) for snr in SNR_GRID}
        res = evaluate(model, data.test_dataloader(), attacks, adapter=adapter, progress=False)
        accs = [res["per_attack"][f"snr{snr:g}"] for snr in SNR_GRID]
        curves[name] = (list(SNR_GRID), accs)
        rows.append({"modality": "speech (synthetic digits)", "model": f"M5 {name}",
                     "clean acc": res["clean_accuracy"], "robust acc": accs[SNR_GRID.index(SUMMARY_SNR)],
                     "attack": f"PGD-{cfg['eval_steps']}, SNR >= {SUMMARY_SNR:g} dB", "train s": seconds})
    report.section("Speech: spoken digits (synthetic)")
    report.curve("Speech: accuracy vs SNR budget", curves, xlabel="SNR of the perturbation (dB), larger = smaller",
                 ylabel=f"accuracy under PGD-{cfg['eval_steps']}",
                 caption="Robust accuracy of M5 under PGD in an SNR ball; adversarial training at "
                         f"{train_snr:g} dB keeps accuracy at budgets where the normal model drops.")
    report.settings({"audio.data": f"SyntheticSpeechDataModule(num_train={cfg['num_train']}, "
                                   f"num_test={cfg['num_test']}, max_length={cfg['length']}, seed={args.seed}, "
                                   "augment=False), 8 kHz, batch 32",
                     "audio.model": f"M5(width={cfg['width']})", "audio.epochs": cfg["epochs"],
                     "audio.optimizer": "Adam lr 3e-3",
                     "audio.train_attack": f"PGD-{cfg['train_steps']} SNRBall({train_snr:g} dB), random start",
                     "audio.eval_attack": f"PGD-{cfg['eval_steps']} SNRBall(s) for s in {list(SNR_GRID)}, "
                                          f"seed {args.seed}"})
    return rows
