"""Every ``python`` block of README.md runs as written (issue 19), each in a fresh interpreter in an empty
directory, with only the library and its embedded data. Blocks that train a model take minutes on 2 CPU
cores and are marked slow; ``python -m pytest -m slow tests/test_readme_snippets.py`` runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def _param(i: int, code: str):
    slow = "fit(" in code  # training blocks: minutes on 2 CPU cores
    return pytest.param(code, id=f"block{i}", marks=[pytest.mark.slow] if slow else [])


def test_readme_has_the_blocks_this_file_runs():
    assert len(BLOCKS) >= 5
    assert any("PRBCD" in b for b in BLOCKS) and any("Joint" in b for b in BLOCKS)


@pytest.mark.parametrize("code", [_param(i, b) for i, b in enumerate(BLOCKS)])
def test_readme_block_runs_as_written(code, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMROBUST_TEST_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=1800, env=env)
    assert proc.returncode == 0, f"README block failed:\n{code}\n--- stderr ---\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip(), "every README block prints its result"
    print(proc.stdout)
