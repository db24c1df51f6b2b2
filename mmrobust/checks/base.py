"""The result type and the registry of attack-failure checks.

A check looks for a known way in which an attack can fail silently and make a model look robust
(Carlini et al. 2019, "On Evaluating Adversarial Robustness", https://arxiv.org/abs/1902.06705, Sec. 4-5;
Pintor et al. 2022, "Indicators of Attack Failure: Debugging and Improving Optimization of Adversarial
Examples", https://arxiv.org/abs/2106.09947). Every check returns a :class:`CheckResult`: whether it fired,
the evidence (numbers) and what to do about it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Sequence, Union

#: when a check runs: ``"model"`` on a few clean units of the first batch (forward/backward passes only),
#: ``"rerun"`` as a small extra attack on those units, ``"results"`` on the attack results of every batch
KINDS = ("model", "rerun", "results")


@dataclass
class CheckResult:
    """The outcome of one check.

    Attributes:
        name: the check's registry name (e.g. ``"randomised_forward"``).
        fired: whether the check found the failure it looks for.
        evidence: what was measured, in words and numbers.
        advice: what to do when it fired (empty otherwise).
        ran: ``False`` when the check did not apply (``evidence`` says why); then ``fired`` is ``False``.
        values: the numbers behind ``evidence``, for logs and reports.
    """

    name: str
    fired: bool
    evidence: str
    advice: str = ""
    ran: bool = True
    values: Dict[str, float] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "FIRED" if self.fired else ("passed" if self.ran else "not applicable")

    def as_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status
        return out


def not_applicable(name: str, why: str) -> CheckResult:
    return CheckResult(name, False, why, ran=False)


@dataclass(frozen=True)
class Check:
    """A registered check: its ``function``, ``kind`` (see :data:`KINDS`) and a one-line summary."""

    name: str
    kind: str
    function: Callable[..., CheckResult]
    summary: str


#: every check by name, in the order they run and are reported
CHECKS: Dict[str, Check] = {}


def register(name: str, kind: str, summary: str) -> Callable[[Callable[..., CheckResult]], Callable[..., CheckResult]]:
    """Decorator adding a check function to :data:`CHECKS`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")

    def add(function: Callable[..., CheckResult]) -> Callable[..., CheckResult]:
        CHECKS[name] = Check(name, kind, function, summary)
        return function

    return add


def resolve_checks(checks: Union[bool, None, str, Sequence[str]]) -> List[str]:
    """The names of the checks to run: ``True`` all of :data:`CHECKS`, ``False``/``None`` none, or the
    names given (a string or a list of them)."""
    if checks is None or checks is False:
        return []
    if checks is True:  # model checks first, then reruns, then the results checks
        return sorted(CHECKS, key=lambda name: KINDS.index(CHECKS[name].kind))
    if isinstance(checks, str):
        checks = [checks]
    if not isinstance(checks, (list, tuple)):
        raise TypeError(f"checks must be True, False or a list of check names, got {type(checks).__name__}")
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise ValueError(f"checks names unknown checks {unknown}; choose from {list(CHECKS)} (or pass checks=True "
                         "for all of them, checks=False for none)")
    return sorted(dict.fromkeys(checks), key=lambda name: KINDS.index(CHECKS[name].kind))
