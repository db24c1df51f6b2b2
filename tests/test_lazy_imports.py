"""Image-only use never imports torch_geometric (issue 19): PyG prints a torch.jit FutureWarning and costs
start-up time, and an image user has no graph anywhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys, warnings
warnings.simplefilter("always")
import torch
from torch import nn
import mmrobust
from mmrobust import PGD, LinfBall, evaluate
from mmrobust.adapters import infer_adapter
from mmrobust.callbacks import AdversarialTraining, RobustnessEvaluation
from mmrobust.image import DigitsDataModule, SmallCNN, normalized_threat
model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
x, y = torch.rand(6, 1, 4, 4), torch.randint(0, 3, (6,))
infer_adapter((x, y)); infer_adapter({"image": x, "y": y})
PGD(LinfBall(0.1, lower=0, upper=1), steps=2, seed=0)(model, (x, y))
evaluate(model, [(x, y)], PGD(LinfBall(0.1, lower=0, upper=1), steps=2, seed=0), progress=False)
print("PYG_LOADED", "torch_geometric" in sys.modules)
"""


def test_image_workflow_does_not_import_torch_geometric():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "PYG_LOADED False" in proc.stdout
    assert "torch.jit.script" not in proc.stderr


HELP_SCRIPT = """
import sys
from mmrobust.cli import main
for argv in (["--help"], ["report", "--help"], ["demo", "--help"]):
    try:
        main(argv)
    except SystemExit:
        pass
import mmrobust
heavy = sorted(m for m in ("torch", "pytorch_lightning", "torchmetrics", "torchaudio", "torchvision",
                           "torch_geometric") if m in sys.modules)
print("HEAVY", heavy)
from mmrobust import *
print("ALL", all(name in globals() for name in mmrobust.__all__), mmrobust.evaluate is mmrobust.evaluation.evaluate)
print("OTHER", mmrobust.graph.__name__, hasattr(mmrobust, "no_such_name"), hasattr(mmrobust, "__pycache__"))
"""


def test_help_and_import_start_without_torch_and_lightning():
    """``mmrobust --help`` once took ~10 s importing torch, Lightning and torchvision it never used: the usage
    texts of the CLI and ``import mmrobust`` import none of them; the names still import on first use."""
    proc = subprocess.run([sys.executable, "-c", HELP_SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "usage: mmrobust COMMAND" in proc.stdout and "usage: mmrobust report" in proc.stdout
    assert "usage: mmrobust demo" in proc.stdout and "--modalities" in proc.stdout
    assert "HEAVY []" in proc.stdout
    assert "ALL True True" in proc.stdout
    assert "OTHER mmrobust.graph False False" in proc.stdout  # subpackages on access; hasattr never raises
