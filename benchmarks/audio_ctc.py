"""A CTC recogniser of spoken digit sequences (FSDD clips concatenated, speakers held out) and targeted
attacks on it (Carlini & Wagner 2018), plain and with EOT over synthetic room impulse responses.

    nice -n 10 python benchmarks/audio_ctc.py train  [--epochs 10 --threads 1]
    nice -n 10 python benchmarks/audio_ctc.py attack [--n 40 --dbs -20 -30 -40 --steps 300]

``train`` fits :class:`~mmrobust.audio.recogniser.DigitCTC` with :class:`~mmrobust.audio.recogniser.CTCRecogniser`
(Lightning, CPU) on :class:`~mmrobust.audio.sequences.FSDDSequenceDataModule` (test speakers held out),
saves the weights to ``benchmarks/.cache/digit_ctc.pt`` and writes CER/WER on the held-out speakers to
``benchmarks/results/audio_ctc.json``. ``attack`` loads them (see ``benchmarks/audio_ctc_attack.py``).
Needs ../shared/data/fsdd (MMROBUST_SHARED_DATA or --root).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CACHE, SHARED_DATA, log  # noqa: E402
from mmrobust.audio import SpeechAugmentation  # noqa: E402
from mmrobust.audio.recogniser import CTCRecogniser, DigitCTC, error_rates  # noqa: E402
from mmrobust.audio.sequences import FSDDSequenceDataModule, target_lists  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "audio_ctc.json"
WEIGHTS = CACHE / "digit_ctc.pt"


def datamodule(args, augment=None) -> FSDDSequenceDataModule:
    dm = FSDDSequenceDataModule(args.root, test_speakers=tuple(args.test_speakers), num_train=args.num_train,
                                num_test=args.num_test, batch_size=32, augment=augment, seed=0)
    dm.setup()
    return dm


@torch.no_grad()
def evaluate(model: DigitCTC, dm: FSDDSequenceDataModule, loader) -> dict:
    """CER / WER / sequence error rate overall and per held-out speaker."""
    module = CTCRecogniser(model).eval()
    decoded, refs = [], []
    for wave, targets, lengths, target_lengths in loader:
        decoded += module.decode(wave, lengths)
        refs += target_lists(targets, target_lengths)
    ds = loader.dataset
    out = {"all": error_rates(decoded, refs)}
    for spk in sorted({ds.speaker(i) for i in range(len(ds))}):
        idx = [i for i in range(len(ds)) if ds.speaker(i) == spk]
        out[spk] = error_rates([decoded[i] for i in idx], [refs[i] for i in idx])
        out[spk]["utterances"] = len(idx)
    return out


class EpochLog(pl.Callback):
    """One log line per validation epoch."""

    def on_validation_epoch_end(self, trainer, module):
        m = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
        log(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {m}")


def train(args):
    pl.seed_everything(0, workers=True)
    dm = datamodule(args, augment=SpeechAugmentation(speed=(0.9, 1.1), reverb_probability=0.3))
    log(f"train on {[s for s in dm.speakers if s not in args.test_speakers]}, test on {args.test_speakers}: "
        f"{len(dm.train_set)} / {len(dm.val_set)} / {len(dm.test_set)} utterances")
    module = CTCRecogniser(DigitCTC(), lr=args.lr)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[EpochLog()], num_sanity_val_steps=0)
    start = time.time()
    trainer.fit(module, dm)
    train_s = time.time() - start
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.model.state_dict(), WEIGHTS)
    lightning_test = {k: float(v) for k, v in trainer.test(module, dm, verbose=False)[0].items()}
    rates = evaluate(module.model.eval(), dm, dm.test_dataloader())
    log(f"test (held out {args.test_speakers}): {rates}")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["recogniser"] = {"settings": {k: v for k, v in vars(args).items() if k != "func"},
                             "train_s": round(train_s), "lightning_test": lightning_test, "test": rates}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))


def main():
    p = argparse.ArgumentParser(allow_abbrev=False)
    p.add_argument("phase", choices=["train", "attack"])
    p.add_argument("--root", default=str(SHARED_DATA / "fsdd"))
    p.add_argument("--test-speakers", nargs="+", default=["george", "theo"])
    p.add_argument("--num-train", type=int, default=4000)
    p.add_argument("--num-test", type=int, default=400)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=1)
    args, rest = p.parse_known_args()
    torch.set_num_threads(args.threads)
    if args.phase == "train":
        train(args)
    else:
        from benchmarks.audio_ctc_attack import attack

        attack(args, rest)


if __name__ == "__main__":
    main()
