"""Defences table: clean and robust accuracy of robust GNNs under PRBCD run *through* the defence (adaptive,
Mujkanovic et al. 2022) and under PRBCD transferred from a plain GCN, at 5/10/25% of the edges (evasion, test
nodes), with each model's training time, attack time and the attack's peak memory.

    nice python benchmarks/graph_defenses.py --data csbm        # or --data cora (LCC, 10/10/80 split)
    nice python benchmarks/graph_defenses.py --data cora --only "Soft-Median GDC" --transfer-only "Soft-Median GDC"

PRBCD with the library's defaults (``PRBCD(EdgeFlips(b), adapter=GraphAdapter(mask="test"), seed=0)``), reseeded
before every attack so that every model sees the same random stream; every model trained 200 epochs (Adam 0.01,
wd 5e-4) on the clean graph, seed 0.  "GCN PRBCD-AT" is the same GCN trained 200 clean epochs and then 50 epochs
of transductive adversarial training (Xu et al. 2019, Eq. 7): before every step PRBCD-10 flips 10% of the edges
against the training nodes' loss.  Every attacked graph goes through ``run_checked`` (the budget re-counted from
the returned edge set by ``threats/verify.py``), and the user's graph is checked unchanged after every attack.
One line per (model, budget) as it finishes, then the table.
"""

from __future__ import annotations

import argparse
import time

import torch

from graph_common import PeakRSS, planetoid_lcc


def models(f: int, c: int):
    from mmrobust.graph import GCN, GCNSVD, RGCN, GNNGuard, JaccardGCN, SoftMedianGDC
    return {"GCN": lambda: GCN(f, c, hidden=64), "JaccardGCN": lambda: JaccardGCN(f, c, hidden=64),
            "GCN-SVD": lambda: GCNSVD(f, c, hidden=64), "RGCN": lambda: RGCN(f, c),
            "GNNGuard": lambda: GNNGuard(f, c), "Soft-Median GDC": lambda: SoftMedianGDC(f, c),
            "GCN PRBCD-AT": lambda: GCN(f, c, hidden=64)}


ORDER = ["GCN", "RGCN", "JaccardGCN", "GCN-SVD", "GCN PRBCD-AT", "GNNGuard", "Soft-Median GDC"]  # cheap first


def adversarial_training():
    """``train_node_classifier`` arguments of the PRBCD-AT row (see the module docstring)."""
    from mmrobust.adapters import GraphAdapter
    from mmrobust.attacks import PRBCD
    from mmrobust.threats import EdgeFlips
    attack = PRBCD(EdgeFlips(0.1), adapter=GraphAdapter(mask="train"), epochs=10, seed=0, progress=False)
    return {"epochs": 250, "clean_epochs": 200, "attack": attack}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="csbm", help="csbm (generated in code), cora or citeseer")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.1, 0.25], help="run in this order")
    ap.add_argument("--only", nargs="+", default=None, help="subset of model names, run in this order (GCN, "
                    "the transfer source, always first)")
    ap.add_argument("--transfer-only", nargs="+", default=[], help="models whose adaptive attack is skipped "
                    "(too expensive here: Soft-Median GDC on Cora); they get the transfer column only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--nodes", type=int, default=600, help="csbm only: graph size (600 in the results)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from mmrobust.adapters import GraphAdapter
    from mmrobust.attacks import PRBCD
    from mmrobust.graph.training import node_accuracy, train_node_classifier
    from mmrobust.threats import EdgeFlips
    from mmrobust.threats.verify import run_checked

    if args.data == "csbm":
        from mmrobust.graph.data import sbm_graph
        data = sbm_graph(args.nodes, 3, p_in=0.03, p_out=0.004, binary_features=32, train_fraction=0.1,
                         val_fraction=0.1,
                         seed=0)
    else:
        data = planetoid_lcc(args.data)
    saved = (data.edge_index.clone(), data.x.clone())
    print(f"{args.data}: {data.num_nodes} nodes, {data.edge_index.shape[1] // 2} edges, "
          f"{int(data.test_mask.sum())} test nodes", flush=True)
    f, c = data.num_features, int(data.y.max()) + 1
    attack = {b: PRBCD(EdgeFlips(b), adapter=GraphAdapter(mask="test"), seed=0, progress=False) for b in args.budgets}

    def attacked(b, model):
        adv = run_checked(attack[b].reseed(), model, data).batch   # raises if outside EdgeFlips(b)
        assert torch.equal(data.edge_index, saved[0]) and torch.equal(data.x, saved[1]), "user graph changed"
        return adv

    names = ["GCN"] + [n for n in (args.only or ORDER) if n != "GCN"]   # --only: in that order, after GCN
    transfer, rows = {}, []
    for name in names:
        torch.manual_seed(0)
        model = models(f, c)[name]()
        t, cpu = time.perf_counter(), time.process_time()
        train_node_classifier(model, data, **(adversarial_training() if "AT" in name else {"epochs": 200}))
        train_s, train_cpu = time.perf_counter() - t, time.process_time() - cpu
        model.eval()
        clean = node_accuracy(model, data)
        res, att_s, att_cpu, att_mb = {}, [], [], 0.0
        for b in args.budgets:
            if name in args.transfer_only:
                res[b] = (None, node_accuracy(model, transfer[b]))
                print(f"  {name} {b:.0%}: adaptive not run, transfer {100 * res[b][1]:.1f}", flush=True)
                continue
            with PeakRSS() as mem:
                t, cpu = time.perf_counter(), time.process_time()
                adv = attacked(b, model)
                att_s.append(time.perf_counter() - t)
                att_cpu.append(time.process_time() - cpu)
            att_mb = max(att_mb, mem.mb)
            if name == "GCN":
                transfer[b] = adv
            res[b] = (node_accuracy(model, adv), node_accuracy(model, transfer[b]))
            print(f"  {name} {b:.0%}: adaptive {100 * res[b][0]:.1f}, transfer {100 * res[b][1]:.1f} "
                  f"({att_s[-1]:.0f} s wall, {att_cpu[-1]:.0f} s CPU, +{mem.mb:.0f} MB)", flush=True)
        rows.append((name, clean, res, train_s, train_cpu, att_s, att_cpu, att_mb))
        print(f"  {name}: clean {100 * clean:.1f}, train {train_s:.0f} s wall / {train_cpu:.0f} s CPU", flush=True)
    budgets = sorted(args.budgets)
    cols = " | ".join(f"{b:.0%} adaptive | {b:.0%} transfer" for b in budgets)
    print(f"\n| model | clean | {cols} | train s (wall / CPU) | attack s per budget, mean (wall / CPU) | "
          "attack peak MB |")
    print("|---|---|" + "---|" * (2 * len(budgets)) + "---|---|---|")
    for name, clean, res, train_s, train_cpu, att_s, att_cpu, att_mb in sorted(rows, key=lambda r: list(models(
            f, c)).index(r[0])):
        if args.only and name not in args.only:
            continue
        accs = " | ".join(("-" if res[b][0] is None else f"{100 * res[b][0]:.1f}") + f" | {100 * res[b][1]:.1f}"
                          for b in budgets)
        timing = f"{sum(att_s) / len(att_s):.0f} / {sum(att_cpu) / len(att_cpu):.0f}" if att_s else "-"
        print(f"| {name} | {100 * clean:.1f} | {accs} | {train_s:.0f} / {train_cpu:.0f} | {timing} | {att_mb:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
