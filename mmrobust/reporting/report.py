"""Markdown + HTML robustness reports with plots and the settings needed to reproduce every number.

A :class:`Report` collects sections (text, tables, figures) and writes ``report.md``, ``report.html``,
the figures as PNG and every table as ``results.json`` (so ``mmrobust report`` can compare runs later).
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

Number = Union[int, float]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(v)


@dataclass
class Table:
    title: str
    rows: List[Dict[str, Any]]
    columns: Optional[List[str]] = None
    note: str = ""
    #: the columns that name a row (e.g. ``["budget"]``); default the columns holding text. ``mmrobust report``
    #: matches rows of different runs by them and shows the other columns as metrics.
    key: Optional[List[str]] = None

    def header(self) -> List[str]:
        if self.columns:
            return list(self.columns)
        cols: List[str] = []
        for row in self.rows:
            cols.extend(k for k in row if k not in cols)
        return cols

    def markdown(self) -> str:
        cols = self.header()
        lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
        lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        cols = self.header()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>"
                       for r in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass
class Figure:
    title: str
    path: Path
    caption: str = ""


@dataclass
class Section:
    title: str
    items: List[Any] = field(default_factory=list)


class Report:
    """Collect results and write them as Markdown, HTML, PNG figures and JSON.

    Example:
        >>> import tempfile
        >>> out = tempfile.mkdtemp()
        >>> report = Report("Robustness of SmallCNN on digits", out_dir=out)
        >>> report.settings({"attack": "PGD", "steps": 20, "eps": 0.1, "seed": 0})
        >>> _ = report.table("Accuracy", [{"model": "normal", "clean": 0.97, "robust": 0.12}])
        >>> _ = report.curve("Accuracy vs budget", {"normal": ([0, .05, .1], [0.97, 0.6, 0.12])},
        ...              xlabel="eps (L-inf)", ylabel="robust accuracy")
        >>> path = report.write()
        >>> path.name, sorted(p.name for p in path.parent.iterdir())
        ('report.md', ['accuracy_vs_budget.png', 'report.html', 'report.md', 'results.json'])
        >>> import shutil; shutil.rmtree(out)
    """

    def __init__(self, title: str, out_dir: Union[str, Path], name: Optional[str] = None):
        self.title = title
        #: the run's name (``mmrobust report`` labels its column with it when no other run has the same name)
        self.name = name
        self.out_dir = Path(out_dir)
        self.sections: List[Section] = []
        self._settings: Dict[str, Any] = {}
        self._tables: List[Table] = []

    # -- content ----------------------------------------------------------------------------------
    def section(self, title: str) -> Section:
        sec = Section(title)
        self.sections.append(sec)
        return sec

    def _current(self) -> Section:
        if not self.sections:
            self.section("Results")
        return self.sections[-1]

    def settings(self, values: Mapping[str, Any]) -> None:
        """Settings needed to reproduce the numbers (attack, steps, restarts, budget, seed, split)."""
        self._settings.update(values)

    def text(self, paragraph: str) -> None:
        self._current().items.append(paragraph)

    def table(self, title: str, rows: Sequence[Mapping[str, Any]], columns: Optional[Sequence[str]] = None,
              note: str = "", key: Optional[Sequence[str]] = None) -> Table:
        t = Table(title, [dict(r) for r in rows], list(columns) if columns else None, note,
                  list(key) if key else None)
        self._current().items.append(t)
        self._tables.append(t)
        return t

    def figure(self, title: str, fig, caption: str = "", name: Optional[str] = None) -> Figure:
        """Save a matplotlib figure as PNG next to the report."""
        import matplotlib.pyplot as plt

        self.out_dir.mkdir(parents=True, exist_ok=True)
        fname = (name or _slug(title)) + ".png"
        path = self.out_dir / fname
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        f = Figure(title, path, caption)
        self._current().items.append(f)
        return f

    def curve(self, title: str, series: Mapping[str, tuple], *, xlabel: str, ylabel: str,
              caption: str = "", logx: bool = False, ylim=(0.0, 1.0), emphasis: Sequence[str] = ()) -> Figure:
        """Line plot of several ``name -> (xs, ys)`` series (e.g. accuracy vs budget). The y axis spans
        ``ylim`` (accuracies: 0 to 1, so small differences are not magnified); each series gets its own
        marker, smaller for later series, so curves that coincide remain visible; series named in
        ``emphasis`` (e.g. the worst case) are drawn black and dashed on top."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        for i, (name, (xs, ys)) in enumerate(series.items()):  # markers shrink so coinciding curves stay visible
            style = dict(color="black", linestyle="--", zorder=3) if name in emphasis else {}
            ax.plot(list(xs), list(ys), marker="osD^v"[i % 5], markersize=max(3, 8 - 1.5 * i), alpha=0.85,
                    label=str(name), **style)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log")
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        return self.figure(title, fig, caption)

    def histogram(self, title: str, samples: Mapping[str, Sequence[float]], *, xlabel: str, caption: str = "",
                  marks: Sequence[float] = (), bins: int = 30) -> Figure:
        """Histograms of several ``name -> values`` samples on shared bins (e.g. the minimal perturbation
        per example found by FMN/FAB). Infinite values (no point found) are left out and counted in the
        legend; ``marks`` draws dashed vertical lines (e.g. the budgets of a sweep)."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        import numpy as np

        finite = {k: [float(v) for v in vs if math.isfinite(v)] for k, vs in samples.items()}
        values = [v for vs in finite.values() for v in vs] + [float(m) for m in marks]
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        edges = np.linspace(min(lo, 0.0), hi if hi > lo else lo + 1.0, bins + 1)
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        for name, vs in finite.items():
            missing = len(samples[name]) - len(vs)
            label = f"{name} ({len(vs)} found" + (f", {missing} not found)" if missing else ")")
            ax.hist(vs, bins=edges, histtype="step", linewidth=1.5, label=label)
        for i, m in enumerate(marks):
            ax.axvline(float(m), color="grey", linestyle="--", linewidth=0.8, label="budgets" if i == 0 else None)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("outputs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        return self.figure(title, fig, caption)

    def scatter(self, title: str, points: Mapping[str, tuple], *, xlabel: str, ylabel: str,
                caption: str = "") -> Figure:
        """Labelled points ``name -> (x, y)`` (e.g. the clean vs robust accuracy trade-off)."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        for name, (x, y) in points.items():
            ax.scatter([x], [y])
            ax.annotate(str(name), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.set_title(title, fontsize=10)
        return self.figure(title, fig, caption)

    # -- output -----------------------------------------------------------------------------------
    def environment(self) -> Dict[str, str]:
        import torch

        return {"created": _dt.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
                "torch": torch.__version__, "platform": platform.platform()}

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for sec in self.sections:
            out += [f"## {sec.title}", ""]
            for item in sec.items:
                if isinstance(item, Table):
                    out += [f"**{item.title}**", "", item.markdown(), ""]
                    if item.note:
                        out += [f"_{item.note}_", ""]
                elif isinstance(item, Figure):
                    out += [f"![{item.title}]({item.path.name})", ""]
                    if item.caption:
                        out += [f"_{item.caption}_", ""]
                else:
                    out += [str(item), ""]
        out += ["## Settings (to reproduce every number above)", ""]
        settings = {**self._settings, **{f"env.{k}": v for k, v in self.environment().items()}}
        out += [Table("settings", [{"setting": k, "value": v} for k, v in settings.items()]).markdown(), ""]
        return "\n".join(out)

    def html(self) -> str:
        parts = [f"<h1>{html.escape(self.title)}</h1>"]
        for sec in self.sections:
            parts.append(f"<h2>{html.escape(sec.title)}</h2>")
            for item in sec.items:
                if isinstance(item, Table):
                    parts.append(f"<h3>{html.escape(item.title)}</h3>{item.html()}")
                    if item.note:
                        parts.append(f"<p><em>{html.escape(item.note)}</em></p>")
                elif isinstance(item, Figure):
                    parts.append(f'<figure><img src="{html.escape(item.path.name)}" alt="{html.escape(item.title)}">'
                                 f"<figcaption>{html.escape(item.caption or item.title)}</figcaption></figure>")
                else:
                    parts.append(f"<p>{html.escape(str(item))}</p>")
        settings = {**self._settings, **{f"env.{k}": v for k, v in self.environment().items()}}
        parts.append("<h2>Settings (to reproduce every number above)</h2>")
        parts.append(Table("settings", [{"setting": k, "value": v} for k, v in settings.items()]).html())
        style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;}table{border-collapse:collapse;}"
                 "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;}img{max-width:100%;}")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")

    def write(self) -> Path:
        """Write ``report.md``, ``report.html`` and ``results.json``; returns the Markdown path."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        md = self.out_dir / "report.md"
        md.write_text(self.markdown())
        (self.out_dir / "report.html").write_text(self.html())
        payload = {"title": self.title, "name": self.name, "settings": self._settings,
                   "tables": [{"title": t.title, "rows": t.rows, **({"key": t.key} if t.key else {})}
                              for t in self._tables]}
        (self.out_dir / "results.json").write_text(json.dumps(payload, indent=2, default=_json_default))
        return md


def _json_default(v):
    try:
        return float(v)
    except Exception:
        return str(v)


def _slug(text: str) -> str:
    keep = "".join(c.lower() if c.isalnum() else "_" for c in text)
    return "_".join(p for p in keep.split("_") if p)[:60] or "figure"
