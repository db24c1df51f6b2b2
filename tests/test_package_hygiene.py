"""Package-wide hygiene: every module compiles without warnings and every ``__all__`` is importable."""

import importlib
import pkgutil
import warnings
from pathlib import Path

import pytest

import mmrobust

PACKAGE_ROOT = Path(mmrobust.__file__).parent


def _source_files():
    return sorted(PACKAGE_ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", _source_files(), ids=lambda p: str(p.relative_to(PACKAGE_ROOT)))
def test_module_compiles_without_syntax_warnings(path):
    # An invalid escape such as "\m" in a docstring is a SyntaxWarning today and an error in a future
    # Python; "\t" or "\f" silently turn LaTeX like \tau or \frac into a tab or a form feed.
    with warnings.catch_warnings():
        warnings.simplefilter("error", SyntaxWarning)
        compile(path.read_text(encoding="utf-8"), str(path), "exec")


def _packages():
    names = ["mmrobust"]
    for info in pkgutil.iter_modules([str(PACKAGE_ROOT)]):
        if info.ispkg:
            names.append(f"mmrobust.{info.name}")
    return names


@pytest.mark.parametrize("name", _packages())
def test_every_exported_name_exists_once(name):
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(exported) == len(set(exported)), f"{name}.__all__ lists a name twice"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"


def test_renamed_public_names_keep_their_old_names():
    """``BatchView`` (the attack's view of a batch) was ``Victim``; ``feature_ball`` (a function) was ``FeatureBall``."""
    from mmrobust.adapters import BatchView, Victim
    from mmrobust.threats import FeatureBall, feature_ball
    assert Victim is BatchView and FeatureBall is feature_ball
