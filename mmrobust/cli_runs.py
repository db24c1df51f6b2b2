"""Where a command-line run writes and what it reads back: ``--out DIR``, ``--quick``, ``--ckpt_path best``.

Kept apart from :mod:`mmrobust.cli` so the rules can be tested without starting Lightning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple


def pop_option(argv: Sequence[str], name: str, flag: bool = False) -> Tuple[List[str], Any]:
    """``argv`` without ``--name VALUE`` / ``--name=VALUE`` (or the bare ``--name`` when ``flag``), and the
    value (``True`` for a flag, ``None`` when absent; the last occurrence wins)."""
    rest, value, args = [], None, list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if flag and a == f"--{name}":
            value = True
        elif not flag and a == f"--{name}":
            if i + 1 >= len(args):
                raise SystemExit(f"mmrobust: --{name} needs a value (a directory)")
            value = args[i + 1]
            i += 1
        elif not flag and a.startswith(f"--{name}="):
            value = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return rest, value


def list_option(argv: Sequence[str], name: str) -> List[str]:
    """``argv`` with ``--name A B C`` (values up to the next ``--option``) written as ``--name=[A, B, C]``,
    the list syntax jsonargparse reads; ``--name=[...]`` and a single ``--name [A,B]`` pass unchanged.
    Values keep YAML types: ``3`` is an int (an edge count), ``0.1`` a float."""
    out, args, i = [], list(argv), 0
    while i < len(args):
        a = args[i]
        if a != f"--{name}":
            out.append(a)
            i += 1
            continue
        values = []
        i += 1
        while i < len(args) and not (args[i].startswith("--") or (args[i].startswith("-") and args[i][1:2].isalpha())):
            values.append(args[i])
            i += 1
        if not values:
            raise SystemExit(f"mmrobust: --{name} needs one or more values, e.g. --{name} 0.01 0.03 0.1")
        out.append(f"--{name}={values[0]}" if len(values) == 1 and values[0].startswith("[")
                   else f"--{name}=[{', '.join(values)}]")
    return out


def config_name(argv: Sequence[str]) -> Optional[str]:
    """A run's name from its first ``--config`` file (``recipes/image/digits_at.yaml`` -> ``digits_at``), the label
    ``mmrobust report`` gives its column unless another run has the same name; ``None`` without a config."""
    for i, a in enumerate(argv):
        path = argv[i + 1] if a == "--config" and i + 1 < len(argv) else a.split("=", 1)[1] \
            if a.startswith("--config=") else None
        if path:
            stem = Path(path).stem
            return stem[:-len(".quick")] if stem.endswith(".quick") else stem
    return None


def quick_configs(argv: Sequence[str]) -> List[str]:
    """For ``--quick``: ``argv`` with ``--config X.quick.yaml`` added after every ``--config X.yaml`` that has
    such a preset beside it; an error when none of the configs has one."""
    out, added, args, i = [], 0, list(argv), 0
    while i < len(args):
        a, path = args[i], None
        out.append(a)
        if a == "--config" and i + 1 < len(args):
            path = args[i + 1]
            out.append(path)
            i += 1
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
        quick = Path(path).with_suffix(".quick.yaml") if path else None
        if quick is not None and quick.is_file():
            out += ["--config", str(quick)]
            added += 1
        i += 1
    if not added:
        raise SystemExit("mmrobust: --quick needs a recipe config with a quick preset beside it "
                         "(recipes/<...>/<name>.quick.yaml); none of the --config files has one")
    return out


def moved_path(path: Optional[str], old_root: Optional[str], new_root: str) -> Optional[str]:
    """``path`` moved from ``old_root`` to ``new_root`` (``runs/a/checkpoints`` -> ``DIR/checkpoints``);
    paths outside ``old_root`` keep their last component under ``new_root``."""
    if path is None:
        return None
    p = Path(path)
    if old_root is not None:
        try:
            return str(Path(new_root) / p.relative_to(old_root))
        except ValueError:
            pass
    return str(Path(new_root) / p.name)


def move_run(config: Any, out: str) -> None:
    """Point a LightningCLI subcommand config at ``out``: ``trainer.default_root_dir`` and every callback's
    ``dirpath`` (ModelCheckpoint), logger ``save_dir``."""
    trainer = config["trainer"]
    old_root = trainer.get("default_root_dir")
    trainer["default_root_dir"] = out
    for cb in trainer.get("callbacks") or []:
        init = cb.get("init_args") if hasattr(cb, "get") else None
        if init is not None and init.get("dirpath") is not None:
            init["dirpath"] = moved_path(init["dirpath"], old_root, out)
    loggers = trainer.get("logger")
    for lg in loggers if isinstance(loggers, list) else [loggers]:
        init = lg.get("init_args") if hasattr(lg, "get") else None
        if init is not None and init.get("save_dir") is not None:
            init["save_dir"] = moved_path(init["save_dir"], old_root, out)


def best_checkpoint(directory: str, option: str = "--ckpt_path") -> Path:
    """The best checkpoint a finished ``fit`` run recorded under ``directory``: read from the newest
    checkpoint's ``ModelCheckpoint`` state (``best_model_path``), as ``trainer.test(ckpt_path="best")``
    reads it inside the fitting process. ``option``: the command-line option the errors tell to use instead."""
    from .checkpoints import load_checkpoint

    root = Path(directory)
    ckpts = sorted(root.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not ckpts:
        raise FileNotFoundError(
            f"no checkpoint under {str(root)!r}: run `mmrobust fit` with the same --config/--out first, "
            f"or pass {option} PATH/TO/FILE.ckpt")
    state = load_checkpoint(ckpts[-1]).get("callbacks", {})
    for key, entry in state.items():
        best = entry.get("best_model_path") if isinstance(entry, dict) else None
        if key.startswith("ModelCheckpoint") and best:
            for candidate in (Path(best), root / Path(best).name, ckpts[-1].parent / Path(best).name):
                if candidate.is_file():
                    return candidate
    raise FileNotFoundError(
        f"the checkpoints under {str(root)!r} record no best model (ModelCheckpoint without `monitor`?); "
        f"pass {option} with a file, e.g. {ckpts[-1]}")


def checkpoint_root(config: Any) -> str:
    """Where a subcommand config's checkpoints are: the ModelCheckpoint ``dirpath`` or the root dir."""
    trainer = config["trainer"]
    for cb in trainer.get("callbacks") or []:
        if str(cb.get("class_path", "")).endswith("ModelCheckpoint"):
            dirpath = (cb.get("init_args") or {}).get("dirpath")
            if dirpath:
                return dirpath
    return trainer.get("default_root_dir") or "."


def attack_settings(trainer: Any, module: Any) -> Dict[str, str]:
    """``{where: attack description}`` for every attack a run used (module and callbacks), for reports."""
    from .attacks.base import Attack

    found: Dict[str, str] = {}

    def add(where: str, obj: Any) -> None:
        if isinstance(obj, Attack):
            found[where] = describe_attack(obj)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                add(f"{where}[{k}]", v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                add(f"{where}[{i}]", v)

    add(f"{type(module).__name__}.attack", getattr(module, "attack", None))
    for cb in trainer.callbacks:
        for attr in ("attack", "attacks"):
            add(f"{type(cb).__name__}.{attr}", getattr(cb, attr, None))
    return found


def describe_attack(attack: Any) -> str:
    """``attack.describe()`` with the iteration settings that change its strength."""
    text = attack.describe()
    extras = [f"{k}={getattr(attack, k)}" for k in ("steps", "restarts", "epochs", "queries", "seed")
              if isinstance(getattr(attack, k, None), int) and not isinstance(getattr(attack, k), bool)
              and f"{k}=" not in text]
    return text + (f", {', '.join(extras)}" if extras else "")
