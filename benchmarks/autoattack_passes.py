"""Model passes and CPU time per member: mmrobust ``Ensemble.standard`` beside the reference AutoAttack.

Issue 20's speed goal asks where the time goes. The model is wrapped in a counter: each call adds the
batch size to ``forward`` (units seen by a plain forward pass) or, when the input requires a gradient, to
``grad_forward``; a hook on the output adds the batch size to ``backward`` when a gradient flows back.
Each member's ``run`` (ours) or ``perturb`` (reference) is timed with the process's CPU clock; what is
left of a whole call (clean passes, checks, regrouping) is ``other``.

``--never-broken`` first runs our ensemble on the first ``--n`` images and then profiles both codes on the
images it left robust only: there both codes do all their passes (nothing is broken early), so the passes
per unit are the algorithms' own counts.

    PYTHONPATH=/work/scratch/auto-attack python benchmarks/autoattack_passes.py --model fgsm_rs --n 100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.autoattack_mnist import EPS, checked_robust, load_model, ours, reference_available  # noqa: E402
from benchmarks.common import mnist_tensors, quiet_run  # noqa: E402
from mmrobust.attacks import Ensemble  # noqa: E402
from mmrobust.threats import LinfBall  # noqa: E402


class PassCounter(nn.Module):
    """``model`` with counts of the units passed forward (with and without gradients) and backward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.counts = defaultdict(int)

    def forward(self, x):
        out = self.model(x)
        n = x.shape[0]
        if out.requires_grad:
            self.counts["grad_forward"] += n

            def hook(grad, n=n):
                self.counts["backward"] += n
            out.register_hook(hook)
        else:
            self.counts["forward"] += n
        return out


class Meter:
    """CPU seconds and pass counts per named phase (a phase may be entered several times)."""

    def __init__(self, counter: PassCounter):
        self.counter = counter
        self.rows = defaultdict(lambda: defaultdict(float))

    def wrap(self, name, fn, units_of=None):
        def timed(*args, **kwargs):
            before = dict(self.counter.counts)
            start = time.process_time()
            out = fn(*args, **kwargs)
            row = self.rows[name]
            row["cpu_s"] += time.process_time() - start
            for k, v in self.counter.counts.items():
                row[k] += v - before.get(k, 0)
            if units_of is not None:
                row["units_in"] += units_of(*args)
            return out
        return timed


def profile_ours(model, x, y, eps, bs, seed):
    counter = PassCounter(model)
    meter = Meter(counter)
    ensemble = Ensemble.standard(LinfBall(eps, lower=0.0, upper=1.0), seed=seed, progress=False)
    for member in ensemble.attacks:
        member.run = meter.wrap(member.name, member.run, lambda victim, *a: victim.num_units)
    start, before = time.process_time(), dict(counter.counts)
    adv = ours(ensemble, bs)(counter, x, y)  # as mmrobust.evaluate runs it: survivors pooled over batches
    return finish(meter, counter, start, before), adv


def profile_reference(model, x, y, eps, bs, seed):
    from autoattack import AutoAttack
    counter = PassCounter(model)
    meter = Meter(counter)
    aa = AutoAttack(counter, norm="Linf", eps=eps, version="standard", seed=seed, device="cpu", verbose=False)
    for name, obj in [("apgd", aa.apgd), ("apgd-t", aa.apgd_targeted), ("fab-t", aa.fab), ("square", aa.square)]:
        obj.perturb = meter.wrap(name, obj.perturb, lambda xs, *a: xs.shape[0])
    start, before = time.process_time(), dict(counter.counts)
    adv = aa.run_standard_evaluation(x, y, bs=bs)
    return finish(meter, counter, start, before), adv


def finish(meter, counter, start, before):
    rows = {k: dict(v) for k, v in meter.rows.items()}
    total = {"cpu_s": time.process_time() - start}
    total.update({k: v - before.get(k, 0) for k, v in counter.counts.items()})
    rows["other"] = {k: total.get(k, 0) - sum(r.get(k, 0) for r in meter.rows.values())
                     for k in ("cpu_s", "forward", "grad_forward", "backward")}
    rows["total"] = total
    return rows


def table(name, rows):
    print(f"\n{name}")
    print(f"{'phase':10s} {'units in':>9s} {'CPU s':>8s} {'forward':>10s} {'grad fwd':>10s} {'backward':>10s}"
          f" {'fwd/unit':>9s} {'grad/unit':>9s}")
    for phase, r in rows.items():
        u = r.get("units_in", 0)
        per = (lambda k: f"{r.get(k, 0) / u:9.1f}") if u else (lambda k: f"{'':9s}")
        print(f"{phase:10s} {int(u):9d} {r.get('cpu_s', 0):8.2f} {int(r.get('forward', 0)):10d} "
              f"{int(r.get('grad_forward', 0)):10d} {int(r.get('backward', 0)):10d} {per('forward')} "
              f"{per('grad_forward')}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fgsm_rs", choices=list(EPS))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--at-epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--never-broken", action="store_true", help="profile on the images our ensemble leaves robust")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--reference-path", default="/work/scratch/auto-attack")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    quiet_run(1)
    eps = EPS[args.model]
    model = load_model(args.model, args.seed, args.at_epochs)
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = mnist_tensors(False, args.n)
    out = {"settings": vars(args)}
    if args.never_broken:
        ens = Ensemble.standard(LinfBall(eps, lower=0.0, upper=1.0), seed=args.seed, progress=False)
        adv = torch.cat([ens(model, (x[i:i + args.batch_size], y[i:i + args.batch_size])).batch[0]
                         for i in range(0, len(y), args.batch_size)])
        with torch.no_grad():
            keep = (model(adv).argmax(1) == y) & (model(x).argmax(1) == y)
        x, y = x[keep], y[keep]
        print(f"{len(y)} never-broken images", file=sys.stderr)
    rows, adv = profile_ours(model, x, y, eps, args.batch_size, args.seed)
    out["ours"] = rows
    out["ours_robust"] = checked_robust(model, x, y, adv, eps)
    table(f"mmrobust Ensemble.standard: robust {out['ours_robust']:.4f}", rows)
    if not args.no_reference and reference_available(args.reference_path):
        rows, adv = profile_reference(model, x, y, eps, args.batch_size, args.seed)
        out["reference"] = rows
        out["reference_robust"] = checked_robust(model, x, y, adv, eps)
        table(f"reference AutoAttack: robust {out['reference_robust']:.4f}", rows)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
