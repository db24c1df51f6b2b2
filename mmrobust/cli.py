"""The ``mmrobust`` command.

::

    mmrobust fit|validate|test --config recipes/image/digits_at.yaml   # LightningCLI: every model,
                                                                      # datamodule, callback, attack and
                                                                      # threat model from YAML / flags
    mmrobust evaluate --config eval.yaml                              # checkpoint + data + attacks -> report
    mmrobust report RUN_DIR [RUN_DIR ...] --out DIR                   # several runs -> one comparison
    mmrobust demo [--out DIR] [--modalities image audio graph]         # offline tour on embedded data

``fit``/``validate``/``test`` are :class:`pytorch_lightning.cli.LightningCLI` with subclass mode for
the model and the datamodule, so any LightningModule (e.g. :class:`mmrobust.training.RobustClassifier`)
and any callback (``trainer.callbacks`` in YAML) can be configured. After ``validate``/``test`` the
logged metrics are also written as a report (``report.md``/``report.html``) into the run's log dir.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _lightning_cli(argv: Sequence[str]):
    from pytorch_lightning.cli import LightningCLI

    class MMRobustCLI(LightningCLI):
        def after_validate(self) -> None:
            self._write_metrics_report("validate")

        def after_test(self) -> None:
            self._write_metrics_report("test")

        def _write_metrics_report(self, stage: str) -> None:
            from .reporting import Report

            trainer = self.trainer
            if not trainer.is_global_zero:
                return
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            out = Path(trainer.log_dir or trainer.default_root_dir) / f"report_{stage}"
            report = Report(f"mmrobust {stage}: {type(self.model).__name__}", out)
            report.section("Logged metrics")
            report.table("Metrics", [{"metric": k, "value": v} for k, v in sorted(metrics.items())])
            report.settings({"command": " ".join(["mmrobust", *argv]), "seed": self.config.get(
                self.subcommand, {}).get("seed_everything") if self.subcommand else None})
            path = report.write()
            print(f"report written to {path}")

    return MMRobustCLI(args=list(argv), seed_everything_default=0,
                       save_config_kwargs={"overwrite": True}, auto_configure_optimizers=True)


def _evaluate(argv: Sequence[str]) -> Path:
    """``mmrobust evaluate``: a checkpoint or module, a datamodule and a list of attacks -> report."""
    import torch
    from jsonargparse import ActionConfigFile, ArgumentParser
    from pytorch_lightning import LightningDataModule

    from .attacks.base import Attack
    from .checkpoints import load_weights
    from .reporting import Report

    parser = ArgumentParser(prog="mmrobust evaluate", description=_evaluate.__doc__)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_subclass_arguments(torch.nn.Module, "model", help="model class_path and init_args")
    parser.add_argument("--checkpoint", type=Optional[str], default=None,
                        help="weights (Lightning .ckpt or state_dict .pt), loaded with weights_only=True")
    parser.add_subclass_arguments(LightningDataModule, "data", help="datamodule class_path and init_args")
    parser.add_argument("--attacks", type=List[Attack], help="attacks to run (worst case per example)")
    parser.add_argument("--split", type=str, default="test", choices=["test", "val"])
    parser.add_argument("--max_batches", type=Optional[int], default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=str, default="runs/evaluate")
    cfg = parser.parse_args(list(argv))
    init = parser.instantiate_classes(cfg)
    torch.manual_seed(cfg.seed)
    model = init.model
    if cfg.checkpoint:
        load_weights(model, cfg.checkpoint)
    data = init.data
    data.prepare_data()
    data.setup("test" if cfg.split == "test" else "validate")
    loader = data.test_dataloader() if cfg.split == "test" else data.val_dataloader()

    from .evaluation import evaluate

    result = evaluate(model, loader, init.attacks, max_batches=cfg.max_batches, progress=True)
    report = Report(f"Robustness of {type(model).__name__}", cfg.out)
    report.section("Accuracy under attack")
    rows = [{"attack": "none (clean)", "accuracy": result["clean_accuracy"]}]
    rows += [{"attack": name, "accuracy": acc} for name, acc in result["per_attack"].items()]
    rows.append({"attack": "worst case over all attacks", "accuracy": result["robust_accuracy"]})
    report.table("Accuracy", rows, note=f"{result['num_examples']} examples from the {cfg.split} split")
    report.settings({"model": cfg.model.class_path, "checkpoint": cfg.checkpoint, "data": cfg.data.class_path,
                     "split": cfg.split, "seed": cfg.seed, "max_batches": cfg.max_batches,
                     **{f"attack[{i}]": a.describe() for i, a in enumerate(init.attacks)}})
    path = report.write()
    print(Path(path).read_text())
    return path


def _report(argv: Sequence[str]) -> Path:
    from .reporting import compare_runs

    parser = argparse.ArgumentParser(prog="mmrobust report", description="Compare several runs' results.json")
    parser.add_argument("runs", nargs="+", help="run directories containing results.json")
    parser.add_argument("--out", default="runs/comparison")
    parser.add_argument("--title", default="Comparison of runs")
    args = parser.parse_args(list(argv))
    path = compare_runs(args.runs, args.out, args.title)
    print(Path(path).read_text())
    return path


def _demo(argv: Sequence[str]) -> Path:
    from .demo import main as demo_main

    return demo_main(argv)


USAGE = __doc__


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd in LIGHTNING_COMMANDS:
        _lightning_cli(argv)
    elif cmd == "evaluate":
        _evaluate(rest)
    elif cmd == "report":
        _report(rest)
    elif cmd == "demo":
        _demo(rest)
    else:
        print(f"mmrobust: unknown command {cmd!r}; expected one of "
              f"{', '.join(LIGHTNING_COMMANDS + ('evaluate', 'report', 'demo'))}\n{USAGE}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
