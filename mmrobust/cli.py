"""The ``mmrobust`` command (its usage text is :data:`USAGE`, printed by ``mmrobust --help``).

``fit``/``validate``/``test`` are :class:`pytorch_lightning.cli.LightningCLI` with subclass mode for
the model and the datamodule, so any LightningModule (e.g. :class:`mmrobust.training.RobustClassifier`)
and any callback (``trainer.callbacks`` in YAML) can be configured. After ``validate``/``test`` the
logged metrics, the attacks and their budgets are written as a report (``report.md``/``report.html``)
into the run's log dir.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional, Sequence, Union

from .cli_runs import attack_settings, best_checkpoint, checkpoint_root, config_name, describe_attack, list_option, \
    move_run, pop_option, quick_configs

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

USAGE = """usage: mmrobust COMMAND [options]

commands:
  fit, validate, test, predict   Lightning's command line: model, data, callbacks, attacks and threat
                                 models from YAML (--config FILE) or flags; `mmrobust fit --help`
  evaluate                       a checkpoint, a datamodule and attacks -> report, at the attacks' budget or
                                 at several (--budgets 0.05 0.1 0.2: curves); `mmrobust evaluate --help`
  report RUN_DIR [RUN_DIR ...]   several runs' results.json side by side -> one report (--out DIR)
  demo                           offline tour on embedded data: image, speech, graph (--quick, --out DIR)

options of fit/validate/test/evaluate:
  --out DIR        everything the run writes (logs, checkpoints, reports) goes under DIR
  --quick          add the recipe's preset <config>.quick.yaml (fit/validate/test: under 2 min on 2 CPU
                   cores; evaluate: the first test batch)
  --ckpt_path best (validate/test) the best checkpoint the fit run with the same --config/--out recorded

examples:
  mmrobust fit  --config recipes/image/digits_at.yaml --out runs/mine
  mmrobust test --config recipes/image/digits_at.yaml --out runs/mine --ckpt_path best
  mmrobust evaluate --config recipes/image/evaluate_digits.yaml --checkpoint runs/mine --out runs/mine/evaluation
  mmrobust evaluate --config recipes/image/evaluate_digits.yaml --budgets 0.05 0.1 0.2 --out runs/mine/sweep
  mmrobust report runs/mine/evaluation runs/other/evaluation --out runs/comparison
"""


@contextmanager
def _argv(argv: Sequence[str]):
    """LightningCLI reads ``sys.argv``; passing ``args=`` as well makes it warn on every call."""
    saved = sys.argv
    sys.argv = ["mmrobust", *argv]
    try:
        yield
    finally:
        sys.argv = saved


def _lightning_cli(argv: Sequence[str]):
    from pytorch_lightning.cli import LightningCLI

    from . import _import_all

    _import_all()  # short class_path names resolve among loaded subclasses, as when mmrobust imported them eagerly

    if any(a in ("-h", "--help") for a in argv):  # Lightning's help below does not know mmrobust's own options
        print(USAGE[USAGE.index("options of"):USAGE.index("examples:")].rstrip() + "\n")
    command = " ".join(["mmrobust", *argv])
    name = config_name(argv)
    argv, out = pop_option(argv, "out")
    argv, quick = pop_option(argv, "quick", flag=True)
    if quick:
        argv = quick_configs(argv)

    class MMRobustCLI(LightningCLI):
        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand]
            if out is not None:
                move_run(config, out)
            if config.get("ckpt_path") == "best" and self.subcommand != "fit":
                config["ckpt_path"] = str(best_checkpoint(checkpoint_root(config)))

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
            report_dir = Path(trainer.log_dir or trainer.default_root_dir) / f"report_{stage}"
            report = Report(f"mmrobust {stage}: {type(self.model).__name__}", report_dir, name=name)
            report.section("Logged metrics")
            report.table("Metrics", [{"metric": k, "value": v} for k, v in sorted(metrics.items())])
            config = self.config.get(self.subcommand, {}) if self.subcommand else {}
            report.settings({"command": command, "seed": config.get("seed_everything"),
                             "checkpoint": config.get("ckpt_path"), **attack_settings(trainer, self.model)})
            path = report.write()
            print(f"report written to {path}")

    with _argv(argv):
        return MMRobustCLI(seed_everything_default=0, save_config_kwargs={"overwrite": True},
                           auto_configure_optimizers=True)


def _evaluate(argv: Sequence[str]) -> Path:
    """mmrobust evaluate: attack a trained model (checkpoint) on a datamodule's test or validation split with
    a list of attacks (worst case per example) and write a report; with --budgets, at every budget (table,
    accuracy-vs-budget plot, minimal perturbations of FMN/FAB)."""
    import torch
    from jsonargparse import ActionConfigFile, ArgumentParser
    from pytorch_lightning import LightningDataModule

    from . import _import_all
    from .attacks.base import Attack
    from .checkpoints import load_weights
    from .reporting import Report

    _import_all()

    parser = ArgumentParser(prog="mmrobust evaluate", description=_evaluate.__doc__,
                            formatter_class=_help_formatter(),
                            epilog="--quick adds the recipe's preset <config>.quick.yaml after --config (the first "
                                   "test batch only). Example: mmrobust evaluate --config "
                                   "recipes/image/evaluate_digits_sweep.yaml --budgets 0.05 0.1 0.2 --out runs/sweep")
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_subclass_arguments(torch.nn.Module, "model", help="the network: class_path (any torch.nn.Module, "
                                  "e.g. mmrobust.image.SmallCNN) and init_args")
    parser.add_argument("--checkpoint", type=Optional[str], default=None,
                        help="weights (Lightning .ckpt or state_dict .pt), loaded with weights_only=True; or a "
                             "fit run's directory (its --out): the best checkpoint it recorded")
    parser.add_subclass_arguments(LightningDataModule, "data", help="the datamodule: class_path and init_args")
    for key, title in (("model", "the model"), ("data", "the data")):
        if key in getattr(parser, "groups", {}):
            parser.groups[key].title = title
    parser.add_argument("--attacks", type=List[Attack], help="attacks to run (worst case per example)")
    parser.add_argument("--budgets", type=Optional[List[Union[int, float]]], default=None,
                        help="budgets of a sweep, in the attacks' threat-model unit: eps (norm balls), dB "
                             "(SNRBall, PeakDBBall), an edge count (int) or fraction (float) for EdgeFlips; "
                             "e.g. --budgets 0.05 0.1 0.2. Default: each attack's own budget only")
    parser.add_argument("--name", type=Optional[str], default=None,
                        help="the run's name: its column label in `mmrobust report` (default: the --config file's "
                             "name; runs with the same name are labelled by their directories)")
    parser.add_argument("--split", type=str, default="test", choices=["test", "val"],
                        help="which dataloader to attack")
    parser.add_argument("--max_batches", type=Optional[int], default=None, help="attack only the first batches")
    parser.add_argument("--seed", type=int, default=0, help="global seed (attacks keep their own seed)")
    parser.add_argument("--out", type=str, default="runs/evaluate",
                        help="directory for report.md, report.html and results.json")
    argv, quick = pop_option(argv, "quick", flag=True)
    argv = list_option(argv, "budgets")
    cfg = parser.parse_args(quick_configs(argv) if quick else list(argv))
    # jsonargparse >= 4.49 names it `instantiate` (`instantiate_classes` warns, and goes in 5.0)
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    init = instantiate(cfg)
    torch.manual_seed(cfg.seed)
    model = init.model
    checkpoint = cfg.checkpoint
    if checkpoint and not Path(checkpoint).exists():
        parser.error(f"--checkpoint: {checkpoint} does not exist; give a checkpoint file (.ckpt, .pt) or the --out "
                     f"directory of a finished `mmrobust fit` run{_fit_runs_near(checkpoint)}")
    if checkpoint and Path(checkpoint).is_dir():
        try:
            checkpoint = str(best_checkpoint(checkpoint, option="--checkpoint"))
        except FileNotFoundError as error:
            parser.error(f"--checkpoint: {error}")
    if checkpoint:
        load_weights(model, checkpoint)
    data = init.data
    data.prepare_data()
    data.setup("test" if cfg.split == "test" else "validate")
    loader = data.test_dataloader() if cfg.split == "test" else data.val_dataloader()

    from .budget_sweep import attack_with_budget, check_budgets, sweep
    from .evaluation import evaluate

    if cfg.budgets:  # every budget fits every attack before any is run
        try:
            check_budgets(cfg.budgets)
            for i, attack in enumerate(init.attacks):
                for b in cfg.budgets:
                    attack_with_budget(attack, b, f"{i}: {type(attack).__name__}")
        except (TypeError, ValueError) as error:
            parser.error(f"--budgets: {error}")
    from .reporting.checks import add_checks_section
    from .reporting.robustness import accuracy_section, sweep_sections

    name = cfg.name or config_name(argv)  # the column label in `mmrobust report`
    report = Report(f"Robustness of {type(model).__name__}", cfg.out, name=name)
    if cfg.budgets:
        result = sweep(model, loader, init.attacks, cfg.budgets, max_batches=cfg.max_batches, progress=True)
        add_checks_section(report, result.checks)
        sweep_sections(report, result, cfg.split)
    else:
        result = evaluate(model, loader, init.attacks, max_batches=cfg.max_batches, progress=True)
        add_checks_section(report, result.get("checks"))
        accuracy_section(report, result, cfg.split)
    checks = result.checks if cfg.budgets else result.get("checks")
    report.settings({"name": name, "model": cfg.model.class_path, "checkpoint": checkpoint,
                     "data": cfg.data.class_path, "split": cfg.split, "seed": cfg.seed,
                     "max_batches": cfg.max_batches,
                     **{f"attack[{i}]": describe_attack(a) for i, a in enumerate(init.attacks)},
                     **({"budgets": list(cfg.budgets), "budget unit": result.budget_name} if cfg.budgets else {}),
                     # kept in results.json, so `mmrobust report` shows every run's flags side by side
                     "checks fired": "not run" if checks is None else
                     ", ".join(c["name"] for c in checks if c.get("fired")) or "none"})
    path = report.write()
    print(Path(path).read_text())
    return path


def _help_formatter():
    """jsonargparse's help without the list of every ``torch.nn.Module`` subclass and without types that
    read as ``<function <lambda>>``."""
    import re

    from jsonargparse import DefaultHelpFormatter

    class Formatter(DefaultHelpFormatter):
        def _get_help_string(self, action) -> str:
            text = super()._get_help_string(action)
            if any(o in ("--model", "--data") for o in action.option_strings):
                text = re.sub(r", known subclasses: [^)]*", "", text)
            return text

        def _get_type_str(self, action):
            t = super()._get_type_str(action)
            return None if t is not None and "<function" in t else t

    return Formatter


def _report(argv: Sequence[str]) -> Path:
    from .reporting import compare_runs

    parser = argparse.ArgumentParser(prog="mmrobust report", description="Several runs' results.json side by side: "
                                     "one column per run (labelled by its --name, by default its config file's name, or by "
                                     "its directory when names collide), one row per metric and budget, every run's "
                                     "settings")
    parser.add_argument("runs", nargs="+", help="run directories containing results.json (the --out of "
                        "`mmrobust evaluate`, or a report_test/report_validate folder of `mmrobust test`)")
    parser.add_argument("--out", default="runs/comparison",
                        help="directory for report.md, report.html and results.json (default runs/comparison)")
    parser.add_argument("--title", default="Comparison of runs", help="the report's title")
    args = parser.parse_args(list(argv))
    for run in args.runs:
        if not (Path(run) / "results.json").is_file():
            parser.error(f"runs: {run} holds no results.json{_runs_below(run)}")
    path = compare_runs(args.runs, args.out, args.title)
    print(Path(path).read_text())
    return path


def _fit_runs_near(path: str) -> str:
    """Fit runs (folders holding .ckpt files) beside ``path``: what a user who mistyped a run's --out meant."""
    parent = Path(path).parent
    found = sorted(str(d) for d in parent.iterdir() if d.is_dir() and any(d.rglob("*.ckpt"))) \
        if parent.is_dir() else []
    if not found:
        return "" if Path(path).suffix else f" (e.g. `mmrobust fit --config CONFIG.yaml --out {path}` first)"
    return "; fit runs beside it: " + ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")


def _runs_below(folder: str) -> str:
    """The run directories under ``folder`` (what a user who passed a fit run's --out probably meant)."""
    if not Path(folder).is_dir():
        return " (no such directory)"
    found = sorted(str(p.parent) for p in Path(folder).glob("**/results.json"))
    if not found:
        return "; write one with `mmrobust evaluate --out DIR` (or `mmrobust test`) and pass DIR"
    return "; run directories below it: " + ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")


def _demo(argv: Sequence[str]) -> Path:
    from .demo import main as demo_main

    return demo_main(argv)


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
        from .errors import closest_choice

        commands = LIGHTNING_COMMANDS + ("evaluate", "report", "demo")
        guess = closest_choice(cmd, commands)
        hint = f" ({guess})" if guess else ""
        print(f"mmrobust: unknown command {cmd!r}{hint}; expected one of {', '.join(commands)}\n{USAGE}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
