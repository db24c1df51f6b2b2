"""Reports: Markdown + HTML with plots, tables and the settings behind every number."""

from .compare import compare_runs, run_labels
from .report import Report, Table

__all__ = ["Report", "Table", "compare_runs", "run_labels"]
