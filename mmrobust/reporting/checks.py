"""The "Checks" section of a report: which attack-failure checks ran and what they found."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from .report import Report, Table


def add_checks_section(report: Report, checks: Optional[Sequence[Mapping[str, Any]]]) -> None:
    """Add a "Checks" section to ``report`` from the ``checks`` entry of :func:`mmrobust.evaluate`'s result
    (one dict per check, :meth:`mmrobust.checks.CheckResult.as_dict`): a sentence naming the checks that fired
    (or saying none did), then one row per check with its status, evidence and advice. Call it before adding
    the results table, so readers see the checks first. ``None`` (checks switched off) says so.

    The table is shown in the report but not added to its ``results.json`` tables, which hold the numbers
    that ``mmrobust report`` merges across runs."""
    section = report.section("Checks")
    if checks is None:
        report.text("No attack-failure checks ran (checks=False); the numbers below were not checked for attack "
                    "failure.")
        return
    fired = [c["name"] for c in checks if c.get("fired")]
    ran = [c["name"] for c in checks if c.get("ran", True)]
    if fired:
        report.text(f"Attack-failure checks FIRED: {', '.join(fired)}. The robust accuracy below may be "
                    "overestimated; see the evidence and what to do in the table.")
    else:
        report.text(f"{len(ran)} attack-failure checks ran and none fired ({', '.join(ran) or 'none applied'}).")
    section.items.append(Table(
        "Attack-failure checks (Carlini et al. 2019; Pintor et al. 2022)",
        [{"check": c["name"], "status": c.get("status", "FIRED" if c.get("fired") else "passed"),
          "evidence": c.get("evidence", ""), "what to do": c.get("advice", "")} for c in checks],
        ["check", "status", "evidence", "what to do"],
        "mmrobust.checks: each check and its cost are described in its docstring"))
