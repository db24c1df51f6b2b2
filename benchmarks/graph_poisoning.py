"""Poisoning table: accuracy of a GCN *trained on* the poisoned graph, MetaPRBCD (meta-gradients) and transfer
poisoning (evasion PRBCD on a clean surrogate), beside the public Metattack (Meta-Self) anchor of Jin et al.
2020 (Pro-GNN, Table 2: GCN on the Cora LCC, 10/10/80 split).

    nice python benchmarks/graph_poisoning.py --data Cora --budgets 0.05 0.1 0.15 0.2 0.25

Library defaults for both attacks; victim: GCN hidden 16, 200 epochs, mean ± std over 3 training seeds.
Writes nothing; paste the printed table into benchmarks/results/graph_poisoning.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from graph_common import gcn_accuracy, mean_std, planetoid_lcc

ANCHOR = {"Cora": {0.0: 83.0, 0.05: 76.4, 0.1: 70.9, 0.15: 65.1, 0.2: 59.6, 0.25: 47.5}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="Cora")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.2, 0.25])
    ap.add_argument("--methods", nargs="+", default=["meta", "transfer"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=3, help="victim training seeds per row")
    ap.add_argument("--meta-epochs", type=int, default=None, help="MetaPRBCD epochs (default: the library's)")
    ap.add_argument("--inner-steps", type=int, default=None, help="MetaPRBCD unrolled steps (default: library's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from mmrobust.attacks.poisoning import poison
    from mmrobust.threats.graph import EdgeFlips

    if args.data == "csbm":   # generated in code: contextual SBM, 600 nodes, 3 classes, 32 binary features, 10% train
        from mmrobust.graph.data import sbm_graph
        data = sbm_graph(600, 3, p_in=0.03, p_out=0.004, binary_features=32, train_fraction=0.1, val_fraction=0.1,
                         seed=0)
    else:
        data = planetoid_lcc(args.data)
    anchor = ANCHOR.get(args.data, {})
    print(f"{args.data}: {data.num_nodes} nodes, {data.edge_index.shape[1] // 2} edges, "
          f"train/val/test {int(data.train_mask.sum())}/{int(data.val_mask.sum())}/{int(data.test_mask.sum())}")
    seeds = tuple(range(args.seeds))
    clean = gcn_accuracy(data, seeds)
    meta_kw = {}
    if args.meta_epochs:
        meta_kw.update(epochs=args.meta_epochs, epochs_resampling=int(0.75 * args.meta_epochs))
    if args.inner_steps:
        meta_kw["inner_steps"] = args.inner_steps
    print(f"MetaPRBCD settings: {meta_kw or 'library defaults'}; victims: {len(seeds)} seeds")
    print(f"| budget | flips | method | GCN accuracy (%) | Metattack anchor | attack s |")
    print(f"|---|---|---|---|---|---|")
    print(f"| 0% | 0 | clean | {mean_std(clean)} | {anchor.get(0.0, '-')} | - |", flush=True)
    for b in args.budgets:
        for method in args.methods:
            t = time.perf_counter()
            result = poison(data, EdgeFlips(b), method=method, seed=0, **(meta_kw if method == "meta" else {}))
            secs = time.perf_counter() - t
            acc = gcn_accuracy(result.data, seeds)
            print(f"| {b:.0%} | {result.flipped_edges.shape[1]} | {method} | {mean_std(acc)} | {anchor.get(b, '-')} | "
                  f"{secs:.0f} |", flush=True)


if __name__ == "__main__":
    main()
