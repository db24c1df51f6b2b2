"""Peak memory and time of meta-gradient poisoning (MetaPRBCD) vs graph size, beside the dense N x N footprint.

    nice python benchmarks/graph_poisoning_memory.py --nodes 1000 5000 20000 50000

Every size runs in its own subprocess (a fresh Python, so ``ru_maxrss`` is that size's peak) on a contextual
SBM generated sparsely in code (expected degree 4 as Cora's, 80 % of it inside the class; 7 classes; 32
class-dependent binary features; 10 % train / 10 % val), poisoned at 5 % of its edges by
``MetaPRBCD(EdgeFlips(0.05), epochs=E, epochs_resampling=E - 1, final_samples=1, clean_epochs=50)`` with the
library's unrolled training (50 steps) and block (20k pairs).  Memory does not grow with ``epochs`` (every epoch
builds and frees the same unrolled graph), so a few epochs measure the peak; time is reported per epoch
(one meta-gradient: the unrolled training forward and its backward) and in total for the epochs run.

Reported per size: peak RSS before the attack (imports, a warm-up attack on a 200-node graph, the data), peak RSS of the whole process, their
difference (the attack's increment), seconds per epoch (attack time less the clean surrogate's training,
divided by the epochs: an upper estimate, it includes the final scoring pass), and the dense approach's lower bound: a dense
``N x N`` float32 adjacency and its ``N x N`` meta-gradient, ``2 * 4 * N^2`` bytes (Metattack and DeepRobust hold
both, plus normalised copies and per-step activations, so the true dense footprint is larger).
``tracemalloc`` is not used: it sees Python's allocator only, not PyTorch's tensor memory; peak RSS covers both.
Writes nothing; paste the printed table into benchmarks/results/graph_poisoning_memory.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sparse_csbm(n: int, classes: int = 7, degree: float = 4.0, homophily: float = 0.8, features: int = 32,
                seed: int = 0):
    """A contextual SBM drawn in O(edges) memory (PyG's ``stochastic_blockmodel_graph`` builds an ``N x N``
    probability matrix): ``Binomial(pairs, p)`` edges per class pair at uniformly random endpoints, duplicates
    and self-loops dropped, made undirected."""
    from torch_geometric.data import Data
    from torch_geometric.utils import coalesce, to_undirected

    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    members = [torch.nonzero(y == c).flatten() for c in range(classes)]
    size = n / classes
    p_in = degree * homophily / size
    p_out = degree * (1 - homophily) / (n - size)
    rows, cols = [], []
    for a in range(classes):
        for b in range(a, classes):
            na, nb = len(members[a]), len(members[b])
            pairs = na * (na - 1) / 2 if a == b else na * nb
            m = int(torch.binomial(torch.tensor(float(pairs)), torch.tensor(p_in if a == b else p_out),
                                   generator=g))
            rows.append(members[a][torch.randint(na, (m,), generator=g)])
            cols.append(members[b][torch.randint(nb, (m,), generator=g)])
    ei = torch.stack([torch.cat(rows), torch.cat(cols)])
    ei = ei[:, ei[0] != ei[1]]
    ei = coalesce(to_undirected(ei, num_nodes=n), num_nodes=n)
    rates = torch.full((classes, features), 0.1)
    for c in range(classes):
        rates[c, c::classes] = 0.4
    x = (torch.rand(n, features, generator=g) < rates[y]).float()
    perm = torch.randperm(n, generator=g)
    masks = [torch.zeros(n, dtype=torch.bool) for _ in range(3)]
    masks[0][perm[:n // 10]] = True
    masks[1][perm[n // 10:n // 5]] = True
    masks[2][perm[n // 5:]] = True
    return Data(x=x, edge_index=ei, y=y, train_mask=masks[0], val_mask=masks[1], test_mask=masks[2])


def rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(n: int, epochs: int, budget: float) -> dict:
    from mmrobust.graph.poisoning import MetaPRBCD
    from mmrobust.threats.graph import EdgeFlips

    torch.set_num_threads(1)
    # warm-up on a tiny graph: lazy imports and first-call allocations (~0.6 GB) are not the attack's memory
    MetaPRBCD(EdgeFlips(budget), inner_steps=2, epochs=1, epochs_resampling=0, final_samples=1, clean_epochs=2,
              block_size=500)(sparse_csbm(200))
    data = sparse_csbm(n)
    before = rss_mib()
    attack = MetaPRBCD(EdgeFlips(budget), epochs=epochs, epochs_resampling=epochs - 1, final_samples=1,
                       clean_epochs=50, seed=0)
    t = time.perf_counter()
    result = attack(data)
    total = time.perf_counter() - t
    # the epochs' share: the clean surrogate's training is timed again on its own and subtracted
    from mmrobust.graph.poisoning import _train_clean

    t = time.perf_counter()
    _train_clean(attack.surrogate, data, attack.clean_epochs, 0)
    clean_s = time.perf_counter() - t
    flips = result.flipped_edges.shape[1]
    return dict(nodes=n, edges=data.edge_index.shape[1] // 2, budget=result.budget, flips=flips,
                rss_before=before, rss_peak=rss_mib(), total_s=total, clean_s=clean_s, epochs=epochs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000, 20000, 50000])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--budget", type=float, default=0.05)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per size before it is given up")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.epochs, args.budget)))
        return
    print(f"MetaPRBCD at {args.budget:.0%} of the edges, {args.epochs} epochs, defaults otherwise; one subprocess "
          f"per size, 1 thread")
    print("| nodes | edges | flips / budget | RSS before attack (MiB) | peak RSS (MiB) | attack increment (MiB) | "
          "s per epoch | attack s | dense 2·4·N² lower bound (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for n in args.nodes:
        dense = 8 * n * n / 2 ** 20
        cmd = [sys.executable, __file__, "--child", str(n), "--epochs", str(args.epochs), "--budget",
               str(args.budget)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=True)
        except subprocess.TimeoutExpired:
            print(f"| {n:,} | | | | | | over {args.timeout} s | | {dense:,.0f} |", flush=True)
            break
        except subprocess.CalledProcessError as err:
            print(f"| {n:,} | failed: {err.stderr.strip().splitlines()[-1]} | | | | | | | {dense:,.0f} |", flush=True)
            break
        r = json.loads(out.stdout.strip().splitlines()[-1])
        per_epoch = (r["total_s"] - r["clean_s"]) / r["epochs"]   # includes the final no-grad scoring pass
        print(f"| {n:,} | {r['edges']:,} | {r['flips']} / {r['budget']} | {r['rss_before']:,.0f} | "
              f"{r['rss_peak']:,.0f} | {r['rss_peak'] - r['rss_before']:,.0f} | {per_epoch:.1f} | "
              f"{r['total_s']:.0f} | {dense:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
