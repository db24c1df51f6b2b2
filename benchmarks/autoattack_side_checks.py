"""Two side checks of the AutoAttack comparison (issue 20; results in ``results/autoattack_mnist.md``).

``batch``: ``Ensemble.standard`` on the normal model (eps 0.1), first 500 test images, called once on all 500,
then in batches of 250, then once on all 500 again, CPU seconds of each call. The reference AutoAttack gathers
the images still robust in all batches before each member; ours, called per batch, runs each member on that
batch's survivors, so small surviving sets cost more per-call overhead.

``checks``: on the FGSM-RS model (eps 0.3), first ``--n`` test images: ``Ensemble.standard`` in batches of 100
and of 50 (robust accuracy, per-member counts ``robust_after``, same points?), then ``mmrobust.evaluate`` with
the ensemble and its default attack-failure checks (does ``black_box_beats_white_box`` fire?).

    nice -n 10 python benchmarks/autoattack_side_checks.py batch
    nice -n 10 python benchmarks/autoattack_side_checks.py checks --n 100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.autoattack_mnist import RESULTS, checked_robust, load_model, ours  # noqa: E402
from benchmarks.common import mnist_tensors, quiet_run  # noqa: E402
from mmrobust import evaluate  # noqa: E402
from mmrobust.attacks import Ensemble  # noqa: E402
from mmrobust.threats import LinfBall  # noqa: E402


def _model(kind):
    model = load_model(kind, 0, 5)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def batch_check():
    x, y = mnist_tensors(False, 500)
    model = _model("normal")
    ens = Ensemble.standard(LinfBall(0.1, lower=0.0, upper=1.0), progress=False)
    out = []
    for bs in (500, 250, 500):
        start = time.process_time()
        adv = ours(ens, bs, None)(model, x, y)  # each batch alone (no pooling); reseeds before the call
        out.append({"bs": bs, "cpu_s": time.process_time() - start, "robust": checked_robust(model, x, y, adv, 0.1)})
        print(out[-1], file=sys.stderr, flush=True)
    return out


def failure_checks(n):
    x, y = mnist_tensors(False, n)
    model = _model("fgsm_rs")
    threat = LinfBall(0.3, lower=0.0, upper=1.0)
    ens = Ensemble.standard(threat, progress=False)
    out, first = {"n": n, "batch_size": {}}, None
    for bs in (100, 50):
        ens.reseed()
        start = time.process_time()
        results = [ens(model, (x[i:i + bs], y[i:i + bs])) for i in range(0, n, bs)]
        adv = torch.cat([r.batch[0] for r in results])
        out["batch_size"][str(bs)] = {
            "robust": checked_robust(model, x, y, adv, 0.3), "cpu_s": time.process_time() - start,
            "robust_after": [r.extras["robust_after"] for r in results],
            "points_equal_to_bs100": None if first is None else bool(torch.equal(adv, first))}
        first = adv if first is None else first
        print(bs, out["batch_size"][str(bs)], file=sys.stderr, flush=True)
    start = time.process_time()
    res = evaluate(model, [(x[i:i + 100], y[i:i + 100]) for i in range(0, n, 100)],
                   {"standard": Ensemble.standard(threat, progress=False)}, progress=False)
    out["evaluate"] = {key: res[key] for key in ("robust_accuracy", "clean_accuracy", "check_flags", "checks")}
    out["evaluate"]["cpu_s"] = time.process_time() - start
    print(json.dumps(out["evaluate"], indent=1, default=str), file=sys.stderr, flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=["batch", "checks"])
    ap.add_argument("--n", type=int, default=100, help="images for 'checks'")
    args = ap.parse_args(argv)
    quiet_run(1)
    if args.which == "batch":
        out, name = batch_check(), "autoattack_mnist_normal_n500_one_batch.json"
    else:
        out, name = failure_checks(args.n), f"autoattack_checks_fgsm_rs_n{args.n}.json"
    (RESULTS / name).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
