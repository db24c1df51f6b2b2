"""Reports: Markdown + HTML with plots, tables and the settings behind every number."""

from .report import Report, Table, compare_runs

__all__ = ["Report", "Table", "compare_runs"]
