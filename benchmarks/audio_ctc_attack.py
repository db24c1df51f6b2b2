"""The attack phase of ``benchmarks/audio_ctc.py``: targeted CTC attacks (Carlini & Wagner 2018) on the trained
digit-sequence recogniser, success vs peak-dB budget, plain and with EOT over synthetic room responses.

    nice -n 10 python benchmarks/audio_ctc.py attack [--n 30 --dbs -20 -30 -40 --steps 300
                                                      --eot-dbs -20 --eot-samples 4 --air-draws 16]

For ``--n`` held-out utterances (the first of the test split) a random target of the same number of digits
(never the reference) is drawn with a fixed seed. Per budget ``d`` dB, ``CTCTargetedAttack(PeakDBBall(d))``
runs in batches of utterances of similar length. Every returned waveform is checked here, independently
of the attack's own bookkeeping (float64, this file's code): peak |delta| <= 10^(d/20) * peak |x|,
values in [-1, 1], padding untouched, the user's tensor unchanged. Success is re-decoded here on the valid
frames (``CTCRecogniser.decode``): exactly the target digits.

Over the air: every adversarial waveform (plain and EOT) is convolved with ``--air-draws`` fresh synthetic
room impulse responses (``RandomReverb``: exponentially decaying Gaussian noise, RT60 0.2-0.5 s, direct-to-
reverberant ratio 0-10 dB, 0.25 s long, drawn from a generator seeded differently from the attack's) and
decoded; success over the air is the share of (utterance, response) pairs decoded exactly as the target.
"""

from __future__ import annotations

import json
import math
import time
from argparse import ArgumentParser
from pathlib import Path

import torch

from benchmarks.common import log
from mmrobust.attacks.ctc import CTCTargetedAttack
from mmrobust.audio import RandomReverb
from mmrobust.audio.recogniser import BLANK, CTCRecogniser, DigitCTC
from mmrobust.audio.sequences import collate_sequences
from mmrobust.threats import PeakDBBall

AIR_SEED = 20260  # the responses used to measure success over the air; the attack draws from its own seed


def random_targets(refs, seed: int = 0):
    """One random digit sequence per reference, of its length and different from it."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for r in refs:
        while True:
            t = torch.randint(10, (len(r),), generator=g).tolist()
            if t != list(r):
                out.append(t)
                break
    return out


def check_inside(clean: torch.Tensor, adv: torch.Tensor, lengths: torch.Tensor, db: float) -> None:
    """Independent check of the PeakDBBall(db) budget, the value box and the padding (float64)."""
    x, a = clean.double(), adv.double()
    delta = a - x
    allowed = x.abs().amax(1) * 10 ** (db / 20)
    peak = delta.abs().amax(1)
    tol = 4 * torch.finfo(torch.float32).eps
    over = peak > allowed * (1 + 1e-6) + tol
    assert not bool(over.any()), f"{int(over.sum())} waveforms louder than {db} dB: {peak[over]} > {allowed[over]}"
    assert bool((a.abs() <= 1 + tol).all()), "a waveform leaves [-1, 1]"
    pad = torch.arange(x.shape[1])[None] >= lengths[:, None]
    assert bool((delta[pad] == 0).all()), "the attack changed padding"
    measured = 20 * torch.log10(peak.clamp_min(1e-30)) - 20 * torch.log10(x.abs().amax(1))
    assert bool((measured <= db + 1e-4).all())


def batches(dataset, n: int, size: int):
    """The first ``n`` utterances, sorted by length, in padded batches of ``size``."""
    order = sorted(range(n), key=dataset.length)
    for k in range(0, n, size):
        idx = order[k:k + size]
        yield idx, collate_sequences([dataset[i] for i in idx])


@torch.no_grad()
def over_the_air(module: CTCRecogniser, wave, lengths, targets, draws: int, room: RandomReverb) -> torch.Tensor:
    """Per utterance, the share of ``draws`` fresh room responses under which the target is decoded."""
    g = torch.Generator().manual_seed(AIR_SEED)
    hits = torch.zeros(len(targets))
    for _ in range(draws):
        decoded = module.decode(room(wave, g), lengths)
        hits += torch.tensor([d == t for d, t in zip(decoded, targets)], dtype=torch.float)
    return hits / draws


def run(module, dataset, args, db: float, eot: bool, room: RandomReverb) -> dict:
    kw = dict(steps=args.steps, step_size=args.step_size, blank=BLANK)
    if eot:
        kw.update(transforms=room, samples=args.eot_samples, seed=0)
    attack = CTCTargetedAttack(PeakDBBall(db), **kw)
    refs, tgts, success, own, air, achieved, steps = [], [], [], [], [], [], []
    start = time.time()
    for idx, (wave, targets, lengths, tlen) in batches(dataset, args.n, args.batch):
        refs_b = [targets[i, :int(tlen[i])].tolist() for i in range(len(idx))]
        tgts_b = random_targets(refs_b, seed=min(idx))
        kept = wave.clone()
        # every batch from seed 0, as the stored results were drawn (the attack re-seeded inside each call then)
        res = attack.reseed()(module.model, wave, tgts_b, lengths=lengths)
        assert torch.equal(wave, kept), "the attack changed the caller's waveforms"
        check_inside(wave, res.wave, lengths, db)
        with torch.no_grad():
            decoded = module.decode(res.wave, lengths)
        success += [d == t for d, t in zip(decoded, tgts_b)]
        own += res.success.tolist()
        air += over_the_air(module, res.wave, lengths, tgts_b, args.air_draws, room).tolist()
        achieved += res.extras["wave/db_x"].tolist()
        steps += res.steps_to_success.tolist()
        refs += refs_b
        tgts += tgts_b
    ok = [a for a, s in zip(achieved, success) if s]
    row = {"db": db, "eot": eot, "n": len(success), "success": sum(success) / len(success),
           "attack_reported_success": sum(own) / len(own),
           "air_success": sum(air) / len(air), "air_all_draws": sum(a == 1.0 for a in air) / len(air),
           "mean_db_x_of_successes": sum(ok) / len(ok) if ok else math.nan,
           "median_steps_to_success": float(torch.tensor([s for s in steps if s >= 0] or [math.nan]).median()),
           "wall_s": round(time.time() - start), "attack": attack.describe()}
    log(f"{'EOT' if eot else 'plain'} {db:g} dB: {row}")
    return row


def attack(args, rest):
    from benchmarks.audio_ctc import RESULTS, WEIGHTS, datamodule

    p = ArgumentParser()
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--dbs", type=float, nargs="+", default=[-20.0, -30.0, -40.0])
    p.add_argument("--eot-dbs", type=float, nargs="*", default=[-20.0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--step-size", type=float, default=0.02)
    p.add_argument("--eot-samples", type=int, default=4)
    p.add_argument("--air-draws", type=int, default=16)
    p.add_argument("--weights", default=str(WEIGHTS))
    p.add_argument("--out", default=str(RESULTS))
    extra = p.parse_args(rest)
    for k, v in vars(extra).items():
        setattr(args, k, v)
    model = DigitCTC()
    model.load_state_dict(torch.load(args.weights))
    out = Path(args.out)
    module = CTCRecogniser(model).eval()
    dm = datamodule(args)
    room = RandomReverb(8000, rt60=(0.2, 0.5), drr_db=(0.0, 10.0), rir_seconds=0.25)
    results = json.loads(out.read_text()) if out.exists() else {}
    # the recogniser over the air, without attack: how often it still transcribes the held-out utterances
    hits = []
    for idx, (wave, targets, lengths, tlen) in batches(dm.test_set, args.n, args.batch):
        refs = [targets[i, :int(tlen[i])].tolist() for i in range(len(idx))]
        with torch.no_grad():
            clean = [d == r for d, r in zip(module.decode(wave, lengths), refs)]
        hits.append((sum(clean), over_the_air(module, wave, lengths, refs, args.air_draws, room).sum().item()))
    results["attack_settings"] = {k: v for k, v in vars(args).items()}
    results["clean_subset"] = {"n": args.n, "exact": sum(h[0] for h in hits) / args.n,
                               "air_exact": sum(h[1] for h in hits) / args.n}
    log(f"clean subset: {results['clean_subset']}")
    rows = results.setdefault("attacks", {})
    for eot, dbs in ((False, args.dbs), (True, args.eot_dbs)):
        for db in dbs:
            rows[f"{'eot' if eot else 'plain'}/{db:g}"] = run(module, dm.test_set, args, db, eot, room)
            out.write_text(json.dumps(results, indent=1))
