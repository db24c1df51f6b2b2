"""The examples in the docstrings of the public classes run and show what they say (torchmetrics' style:
a few lines per class, checked by the suite; each takes well under a second)."""

import doctest
import importlib

import pytest

MODULES = ["mmrobust.attacks.pgd", "mmrobust.attacks.apgd", "mmrobust.attacks.fmn", "mmrobust.attacks.ensemble",
           "mmrobust.threats.norms", "mmrobust.metrics.robust_accuracy", "mmrobust.metrics.functional"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert tried > 0, f"{name} has no examples"
    assert failures == 0, f"{failures} docstring example(s) in {name} failed (run python -m pytest --doctest-modules {name.replace('.', '/')}.py)"
