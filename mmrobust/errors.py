"""Argument checks shared by the whole library.

Every check names the offending argument and the accepted range, so a user reading the traceback knows
what to change without opening the source.
"""

from __future__ import annotations

import difflib
import math
from numbers import Real
from typing import Any


class NonFiniteError(RuntimeError):
    """Raised when NaN or Inf shows up in a model's outputs or gradients during an attack."""


class LabelError(ValueError):
    """Raised when labels (or target labels) are not class indices of the model's outputs."""


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
    return float(value)


def check_finite_nonneg(name: str, value: Any) -> float:
    v = _as_float(name, value)
    if math.isnan(v) or math.isinf(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_positive(name: str, value: Any) -> float:
    v = _as_float(name, value)
    if math.isnan(v) or math.isinf(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def check_int(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_fraction(name: str, value: Any, *, open_low: bool = False, open_high: bool = False) -> float:
    v = _as_float(name, value)
    low_ok = v > 0 if open_low else v >= 0
    high_ok = v < 1 if open_high else v <= 1
    if math.isnan(v) or not (low_ok and high_ok):
        lo = "(0" if open_low else "[0"
        hi = "1)" if open_high else "1]"
        raise ValueError(f"{name} must lie in {lo}, {hi}, got {value!r}")
    return v


def check_choice(name: str, value: Any, choices) -> Any:
    if value not in choices:
        try:
            listed = sorted(choices)
        except TypeError:  # mixed types, e.g. None among strings
            listed = sorted(choices, key=lambda c: (c is not None, repr(c)))
        hint = closest_choice(value, choices)
        raise ValueError(f"{name} must be one of {listed}, got {value!r}{'; ' + hint if hint else ''}")
    return value


def closest_choice(value: Any, choices) -> str:
    """``"did you mean 'x'?"`` for the string choice closest to a mistyped ``value`` (case-insensitive), or
    ``""`` when none is close."""
    if not isinstance(value, str):
        return ""
    words = {str(c).lower(): c for c in choices if isinstance(c, str)}
    close = difflib.get_close_matches(value.lower(), list(words), n=1)
    return f"did you mean {words[close[0]]!r}?" if close else ""


class BudgetViolation(RuntimeError):
    """Raised when an attack returns a point outside its threat model (budget, value box, edge-flip limits);
    see :mod:`mmrobust.threats.verify`."""
