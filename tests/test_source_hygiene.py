"""Every module of the package compiles without warnings: an invalid escape such as ``\\d`` in a docstring is a
SyntaxWarning today and a SyntaxError under ``python -W error`` (and in future Pythons)."""

import warnings
from pathlib import Path

import pytest

import mmrobust

ROOT = Path(mmrobust.__file__).parent


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_compiles_without_warnings(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compile(path.read_text(encoding="utf-8"), str(path), "exec")
