"""Defences table: clean and robust accuracy of robust GNNs under PRBCD run *through* the defence (adaptive,
Mujkanovic et al. 2022) and under PRBCD transferred from a plain GCN, at 5/10/25% of the edges (evasion, test
nodes), with training time and the attack's time and peak memory per model.

    nice python benchmarks/graph_defenses.py --data csbm        # or Cora (LCC, 10/10/80 split)

PRBCD with the library's defaults (``PRBCD(EdgeFlips(b), adapter=GraphAdapter(mask="test"), seed=0)``); every
model trained 200 epochs (Adam 0.01, wd 5e-4) on the clean graph, seed 0.  "GCN PRBCD-AT" is the same GCN
trained 200 clean epochs and then 50 epochs of transductive adversarial training (Xu et al. 2019, Eq. 7): before
every step PRBCD-10 flips 10% of the edges against the training nodes' loss.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from graph_common import planetoid_lcc


def models(f: int, c: int):
    from mmrobust.graph import GCN, GCNSVD, RGCN, GNNGuard, JaccardGCN, SoftMedianGDC
    return {"GCN": lambda: GCN(f, c, hidden=64), "JaccardGCN": lambda: JaccardGCN(f, c, hidden=64),
            "GCN-SVD": lambda: GCNSVD(f, c, hidden=64), "RGCN": lambda: RGCN(f, c),
            "GNNGuard": lambda: GNNGuard(f, c), "Soft-Median GDC": lambda: SoftMedianGDC(f, c),
            "GCN PRBCD-AT": lambda: GCN(f, c, hidden=64)}


def adversarial_training():
    """``train_node_classifier`` arguments of the PRBCD-AT row (see the module docstring)."""
    from mmrobust.adapters import GraphAdapter
    from mmrobust.attacks import PRBCD
    from mmrobust.threats import EdgeFlips
    attack = PRBCD(EdgeFlips(0.1), adapter=GraphAdapter(mask="train"), epochs=10, seed=0, progress=False)
    return {"epochs": 250, "clean_epochs": 200, "attack": attack}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="csbm")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.1, 0.25])
    ap.add_argument("--only", nargs="+", default=None, help="subset of model names")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from mmrobust.adapters import GraphAdapter
    from mmrobust.attacks import PRBCD
    from mmrobust.graph.training import node_accuracy, train_node_classifier
    from mmrobust.threats import EdgeFlips

    if args.data == "csbm":
        from mmrobust.graph.data import sbm_graph
        data = sbm_graph(600, 3, p_in=0.03, p_out=0.004, binary_features=32, train_fraction=0.1, val_fraction=0.1,
                         seed=0)
    else:
        data = planetoid_lcc(args.data)
    f, c = data.num_features, int(data.y.max()) + 1
    trained = {}
    for name, make in models(f, c).items():
        if args.only and name not in args.only:
            continue
        torch.manual_seed(0)
        model = make()
        t = time.perf_counter()
        train_node_classifier(model, data, **(adversarial_training() if "AT" in name else {"epochs": 200}))
        trained[name] = (model.eval(), time.perf_counter() - t)
    attack = {b: PRBCD(EdgeFlips(b), adapter=GraphAdapter(mask="test"), seed=0, progress=False) for b in args.budgets}
    transfer = {b: attack[b].reseed()(trained["GCN"][0], data).batch for b in args.budgets} if "GCN" in trained else {}
    cols = " | ".join(f"{b:.0%} adaptive | {b:.0%} transfer" for b in args.budgets)
    print(f"{args.data}: {data.num_nodes} nodes, {data.edge_index.shape[1] // 2} edges")
    print(f"| model | clean | {cols} | train s | attack s (adaptive, 10%) | process peak RSS so far (MB) |")
    print("|---|---|" + "---|" * (2 * len(args.budgets)) + "---|---|---|", flush=True)
    for name, (model, train_s) in trained.items():
        row, att_s = [], float("nan")
        for b in args.budgets:
            t = time.perf_counter()
            adv = attack[b].reseed()(model, data).batch  # every model sees the same random stream
            if abs(b - 0.1) < 1e-9:
                att_s = time.perf_counter() - t
            row.append(f"{100 * node_accuracy(model, adv):.1f}")
            row.append(f"{100 * node_accuracy(model, transfer[b]):.1f}" if transfer else "-")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"| {name} | {100 * node_accuracy(model, data):.1f} | {' | '.join(row)} | {train_s:.0f} | {att_s:.0f} | "
              f"{rss:.0f} |", flush=True)


if __name__ == "__main__":
    main()
