"""Cost of the attack-failure checks (``mmrobust.checks``) inside ``mmrobust.evaluate``.

A SmallCNN (8x8 input, width 0.5) is trained normally on scikit-learn's digits (the first 1,797 - ``--n``
images) and evaluated on the last ``--n`` digits with ``evaluate(..., checks=True)`` (the default) and
``checks=False``, for PGD-20, APGD-CE (100 steps) and ``Ensemble.standard`` (defaults), all at L-inf
``--eps``. The model is wrapped in ``benchmarks.autoattack_passes.PassCounter``: units passed forward (with
and without a gradient) and backward. The checks' cost is reported as extra model passes (forward + backward
units, deterministic) and as a time ratio (median of interleaved rounds; the machine may be shared).

    python benchmarks/checks_cost.py --n 384 --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.autoattack_passes import PassCounter  # noqa: E402
from benchmarks.common import accuracy, markdown_table, quiet_run, train_classifier  # noqa: E402
from mmrobust import evaluate  # noqa: E402
from mmrobust.attacks import APGD, PGD, Ensemble  # noqa: E402
from mmrobust.image import SmallCNN  # noqa: E402
from mmrobust.threats import LinfBall  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=384, help="test digits (the last n of the 1,797)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write the numbers here as JSON")
    args = p.parse_args()
    quiet_run(args.threads)
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    xt, yt = x[-args.n:], y[-args.n:]
    torch.manual_seed(0)
    net = train_classifier(SmallCNN(image_size=8, width=0.5), x[:-args.n], y[:-args.n], epochs=args.epochs,
                           batch_size=64, lr=3e-3)
    model = PassCounter(net).eval()
    loader = DataLoader(TensorDataset(xt, yt), batch_size=args.batch)
    threat = LinfBall(args.eps, lower=0, upper=1)
    attacks = {"PGD-20": lambda: PGD(threat, steps=20, seed=0), "APGD-CE-100": lambda: APGD(threat, seed=0),
               "Ensemble.standard": lambda: Ensemble.standard(threat, progress=False)}

    def run(name, checks):
        model.counts.clear()
        start = time.process_time()
        out = evaluate(model, loader, attacks[name](), progress=False, checks=checks)
        seconds = time.process_time() - start
        counts = dict(model.counts)
        return out["robust_accuracy"], counts, seconds

    rows, results = [], {"settings": vars(args), "clean": accuracy(net, xt, yt), "attacks": {}}
    for name in attacks:
        times = {True: [], False: []}
        for _ in range(args.rounds):  # interleaved: background load hits both alike
            for checks in (False, True):
                acc, counts, seconds = run(name, checks)
                times[checks].append(seconds)
                if checks:
                    acc_on, counts_on = acc, counts
                else:
                    acc_off, counts_off = acc, counts
        passes = {k: sum(c.values()) for k, c in (("off", counts_off), ("on", counts_on))}
        t_off, t_on = (sorted(times[k])[len(times[k]) // 2] for k in (False, True))
        results["attacks"][name] = {"robust_off": acc_off, "robust_on": acc_on, "counts_off": counts_off,
                                    "counts_on": counts_on, "cpu_s_off": times[False], "cpu_s_on": times[True]}
        rows.append([name, acc_off, acc_on, passes["off"], passes["on"],
                     f"+{100 * (passes['on'] / passes['off'] - 1):.1f}%", t_off, t_on,
                     f"+{100 * (t_on / t_off - 1):.1f}%"])
        print(name, results["attacks"][name], flush=True)
    print(f"\nSmallCNN(image_size=8, width=0.5) trained normally ({args.epochs} epochs) on {len(y) - args.n} digits, "
          f"clean {results['clean']:.3f} on the last {args.n}; L-inf eps {args.eps}; batches of {args.batch}; "
          f"{args.threads} thread(s); passes = units forward (with and without gradient) + units backward; "
          f"CPU s: median of {args.rounds} interleaved rounds\n")
    print(markdown_table(["attack", "robust acc, checks off", "robust acc, checks on", "passes off", "passes on",
                          "extra passes", "CPU s off", "CPU s on", "extra time"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
