"""What the ``recipes/*/run.py`` scripts (and ``recipes/speech/keywords.py``) share: the command line's
common options (``--threads``, ``--seed``, ``--out``, ``--quick``), the start of a run, a quiet Lightning
``Trainer``, headless matplotlib and the end of a report. Not a recipe itself.

A recipe reaches it with the repository root on ``sys.path`` (appended: an installed ``mmrobust`` wins over
the checkout's, which serves when none is installed)::

    sys.path.append(str(Path(__file__).resolve().parents[2]))  # the checkout: recipes._common (and mmrobust)
    from recipes._common import ...
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import pytorch_lightning as pl
import torch


def recipe_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` shows the recipe's docstring as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_run_options(parser: argparse.ArgumentParser, *, out: str, quick_help: str) -> None:
    """``--threads``, ``--seed``, ``--out`` (default ``out``) and ``--quick`` (a smoke test: ``quick_help``)."""
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=out)
    parser.add_argument("--quick", action="store_true", help=quick_help)


#: the smallest value of the recipes' count options (``None``: not given); -1 epochs would be an endless Lightning
#: run, 0 evaluation batches a division by zero after training
COUNT_MINIMUMS = {"epochs": 1, "adv_epochs": 0, "steps": 1, "train_steps": 1, "eval_batches": 1, "batch_size": 1,
                  "width": 1, "subset": 1, "limit_train": 1, "threads": 1}


def parse_with_quick_presets(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]],
                             **presets: Any) -> argparse.Namespace:
    """Parse ``argv``; with ``--quick``, ``presets`` become the defaults, so flags given explicitly still win.
    Count options below their :data:`COUNT_MINIMUMS` are refused here, naming the flag, before any work.

    ``argv`` is parsed twice on purpose: the first parse reads ``--quick``, the second applies the presets as
    defaults. argparse cannot tell a flag given with the default's value from one not given, so comparing one
    parse with the defaults would override ``--epochs 30 --quick``; the recipes' types have no side effects."""
    if parser.parse_args(argv).quick:
        parser.set_defaults(**presets)
    args = parser.parse_args(argv)
    for name, low in COUNT_MINIMUMS.items():
        value = getattr(args, name, None)
        if value is not None and value < low:
            parser.error(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value}")
    return args


def use_threads(args: argparse.Namespace) -> None:
    """``--threads``: torch's intra-op thread count (left alone when not given)."""
    if args.threads:
        torch.set_num_threads(args.threads)


def start_run(args: argparse.Namespace) -> Path:
    """Threads and seeds as the options say; the ``--out`` folder, created."""
    use_threads(args)
    pl.seed_everything(args.seed, workers=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def quiet_trainer(epochs: int, callbacks: Iterable[pl.Callback] = (), **options: Any) -> pl.Trainer:
    """A ``Trainer`` for ``epochs`` that writes nothing (no logger, no checkpoints, no model summary);
    ``options`` add to or override these ``Trainer`` arguments."""
    settings = dict(logger=False, enable_checkpointing=False, enable_model_summary=False)
    return pl.Trainer(max_epochs=epochs, callbacks=list(callbacks), **{**settings, **options})


def pyplot():
    """``matplotlib.pyplot`` drawing off-screen (the Agg backend), for figures saved to files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(report, table) -> Path:
    """Write ``report`` (a :class:`mmrobust.reporting.Report`), print ``table`` and where the report went."""
    path = report.write()
    print("\n" + table.markdown())
    print(f"\nReport: {path}")
    return path
