"""Start-up time of the ``mmrobust`` command and of ``import mmrobust``, before/after a change.

``python benchmarks/cli_startup.py TREE [TREE ...] [--rounds 5] [--out FILE.md]``: every command is run
``--rounds`` times per source tree, interleaved (tree 1, tree 2, tree 1, ...; PYTHONPATH=<tree>, one thread), and
the medians of the wall times are written as a markdown table. A tree is a checkout's root, e.g. ``git
archive e3e1558 | tar -x -C /tmp/before`` and the worktree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "mmrobust --help": ["-c", "import sys; from mmrobust.cli import main; sys.exit(main(['--help']))"],
    "mmrobust report --help": ["-c", "import sys; from mmrobust.cli import main; sys.exit(main(['report', '--help']))"],
    "mmrobust demo --help": ["-c", "import sys; from mmrobust.cli import main; sys.exit(main(['demo', '--help']))"],
    "mmrobust evaluate --help": ["-c", "import sys; from mmrobust.cli import main; "
                                       "sys.exit(main(['evaluate', '--help']))"],
    "mmrobust fit --help": ["-c", "import sys; from mmrobust.cli import main; sys.exit(main(['fit', '--help']))"],
    "import mmrobust": ["-c", "import mmrobust"],
    "from mmrobust import PGD, LinfBall": ["-c", "from mmrobust import PGD, LinfBall"],
}


def run_once(tree: Path, args) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0,):
        raise SystemExit(f"{args} failed in {tree}:\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("trees", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    times = {(name, tree): [] for name in COMMANDS for tree in args.trees}
    for r in range(args.rounds):
        for name, command in COMMANDS.items():
            for tree in args.trees:
                times[name, tree].append(run_once(tree, command))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    header = "| command | " + " | ".join(f"{t} (median s)" for t in args.trees) + " |"
    lines = [header, "| --- |" + " ---: |" * len(args.trees)]
    for name in COMMANDS:
        lines.append(f"| `{name}` | " + " | ".join(f"{statistics.median(times[name, t]):.2f}" for t in args.trees)
                     + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
