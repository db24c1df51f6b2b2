"""Psychoacoustic vs SNR-bounded attacks on a speaker-independent FSDD model (Qin et al. 2019 masking threshold).

For a KeywordCNN trained with one speaker held out (``benchmarks/audio_fsdd_speakers.py --save-dir``), on
that speaker's clips:

* PGD in ``SNRBall(s)`` for several ``s`` (the usual audio budget),
* Qin et al.'s second stage (``MaskingPenaltyAttack``: Adam on the loss minus an adaptive weight times the
  masking-threshold penalty) started from PGD's result in ``SNRBall(--outer)``,
* PGD in ``PsychoacousticBall(0)`` (the threshold as a hard constraint),

each with its success rate (misclassified among clips the model gets right), SNR achieved, peak dB, and
frames whose perturbation exceeds the clean clip's masking threshold (of the frames where clip or
perturbation is non-silent), all measured with ``masking_report`` on the returned perturbation.
The SNR row closest in success to the penalty attack is the "equal success" comparison.

    nice python benchmarks/audio_psychoacoustic.py --model MODELS/george_normal.pt --speaker george [--n 100]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import SHARED_DATA, log  # noqa: E402
from mmrobust.adapters import WaveformAdapter  # noqa: E402
from mmrobust.attacks import PGD, MaskingPenalty, MaskingPenaltyAttack  # noqa: E402
from mmrobust.audio import FSDDDataModule, KeywordCNN  # noqa: E402
from mmrobust.threats import PsychoacousticBall, SNRBall, masking_report, masking_threshold  # noqa: E402

SR = 8000


def measure(name, res, x, lengths, thr):
    adv = res.inputs["audio"]
    delta = adv - x
    rep = masking_report(delta, x, SR, threshold=thr)
    ok = res.clean_correct
    succ = res.success & ok
    row = {"attack": name, "success": float(succ.sum() / ok.sum()), "n": int(ok.sum())}
    sel = succ if bool(succ.any()) else ok
    row["snr_db"] = float(res.extras["audio/snr_db"][sel].median())
    row["db_x"] = float(res.extras["audio/db_x"][sel].median())
    row["frames_above"] = float((rep["frames_above"][sel].double() / rep["frames"][sel].double()).mean())
    row["excess_db"] = float(rep["excess_db"][sel].median())
    pad = torch.arange(x.shape[-1])[None] >= lengths[:, None]
    assert float(delta[pad].abs().max()) == 0.0, "padding touched"
    return row


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--root", default=str(SHARED_DATA / "fsdd"))
    p.add_argument("--model", required=True)
    p.add_argument("--speaker", required=True)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--snrs", type=float, nargs="+", default=[50, 45, 40, 35, 30])
    p.add_argument("--outer", type=float, default=30.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--penalty-steps", type=int, default=200)
    p.add_argument("--alpha", type=float, default=1e-4, help="initial weight of the masking penalty")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "audio_psychoacoustic.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    model = KeywordCNN(10)
    model.load_state_dict(torch.load(args.model, weights_only=True))
    model.eval()
    dm = FSDDDataModule(root=args.root, split="speaker", test_speakers=(args.speaker,), val_fraction=0.0)
    dm.setup()
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(dm.test_set), generator=g)[:args.n]
    x, y, lengths = dm.test_set.waves[idx], dm.test_set.labels[idx], dm.test_set.lengths[idx]
    adapter = WaveformAdapter(sample_rate=SR)
    thr = masking_threshold(x, SR)
    rows = []
    for s in args.snrs:
        res = PGD(SNRBall(s), steps=args.steps, seed=0, adapter=adapter)(model, (x, y, lengths))
        rows.append(measure(f"PGD-{args.steps} SNRBall({s:g})", res, x, lengths, thr))
        log(rows[-1])
    first = PGD(SNRBall(args.outer), steps=args.steps, seed=0, adapter=adapter)
    masking = MaskingPenalty(SR, alpha=args.alpha, up_every=10, down_every=10)
    attack = MaskingPenaltyAttack(SNRBall(args.outer), masking, steps=args.penalty_steps, step_size=0.05,
                                  start=first, adapter=adapter)
    res = attack(model, (x, y, lengths))
    rows.append(measure(f"masking penalty ({args.penalty_steps} steps) in SNRBall({args.outer:g}), from PGD", res,
                        x, lengths, thr))
    log(rows[-1])
    res = PGD(PsychoacousticBall(0.0, sample_rate=SR), steps=args.steps, seed=0, adapter=adapter)(model, (x, y, lengths))
    assert bool((res.extras["audio/frames_above"] == 0).all())
    rows.append(measure(f"PGD-{args.steps} PsychoacousticBall(0)", res, x, lengths, thr))
    log(rows[-1])
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1))
    print("\n| attack | success | median SNR (dB) | median peak dB_x | frames above threshold | median max excess (dB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['attack']} | {r['success']:.3f} | {r['snr_db']:.1f} | {r['db_x']:.1f} | "
              f"{r['frames_above']:.3f} | {r['excess_db']:.1f} |")


if __name__ == "__main__":
    main()
