"""The examples in the docstrings run and show what they say (torchmetrics' style: a few lines per public
class, checked by the suite; each takes well under a second, and none reads ../shared data or the network).

Modules are found on disk: every module of ``mmrobust`` with a ``>>>`` example is run, so a new example is
checked without being listed here."""

import doctest
import importlib
import inspect
from pathlib import Path

import pytest

import mmrobust

ROOT = Path(mmrobust.__file__).parent
MODULES = sorted(".".join(("mmrobust",) + p.relative_to(ROOT).with_suffix("").parts).replace(".__init__", "")
                 for p in ROOT.rglob("*.py") if ">>>" in p.read_text(encoding="utf-8"))

#: the public namespaces whose classes carry an example
PUBLIC = ["mmrobust", "mmrobust.attacks", "mmrobust.metrics", "mmrobust.threats", "mmrobust.adapters"]
#: public classes still without an example (this list only shrinks)
NO_EXAMPLE_YET: set = set()


def test_examples_are_found():
    assert "mmrobust.attacks.pgd" in MODULES and "mmrobust.metrics.functional" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert tried > 0, f"{name} has no examples"
    assert failures == 0, (f"{failures} docstring example(s) in {name} failed (run python -m pytest "
                           f"--doctest-modules {name.replace('.', '/')}.py)")


def test_public_classes_have_examples():
    missing = set()
    for space in PUBLIC:
        module = importlib.import_module(space)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isclass(obj) and obj.__module__.startswith("mmrobust") and ">>>" not in (obj.__doc__ or ""):
                missing.add(name)
    assert not missing - NO_EXAMPLE_YET, f"public classes without a docstring example: {sorted(missing - NO_EXAMPLE_YET)}"
    assert not NO_EXAMPLE_YET - missing, f"these have examples now; drop them from NO_EXAMPLE_YET: {sorted(NO_EXAMPLE_YET - missing)}"
