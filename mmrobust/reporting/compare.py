"""``mmrobust report``: several runs' ``results.json`` side by side, one column per run.

Every table of the runs becomes one table with a row per (row of the original table, metric) -- e.g. per
attack and accuracy, or per budget and attack of a sweep -- and a column per run; rows of different runs
are matched by the table's key columns (``Table.key``, default the columns holding text). Every run's
settings are kept in a table of the same shape, so settings with the same key never overwrite each other.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .report import Report, _fmt

PathLike = Union[str, Path]

#: the table of a budget sweep (mmrobust evaluate --budgets); runs that have it get a joint plot
SWEEP_TABLE = "Robust accuracy vs budget"


def _path_labels(run_dirs: Sequence[PathLike]) -> List[str]:
    """The shortest trailing parts of each path that tell the runs apart (``runs/a/evaluation`` and
    ``runs/b/evaluation`` -> ``a/evaluation``, ``b/evaluation``)."""
    parts = [Path(d).resolve().parts for d in run_dirs]
    labels = []
    for i, p in enumerate(parts):
        tail = p[-1:]
        for n in range(1, len(p) + 1):
            tail = p[-n:]
            if all(q[-n:] != tail for j, q in enumerate(parts) if j != i and q != p):
                break
        labels.append("/".join(tail))
    return labels


def run_labels(run_dirs: Sequence[PathLike], names: Optional[Sequence[Optional[str]]] = None) -> List[str]:
    """Distinct column labels for runs: the run's name (``mmrobust evaluate --name``, stored in its
    results.json) where no other run has the same name, otherwise the shortest distinguishing tail of its
    directory path; the same directory given twice gets ``#2``."""
    names = list(names) if names is not None else [None] * len(run_dirs)
    if len(names) != len(run_dirs):
        raise ValueError(f"names must give one name (or None) per run: {len(names)} names for {len(run_dirs)} runs")
    by_path = _path_labels(run_dirs)
    labels = [n if n and names.count(n) == 1 and n not in by_path[:i] + by_path[i + 1:] else p
              for i, (n, p) in enumerate(zip(names, by_path))]
    seen: Dict[str, int] = {}
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label}#{seen[label]}"
    return labels


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Number) and not isinstance(v, bool)


def _row_name(row: Dict[str, Any], key: Sequence[str]) -> str:
    """``pgd`` for a text key, ``budget 0.1`` for a numeric one, joined with ``, ``."""
    parts = [(f"{k} {_fmt(row.get(k))}" if _is_number(row.get(k)) else str(row.get(k, ""))) for k in key]
    return ", ".join(parts)


def side_by_side(tables: Sequence[Tuple[str, Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """``[(run label, table from results.json)]`` -> rows ``{"row", "metric", <label>: value, ...}``, one per
    row of the original tables and metric, in first-seen order (numeric keys such as budgets sorted)."""
    cells: Dict[Tuple[Tuple, str], Dict[str, Any]] = {}
    names: Dict[Tuple, str] = {}
    for label, table in tables:
        rows = table.get("rows", [])
        key = table.get("key") or [c for r in rows for c, v in r.items() if not _is_number(v)]
        key = list(dict.fromkeys(key))
        for row in rows:
            ident = tuple(row.get(k) for k in key)
            names.setdefault(ident, _row_name(row, key))
            for metric, value in row.items():
                if metric not in key:
                    cells.setdefault((ident, metric), {})[label] = value
    idents = list(names)
    if idents and all(all(_is_number(v) for v in ident) for ident in idents):
        idents.sort()
    order = {ident: i for i, ident in enumerate(idents)}
    out = []
    for (ident, metric), values in sorted(cells.items(), key=lambda kv: order[kv[0][0]]):  # stable: metrics in order
        out.append({"row": names[ident], "metric": metric, **values})
    return out


def compare_runs(run_dirs: Sequence[PathLike], out_dir: PathLike, title: str = "Comparison of runs") -> Path:
    """Merge the ``results.json`` of several runs into one side-by-side report (``mmrobust report``); returns
    the Markdown path. Runs with a budget sweep also get one plot of their worst-case curves."""
    if not run_dirs:
        raise ValueError("give at least one run directory holding results.json")
    runs = []
    for d in run_dirs:
        path = Path(d) / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"run directory {d} has no results.json (written by `mmrobust evaluate`, "
                                    "`mmrobust test` or Report.write)")
        runs.append(json.loads(path.read_text()))
    labels = run_labels(run_dirs, [r.get("name") for r in runs])
    report = Report(title, out_dir)
    report.section("Results side by side")
    titles = list(dict.fromkeys(t["title"] for r in runs for t in r.get("tables", [])))
    for table_title in titles:
        tables = [(label, t) for label, r in zip(labels, runs) for t in r.get("tables", []) if t["title"] == table_title]
        report.table(table_title, side_by_side(tables), columns=["row", "metric", *labels], key=["row", "metric"],
                     note="one column per run; empty where a run has no such row")
    curves = {}
    for label, r in zip(labels, runs):
        sweep = next((t for t in r.get("tables", []) if t["title"] == SWEEP_TABLE), None)
        if sweep and sweep["rows"]:
            rows = sorted(sweep["rows"], key=lambda row: row["budget"])
            curves[label] = ([row["budget"] for row in rows], [row["worst case"] for row in rows])
    if curves:
        units = {str(r.get("settings", {}).get("budget unit")) for r in runs if "budget unit" in r.get("settings", {})}
        report.curve("Worst-case accuracy vs budget", curves, xlabel=" / ".join(sorted(units)) or "budget",
                     ylabel="robust accuracy (worst case over attacks)", caption="One curve per run.")
    report.section("Settings of each run")
    settings = [(label, {"rows": [{"setting": k, "value": v} for k, v in r.get("settings", {}).items()],
                         "key": ["setting"]}) for label, r in zip(labels, runs)]
    rows = [{"setting": row["row"], **{k: v for k, v in row.items() if k not in ("row", "metric")}}
            for row in side_by_side(settings)]
    report.table("Settings", rows, columns=["setting", *labels], key=["setting"],
                 note="every run's settings, one column per run")
    report.settings({f"run {label}": str(d) for label, d in zip(labels, run_dirs)})
    return report.write()
