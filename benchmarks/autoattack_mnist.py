"""The full AutoAttack through mmrobust beside the reference code and torchattacks, on two MNIST models.

Issue 20, section 1: ``Ensemble.standard`` (library defaults: APGD-CE, APGD-T, FAB-T, Square 5000) against

* the reference AutoAttack (Croce & Hein 2020, github ``fra31/auto-attack``, ``version="standard"``): never a
  dependency of mmrobust; the column appears only when ``import autoattack`` works, e.g. with the fetched
  source on the path (``PYTHONPATH=/work/scratch/auto-attack`` or ``--reference-path``), and is skipped
  otherwise;
* torchattacks' ``AutoAttack(version="standard")``;
* each member of ``Ensemble.standard`` run alone with the settings it has inside the ensemble.

Models (trained here, seeded, cached under ``benchmarks/.cache``; :class:`~mmrobust.image.StridedCNN`, the
Wong & Kolter small CNN):

* ``normal``: 2 epochs of clean training (Adam 1e-3, batch 128), attacked at L-inf eps 0.1 (at 0.3 every
  attack reaches 0);
* ``fgsm_rs``: Wong et al. 2020's fast adversarial training recipe (FGSM with a uniform random start, step
  1.25 eps, L-inf eps 0.3, batch 100, Adam with the cyclic learning rate 0 -> 5e-3 -> 0 per step), for
  ``--at-epochs`` epochs (the paper: 10), attacked at eps 0.3.

Every attack sees the same first ``--n`` test images in batches of ``--batch-size`` (the reference's
default 250); ours runs as :func:`mmrobust.evaluate` runs it (``--pool-units``: the Ensemble's survivors
pooled over consecutive batches, the library default; ``0``: each batch alone), every returned point checked
by :mod:`mmrobust.threats.verify` there. Robust accuracy is recomputed here from each method's returned points, which are checked
to lie in the eps ball and in [0, 1]. Wall times: ``--rounds`` interleaved rounds of the three full
ensembles (each round calls each once, in turn), medians and the ratio reference / ours; members alone
run once.

    PYTHONPATH=/work/scratch/auto-attack nice -n 10 python benchmarks/autoattack_mnist.py --n 500 --rounds 3
    python benchmarks/autoattack_mnist.py --models fgsm_rs --no-members     # one model, ensembles only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CACHE, accuracy, markdown_table, mnist_tensors, quiet_run  # noqa: E402
from mmrobust.attacks import Ensemble  # noqa: E402
from mmrobust.attacks.survivors import EnsemblePool  # noqa: E402
from mmrobust.evaluation import POOL_UNITS  # noqa: E402
from mmrobust.image import StridedCNN  # noqa: E402
from mmrobust.threats import LinfBall  # noqa: E402
from mmrobust.threats.verify import run_checked, verify_result  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EPS = {"normal": 0.1, "fgsm_rs": 0.3}


# -- models -------------------------------------------------------------------------------------------
def train_normal(x, y, seed: int, epochs: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    model = StridedCNN()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def train_fgsm_rs(x, y, seed: int, epochs: int, eps: float = 0.3) -> nn.Module:
    """Wong et al. 2020 (https://arxiv.org/abs/2001.03994), ``locuslab/fast_adversarial`` MNIST recipe:
    delta ~ U(-eps, eps), one FGSM step of 1.25 eps, projection onto the ball and [0, 1]."""
    torch.manual_seed(seed)
    model = StridedCNN()
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    gen = torch.Generator().manual_seed(seed)
    batch = 100
    total = epochs * ((len(y) + batch - 1) // batch)
    peak = total * 2 // 5
    step = 0
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch):
            idx = perm[i:i + batch]
            xb, yb = x[idx], y[idx]
            lr = 5e-3 * (step / peak if step < peak else (total - step) / (total - peak))
            for group in opt.param_groups:
                group["lr"] = lr
            delta = (torch.rand(xb.shape, generator=gen) * 2 - 1) * eps
            delta.requires_grad_(True)
            loss = nn.functional.cross_entropy(model((xb + delta).clamp(0, 1)), yb)
            grad, = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + 1.25 * eps * grad.sign()).clamp(-eps, eps)
            x_adv = (xb + delta).clamp(0, 1)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_adv), yb).backward()
            opt.step()
            step += 1
    return model.eval()


def load_model(kind: str, seed: int, at_epochs: int) -> nn.Module:
    path = CACHE / (f"autoattack_{kind}_s{seed}" + (f"_e{at_epochs}" if kind == "fgsm_rs" else "") + ".pt")
    model = StridedCNN()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    x, y = mnist_tensors(True)
    start = time.perf_counter()
    model = train_normal(x, y, seed) if kind == "normal" else train_fgsm_rs(x, y, seed, at_epochs)
    print(f"trained {kind} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


# -- the methods: each returns the adversarial images of (x, y) ---------------------------------------
def ours(attack, bs, pool_units=POOL_UNITS):
    """The attack on batches of ``bs`` as :func:`mmrobust.evaluate` runs it: an Ensemble with its survivors
    pooled over consecutive batches up to ``pool_units`` units (``None``: each batch alone), every result
    checked by ``verify_result``; the other attacks per batch."""
    def run(model, x, y):
        attack.reseed()  # every call draws the seed's random numbers, as the reference re-seeds in each call
        batches = [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(y), bs)]
        if not (pool_units and isinstance(attack, Ensemble)):
            return torch.cat([_adv_of(run_checked(attack, model, b)) for b in batches])
        pool, waiting, adv = EnsemblePool(attack, model), [], []
        for i, b in enumerate(batches):
            pool.add(b)
            waiting.append(b)
            if pool.units >= pool_units or not pool.poolable or i == len(batches) - 1:
                adv += [_adv_of(verify_result(attack, model, w, r)) for w, r in zip(waiting, pool.finish())]
                waiting = []
        return torch.cat(adv)
    return run


def _adv_of(result):
    batch = result.batch
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def reference(eps, seed, bs):
    from autoattack import AutoAttack

    def run(model, x, y):
        aa = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed, device="cpu", verbose=False)
        return aa.run_standard_evaluation(x, y, bs=bs)
    return run


def torchattacks_aa(eps, seed, bs):
    import torchattacks

    def run(model, x, y):
        atk = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=seed)
        return torch.cat([atk(x[i:i + bs], y[i:i + bs]) for i in range(0, len(y), bs)])
    return run


def checked_robust(model, x, y, adv, eps) -> float:
    """Robust accuracy from the returned points, after checking them against the threat model."""
    assert adv.shape == x.shape, (adv.shape, x.shape)
    dist = (adv - x).abs().flatten(1).amax(1)
    if bool((dist > eps + 1e-6).any()) or bool((adv < 0).any() or (adv > 1).any()):
        raise AssertionError(f"points outside the threat model: max L-inf {float(dist.max()):.6f} > eps {eps}")
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        still = model(adv).argmax(1) == y
    return float((clean & still).float().mean())


def reference_available(path) -> bool:
    if path:
        sys.path.insert(0, str(path))
    try:
        import autoattack  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="first N MNIST test images")
    ap.add_argument("--models", nargs="+", default=list(EPS), choices=list(EPS))
    ap.add_argument("--at-epochs", type=int, default=5, help="FGSM-RS training epochs (the paper: 10)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved timing rounds of the full ensembles (0: only the members alone)")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--pool-units", type=int, default=POOL_UNITS,
                    help="evaluate's pool_units for ours (default: the library's; 0: each batch alone)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-members", action="store_true", help="skip the members run alone")
    ap.add_argument("--no-torchattacks", action="store_true")
    ap.add_argument("--reference-path", default=None, help="folder holding the fetched auto-attack source")
    ap.add_argument("--json", default=None, help="output file (default: results/autoattack_mnist_<models>.json)")
    ap.add_argument("--report", nargs="+", default=None, help="only print the tables of these JSON files")
    args = ap.parse_args(argv)
    if args.report:
        for path in args.report:
            report(json.loads(Path(path).read_text()))
        return
    if args.json is None:
        args.json = str(RESULTS / f"autoattack_mnist_{'_'.join(args.models)}.json")
    quiet_run(args.threads)
    have_ref = reference_available(args.reference_path)
    if not have_ref:
        print("reference AutoAttack not importable: its column is skipped", file=sys.stderr)
    x_all, y_all = mnist_tensors(False, args.n)
    out = {"settings": vars(args), "reference": have_ref, "models": {}}
    for kind in args.models:
        eps, bs, seed = EPS[kind], args.batch_size, args.seed
        model = load_model(kind, seed, args.at_epochs)
        for p in model.parameters():
            p.requires_grad_(False)
        threat = LinfBall(eps, lower=0.0, upper=1.0)
        ensemble = Ensemble.standard(threat)  # library defaults
        full = {"mmrobust Ensemble.standard": ours(ensemble, bs, args.pool_units or None)}
        if have_ref:
            full["reference AutoAttack (fra31)"] = reference(eps, seed, bs)
        if not args.no_torchattacks:
            full["torchattacks AutoAttack"] = torchattacks_aa(eps, seed, bs)
        entry = {"eps": eps, "clean": accuracy(model, x_all, y_all), "robust": {}, "seconds": {}, "cpu_seconds": {},
                 "settings": {}}
        entry["settings"]["mmrobust Ensemble.standard"] = ensemble.describe()
        times = {name: [] for name in full}
        cpu = {name: [] for name in full}
        for r in range(args.rounds):
            for name, run in full.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                adv = run(model, x_all, y_all)
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
                acc = checked_robust(model, x_all, y_all, adv, eps)
                entry["robust"].setdefault(name, acc)
                entry.setdefault("all_robust", {}).setdefault(name, []).append(acc)
                if acc != entry["robust"][name]:  # seeded: every round must give the same number
                    entry.setdefault("round_differences", []).append((name, r, acc))
                print(f"{kind} round {r}: {name}: {acc:.4f} ({times[name][-1]:.1f} s, {cpu[name][-1]:.1f} CPU s)",
                      file=sys.stderr, flush=True)
            # medians of the rounds so far, saved after every round: a run stopped early keeps its rounds
            entry["seconds"] = {name: statistics.median(t) for name, t in times.items()}
            entry["all_seconds"] = times
            entry["cpu_seconds"] = {name: statistics.median(t) for name, t in cpu.items()}
            entry["all_cpu_seconds"] = cpu
            entry["rounds_done"] = r + 1
            out["models"][kind] = entry
            _save(out, args.json)
        if not args.no_members:
            for member in ensemble.attacks:
                name = f"mmrobust {member.describe()} alone"
                start, start_cpu = time.perf_counter(), time.process_time()
                adv = ours(member, bs)(model, x_all, y_all)
                entry["seconds"][name] = time.perf_counter() - start
                entry["cpu_seconds"][name] = time.process_time() - start_cpu
                entry["robust"][name] = checked_robust(model, x_all, y_all, adv, eps)
                print(f"{kind}: {name}: {entry['robust'][name]:.4f} ({entry['seconds'][name]:.1f} s, "
                      f"{entry['cpu_seconds'][name]:.1f} CPU s)", file=sys.stderr, flush=True)
                _save(out, args.json)
        out["models"][kind] = entry
        _save(out, args.json)
    report(out)


def _save(out, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=1))


def report(out):
    s = out["settings"]
    for kind, e in out["models"].items():
        rounds = e.get("rounds_done", s["rounds"])
        print(f"\n### {kind} StridedCNN, L-inf eps {e['eps']}, first {s['n']} test images, clean accuracy "
              f"{e['clean']:.4f}; {rounds} interleaved rounds (medians), members alone once\n")
        ours_s = e["seconds"].get("mmrobust Ensemble.standard")
        ours_c = e.get("cpu_seconds", {}).get("mmrobust Ensemble.standard")
        rows = []
        for name, acc in e["robust"].items():
            wall, cpu = e["seconds"][name], e.get("cpu_seconds", {}).get(name)
            rows.append([name, f"{100 * acc:.1f}", f"{wall:.1f}", "-" if ours_s is None else f"{wall / ours_s:.2f}",
                         "-" if cpu is None else f"{cpu:.1f}",
                         "-" if cpu is None or ours_c is None else f"{cpu / ours_c:.2f}"])
        print(markdown_table(["method", "robust accuracy %", "wall s", "wall / ours", "CPU s", "CPU / ours"], rows))


if __name__ == "__main__":
    main()
