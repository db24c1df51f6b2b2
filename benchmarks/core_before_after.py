"""Core before/after check (issue 18): our attacks only, one process per source tree and round.

Run from a tree (PYTHONPATH=<tree>): ``python benchmarks/core_before_after.py strength|speed|train``; a driver alternates
the trees (before, after, before, ...) and takes medians. Settings are those of attack_strength.py and
attack_speed.py, reduced to fit a loaded CPU; results in benchmarks/results/core_before_after.md."""
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)

from benchmarks.attack_strength import robust_accuracy  # noqa: E402
from benchmarks.common import mnist_cnn, mnist_tensors  # noqa: E402
from mmrobust.attacks import APGD, APGDT, FABT, PGD, Square  # noqa: E402
from mmrobust.threats import LinfBall  # noqa: E402

EPOCHS, LIMIT = 1, 10000
mode = sys.argv[1]
model = mnist_cnn(epochs=EPOCHS, train_limit=LIMIT)
if mode == "train":
    sys.exit(0)
eps = 0.1
threat = LinfBall(eps, lower=0, upper=1)
if mode == "speed":
    x, y = mnist_tensors(False, 64)
    runs = {
        "PGD-10 (AttackResult)": lambda: PGD(threat, steps=10, step_size=0.25, seed=0)(model, (x, y)),
        "PGD-10 (early_stop)": lambda: PGD(threat, steps=10, step_size=0.25, seed=0, early_stop=True)(model, (x, y)),
        "PGD-10 (generate)": lambda: PGD(threat, steps=10, step_size=0.25, seed=0).generate(model, (x, y)),
        "APGD-CE 10 steps": lambda: APGD(threat, steps=10, seed=0)(model, (x, y)),
        "APGD-T 10 steps, 3 targets": lambda: APGDT(threat, steps=10, n_target_classes=3, seed=0)(model, (x, y)),
        "FAB-T 10 steps, 3 targets": lambda: FABT(threat, steps=10, n_target_classes=3, seed=0)(model, (x, y)),
        "Square 50 queries": lambda: Square(threat, n_queries=50, seed=0)(model, (x, y)),
    }
    runs["PGD-10 (AttackResult)"]()  # warm-up
    out = {}
    for name, fn in runs.items():
        t = time.perf_counter(); fn(); out[name] = time.perf_counter() - t
    print(json.dumps(out))
else:
    n, k, t, q = 200, 10, 3, 100
    x, y = mnist_tensors(False, n)
    attacks = {  # attack_strength.py's settings (fewer APGD steps and Square queries), same seeds
        "PGD (10 steps, alpha eps/4)": PGD(threat, steps=10, step_size=0.25, seed=0),
        f"APGD-CE ({k} steps, early_stop)": APGD(threat, steps=k, seed=0, early_stop=True),
        f"APGD-T ({k} steps, {t} targets, early_stop)": APGDT(threat, steps=k, n_target_classes=t, seed=0, early_stop=True),
        f"FAB-T ({k} steps, {t} targets, cap)": FABT(threat, steps=k, n_target_classes=t, seed=0, cap=True),
        f"Square ({q} queries)": Square(threat, n_queries=q, seed=0),
    }
    only = sys.argv[2] if len(sys.argv) > 2 else ""
    print(json.dumps({name: robust_accuracy(a, model, x, y, 100) for name, a in attacks.items() if only in name}))
