"""Lightning DDP on CPU (gloo, 2 processes) equals the single-process run.

AdversarialTraining + Pruning + RobustnessEvaluation are fitted by ``tests/_ddp_worker.py`` with
``strategy="ddp"`` and 2 processes of 16 examples per step, and in this process on 1 device with 32
examples per step drawn from the same permutation. The weights, masks and the logged (torchmetrics-
synchronised) robust accuracy must agree, and the logged value must be the robust accuracy over the
*whole* validation set, not one rank's shard.

A second run checks that FastAdversarialTraining's collapse decision is shared: flagged on one rank only,
both ranks stop at the same step and restore the same healthy weights.
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


def run_two_ranks(out: Path, *extra: str, timeout: int = 400) -> list:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(WORKER.parents[1]))
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, str(WORKER), str(out), "--devices", "2", "--batch-size", "16", *extra],
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process(tmp_path):
    ranks = run_two_ranks(tmp_path / "ddp")
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


@pytest.mark.slow
def test_ddp_fast_at_collapse_on_one_rank_stops_and_restores_all(tmp_path):
    """Probes at steps 0, 2, 4; rank 1's third is rigged to flag. Both ranks stop after step 5 and load
    step 2's weights, so the replicas stay identical."""
    # without the shared decision rank 1 stops alone and rank 0 waits forever in its next all-reduce
    ranks = run_two_ranks(tmp_path / "ddp_fast_at", "--scenario", "fast_at_restore", timeout=200)
    assert [r["global_step"] for r in ranks] == [5, 5]  # 16 steps without the stop
    assert [r["overfitting_detected"] for r in ranks] == [True, True]
    assert [r["healthy_step"] for r in ranks] == [2, 2]
    assert all(torch.equal(ranks[1]["weights"][k], v) for k, v in ranks[0]["weights"].items())


@pytest.mark.slow
def test_ddp_extra_loss_gradient_is_averaged_over_ranks(tmp_path):
    """GeometricRegularization (an ExtraLossCallback) under DDP: its gradient is averaged like the module's,
    so both replicas stay identical and equal one process with the whole batch. Without the averaging each
    rank would step with its own shard's penalty gradient and the replicas would drift apart."""
    ranks = run_two_ranks(tmp_path / "ddp_extra", "--scenario", "extra_loss")
    single = run(None, devices=1, batch_size=32, scenario="extra_loss")
    for k, v in ranks[0]["weights"].items():
        assert torch.equal(ranks[1]["weights"][k], v), k
        assert torch.allclose(single["weights"][k], v, atol=1e-5), k
