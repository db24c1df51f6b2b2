"""Lightning DDP on CPU (gloo, 2 processes) equals the single-process run.

AdversarialTraining + Pruning + RobustnessEvaluation are fitted by ``tests/_ddp_worker.py`` with
``strategy="ddp"`` and 2 processes of 16 examples per step, and in this process on 1 device with 32
examples per step drawn from the same permutation. The weights, masks and the logged (torchmetrics-
synchronised) robust accuracy must agree, and the logged value must be the robust accuracy over the
*whole* validation set, not one rank's shard.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _ddp_worker import EPS, digits_data, run  # noqa: E402
from _reliability_common import DigitsModule  # noqa: E402
from mmrobust.attacks import PGD  # noqa: E402
from mmrobust.threats import LinfBall  # noqa: E402

WORKER = Path(__file__).resolve().parent / "_ddp_worker.py"


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(WORKER.parents[1]))
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "ddp"), "--devices", "2", "--batch-size", "16"],
                          env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["val_batches_per_rank"] == 2  # each rank validated half of the 64 examples

    single = run(None, devices=1, batch_size=32)
    assert single["global_step"] == ranks[0]["global_step"] == 16

    for r in ranks:  # DDP keeps the replicas identical, masks included
        assert all(torch.equal(r["weights"][k], ranks[0]["weights"][k]) for k in r["weights"])
    for k, v in single["weights"].items():  # all-reduce order only: float rounding
        assert torch.allclose(v, ranks[0]["weights"][k], atol=1e-5), k
    assert ranks[0]["sparsity"] == pytest.approx(0.5, abs=0.01) and single["sparsity"] == ranks[0]["sparsity"]

    for key in ("val/clean_acc", "val/robust_acc", "val/robust_acc/pgd"):
        assert ranks[0]["metrics"][key] == ranks[1]["metrics"][key] == single["metrics"][key], key

    # the synchronised value is the robust accuracy over the whole validation set
    module = DigitsModule()
    from mmrobust.compression import add_masks, prunable_modules

    add_masks(prunable_modules(module))
    module.load_state_dict(ranks[0]["weights"])
    _, (xv, yv) = digits_data(256, 64)
    result = PGD(LinfBall(EPS, lower=0, upper=1), steps=3, random_start=False)(module, (xv, yv))
    assert result.robust.float().mean().item() == pytest.approx(ranks[0]["metrics"]["val/robust_acc"], abs=1e-6)
    assert result.clean_correct.float().mean().item() == pytest.approx(ranks[0]["metrics"]["val/clean_acc"], abs=1e-6)
    assert ranks[0]["metrics"]["val/clean_acc"] > 0.3  # it learned something, so the comparison is not vacuous
