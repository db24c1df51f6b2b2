"""PRBCD with the library's defaults side by side with PyG's ``torch_geometric.contrib.nn.PRBCDAttack`` on
Cora and CiteSeer, and scaling.

Same trained 2-layer GCN, same test nodes, same budgets (fractions of the undirected edges, PyG's
convention ``int(fraction * num_edges / 2)``); each attack with its own defaults (both 125 epochs, 100 of them
resampling, probability-margin loss; PyG's block 250k, ours 100k).  Per budget the runs alternate PyG, ours,
PyG, ours (``--repeats`` rounds, seed + round), so load on a shared machine hits both alike; medians are
reported.  Every attack runs in a forked child process so that its peak memory (VmHWM above the child's
starting RSS) is measured alone.

    python benchmarks/graph_prbcd.py                      # strength + speed table (Cora, CiteSeer)
    python benchmarks/graph_prbcd.py --scaling            # time/memory vs edges and block size

The graphs are read from ``--data`` (a directory with ``Cora/raw`` and ``CiteSeer/raw``; default
../shared/data/planetoid), copied to a writable temporary directory first; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "planetoid"


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def _child(fn, args, queue, threads):
    torch.set_num_threads(threads)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM)
    except OSError:
        pass
    start_rss = _status("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    queue.put((out, seconds, max(0, _status("VmHWM") - start_rss), cpu))


def measured(fn, *args, threads=2):
    """``fn(*args)`` in a forked process: (result, wall seconds, peak extra memory in bytes, CPU seconds).

    CPU seconds (user + system of the child) barely depend on how busy a shared machine is; wall seconds do."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn, args, q, threads))
    p.start()
    out = q.get()
    p.join()
    return out


# -- the shared victim ---------------------------------------------------------------------------------
STATE = {}


def setup(name: str, data_dir: Path, seed: int):
    from mmrobust.graph.data import load_planetoid
    from mmrobust.graph.models import GCN
    from mmrobust.graph.training import node_accuracy, train_node_classifier

    root = Path(tempfile.mkdtemp(prefix=f"mmrobust_{name.lower()}_"))
    data = load_planetoid(name, root, source=data_dir)
    torch.manual_seed(seed)
    model = GCN(data.num_features, int(data.y.max()) + 1, hidden=16, dropout=0.5)
    train_node_classifier(model, data, epochs=200, lr=0.01, weight_decay=5e-4)
    STATE.update(data=data, model=model.eval())
    return node_accuracy(model, data, "test")


def checked_flips(edge_index, budget: int) -> int:
    """Independent check of a returned graph against the clean one: symmetric, no self loops, no duplicate
    edges, and the number of flipped undirected pairs (symmetric difference) within ``budget``; returns it."""
    clean, n = STATE["data"].edge_index, STATE["data"].num_nodes

    def pairs(ei):
        keys = ei[0] * n + ei[1]
        assert keys.unique().numel() == keys.numel(), "duplicate edges"
        return set(keys.tolist())

    assert not bool((edge_index[0] == edge_index[1]).any()), "self loop"
    new = pairs(edge_index)
    assert new == set((edge_index[1] * n + edge_index[0]).tolist()), "not symmetric"
    flips = len(new ^ pairs(clean)) // 2
    assert flips <= budget, f"{flips} flips > budget {budget}"
    return flips


def test_accuracy(edge_index) -> float:
    data, model = STATE["data"], STATE["model"]
    with torch.no_grad():
        pred = model(data.x, edge_index).argmax(1)
    return (pred == data.y)[data.test_mask].float().mean().item()


def run_pyg(budget: int, block_size: int, seed: int):
    """PyG's PRBCDAttack with its defaults (125 epochs, 100 resampling, prob_margin, lr 1000, 20 samples)."""
    from torch_geometric.contrib.nn import PRBCDAttack

    data, model = STATE["data"], STATE["model"]
    torch.manual_seed(seed)
    attack = PRBCDAttack(model, block_size=block_size, log=False)
    idx = data.test_mask.nonzero().squeeze(1)
    edge_index, flipped = attack.attack(data.x, data.edge_index, data.y, budget=budget, idx_attack=idx)
    flips = checked_flips(edge_index, budget)
    assert flips == int(flipped.shape[1]), (flips, flipped.shape)
    return test_accuracy(edge_index), flips


def run_ours(fraction: float, block_size, seed: int):
    """Our PRBCD with the library's defaults (only the scored nodes, the seed and, for extra rows, the block size)."""
    from mmrobust.adapters.graph import GraphAdapter
    from mmrobust.attacks import PRBCD
    from mmrobust.threats.graph import EdgeFlips

    data, model = STATE["data"], STATE["model"]
    extra = {} if block_size is None else {"block_size": block_size}
    attack = PRBCD(EdgeFlips(fraction), adapter=GraphAdapter(mask="test"), seed=seed, **extra)
    result = attack(model, data)
    flips = checked_flips(result.batch.edge_index, int(fraction * data.edge_index.shape[1] / 2))
    assert flips == int(result.size["edges"].sum()), (flips, result.size)
    return test_accuracy(result.batch.edge_index), flips


def _median(values):
    return statistics.median(values)


def strength(args):
    from mmrobust.attacks import PRBCD

    defaults = {k: v for k, v in PRBCD.__init__.__kwdefaults__.items() if k in ("block_size", "epochs", "loss",
                                                                                  "eval_every", "final_samples")}
    print(f"ours: PRBCD with its defaults {defaults} (epochs_resampling 0.8 x epochs = 100); PyG: PRBCDAttack with "
          f"its defaults and block_size={args.block_size} (which it requires)")
    print(f"{args.threads} thread(s); per budget the runs interleave PyG, ours, PyG, ours ({args.repeats} rounds), so "
          "machine load hits both alike; accuracy, flips and seconds are medians over the rounds, memory the max; "
          "CPU seconds are the attack process's own time (robust to load), wall seconds include waiting for the CPU")
    names = ["PyG"] * (not args.skip_pyg) + ["ours"] + [f"ours {b // 1000}k" for b in args.our_block_size or []]
    runs, info = {}, {}
    # rounds outermost: after every round each (dataset, budget) has a measurement, and the table so far is printed
    for rnd in range(args.first_round, args.first_round + args.repeats):
        for dataset in args.datasets:
            clean = setup(dataset, Path(args.data), args.seed)
            data = STATE["data"]
            if dataset not in info:
                info[dataset] = clean
                print(f"\n{dataset}: {data.num_nodes} nodes, {data.edge_index.shape[1] // 2} undirected edges, GCN "
                      f"clean test accuracy {clean:.3f} ({int(data.test_mask.sum())} test nodes attacked)", flush=True)
            for frac in args.budgets:
                budget = int(frac * data.edge_index.shape[1] / 2)
                for name in names:
                    if name == "PyG":
                        out = measured(run_pyg, budget, args.block_size, args.seed + rnd, threads=args.threads)
                    else:
                        block = None if name == "ours" else int(name.split()[1][:-1]) * 1000
                        out = measured(run_ours, frac, block, args.seed + rnd, threads=args.threads)
                    runs.setdefault((dataset, frac, budget), {}).setdefault(name, []).append(out)
                print(f"{dataset} budget {frac:.0%} ({budget} flips) round {rnd + 1}: " + "; ".join(
                    f"{n} acc {r[-1][0][0]:.3f} flips {r[-1][0][1]} {r[-1][3]:.1f} CPU s {r[-1][1]:.1f} wall s "
                    f"{r[-1][2] / 2**20:.0f}MiB" for n, r in runs[(dataset, frac, budget)].items()), flush=True)
        table(runs, info, rnd + 1 - args.first_round)


def table(runs, info, rounds):
    print(f"\nafter {rounds} round(s):\n\n| dataset | budget | flips allowed | attack | acc after attack | flips used | "
          "CPU s | wall s | CPU time / PyG's | peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (dataset, frac, budget), by_name in runs.items():
        summary = {n: dict(acc=_median([x[0][0] for x in r]), flips=_median([x[0][1] for x in r]),
                           wall=_median([x[1] for x in r]), mem=max(x[2] for x in r),
                           cpu=_median([x[3] for x in r])) for n, r in by_name.items()}
        pyg = summary.get("PyG")
        for name, m in summary.items():
            ratio = f"{m['cpu'] / pyg['cpu']:.2f}" if pyg else "-"
            print(f"| {dataset} (clean {info[dataset]:.3f}) | {frac:.0%} | {budget} | {name} | {m['acc']:.3f} | "
                  f"{m['flips']:g} | {m['cpu']:.1f} | {m['wall']:.1f} | {ratio} | {m['mem'] / 2**20:.0f} |", flush=True)


def run_scaling_point(n: int, degree: float, block_size: int, epochs: int, seed: int):
    from torch_geometric.data import Data
    from torch_geometric.utils import remove_self_loops, to_undirected

    from mmrobust.adapters.graph import GraphAdapter
    from mmrobust.attacks import PRBCD
    from mmrobust.graph.models import GCN
    from mmrobust.threats.graph import EdgeFlips

    torch.manual_seed(seed)
    # sparse G(n, m) sampling: memory ~ edges (PyG's erdos_renyi_graph materialises n^2 candidates)
    pairs = torch.randint(0, n, (2, int(n * degree / 2)))
    edge_index = to_undirected(remove_self_loops(pairs)[0], num_nodes=n)
    data = Data(x=torch.randn(n, 32), edge_index=edge_index, y=torch.randint(0, 4, (n,)))
    model = GCN(32, 4, hidden=16).eval()
    attack = PRBCD(EdgeFlips(0.05), block_size=block_size, epochs=epochs, epochs_resampling=epochs // 2,
                   final_samples=2, adapter=GraphAdapter(mask=None), seed=seed)
    t0 = time.perf_counter()
    attack(model, data)
    return int(edge_index.shape[1] // 2), time.perf_counter() - t0


def scaling(args):
    import torch_geometric.nn  # noqa: F401  (imported before forking: children time the attack only)

    import mmrobust.attacks  # noqa: F401
    import mmrobust.graph.models  # noqa: F401
    print(f"PRBCD scaling on random G(n, m) graphs (average degree {args.degree}), {args.scaling_epochs} epochs, "
          f"{args.threads} threads")
    print("(seconds: the whole attack incl. 2 final samples, divided by the epochs; peak: extra memory)")
    print("\n| nodes | undirected edges | block size | s per epoch | peak MiB |")
    print("|---|---|---|---|---|")
    for n in args.nodes:
        for b in args.blocks:
            (edges, s), _, mem, _ = measured(run_scaling_point, n, args.degree, b, args.scaling_epochs, args.seed,
                                          threads=args.threads)
            print(f"| {n} | {edges} | {b} | {s / args.scaling_epochs:.3f} | {mem / 2**20:.0f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.01, 0.05, 0.10, 0.25])
    ap.add_argument("--datasets", nargs="+", default=["Cora", "CiteSeer"])
    ap.add_argument("--block-size", type=int, default=250_000, help="PyG's block size (it has no default)")
    ap.add_argument("--our-block-size", type=int, nargs="+", default=None,
                    help="extra rows: our PRBCD with these block sizes (the first row always runs the defaults)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (PyG, ours) per budget")
    ap.add_argument("--first-round", type=int, default=0,
                    help="start at this round (round r seeds both attacks with seed + r; the victim keeps --seed), "
                         "to add rounds to an earlier run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-pyg", action="store_true")
    ap.add_argument("--scaling", action="store_true")
    ap.add_argument("--nodes", type=int, nargs="+", default=[2_000, 8_000, 32_000])
    ap.add_argument("--blocks", type=int, nargs="+", default=[50_000, 250_000, 1_000_000])
    ap.add_argument("--degree", type=float, default=8.0)
    ap.add_argument("--scaling-epochs", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.scaling:
        scaling(args)
    else:
        strength(args)


if __name__ == "__main__":
    main()
