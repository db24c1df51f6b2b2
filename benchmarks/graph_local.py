"""Local (targeted) attacks: fraction of 40 target nodes misclassified by LocalGreedy at budgets 1..5 x degree,
with and without Nettack's degree-distribution test (Zügner et al. 2018's target selection: among correctly
classified test nodes, the 10 with the highest margin, the 10 with the lowest, 20 at random).

    nice python benchmarks/graph_local.py --data csbm      # or Cora (LCC, 10/10/80 split)

Greedy attacks are incremental, so one run per target with budget 5 x degree gives every smaller budget as a
prefix.  Victim: GCN (hidden 16, dropout 0.5, 200 epochs, seed 0), evasion.
"""

from __future__ import annotations

import argparse
import time

import torch

from graph_common import planetoid_lcc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="csbm")
    ap.add_argument("--targets", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from mmrobust.attacks.local import LocalGreedy
    from mmrobust.graph.models import GCN
    from mmrobust.graph.training import node_accuracy, train_node_classifier

    if args.data == "csbm":
        from mmrobust.graph.data import sbm_graph
        data = sbm_graph(600, 3, p_in=0.03, p_out=0.004, binary_features=32, train_fraction=0.1, val_fraction=0.1,
                         seed=0)
    else:
        data = planetoid_lcc(args.data)
    torch.manual_seed(0)
    model = GCN(data.num_features, int(data.y.max()) + 1, hidden=16)
    train_node_classifier(model, data, epochs=200)
    model.eval()
    with torch.no_grad():
        logits = model(data.x, data.edge_index)
    correct = (logits.argmax(1) == data.y) & data.test_mask
    idx = correct.nonzero().squeeze(1)
    margins = torch.stack([LocalGreedy.margin(logits[i], int(data.y[i])) for i in idx])
    order = idx[margins.argsort(descending=True)]
    k = args.targets // 4
    chosen = torch.cat([order[:k], order[-k:]])
    rest = order[k:-k]
    g = torch.Generator().manual_seed(0)
    chosen = torch.cat([chosen, rest[torch.randperm(rest.numel(), generator=g)[: args.targets - 2 * k]]]).tolist()
    print(f"{args.data}: {data.num_nodes} nodes, {data.edge_index.shape[1] // 2} edges; GCN test accuracy "
          f"{100 * node_accuracy(model, data):.1f}%; {len(chosen)} correctly classified targets")
    print("| degree test | 1 x deg | 2 x deg | 3 x deg | 4 x deg | 5 x deg | rejected candidates | s |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for unnoticeable in (False, True):
        t = time.perf_counter()
        hits, rejected = [0] * 5, 0
        for target in chosen:
            deg = int((data.edge_index[0] == target).sum())
            res = LocalGreedy(5.0, unnoticeable=unnoticeable)(model, data, target)
            rejected += res.rejected
            for m in range(1, 6):
                hits[m - 1] += res.misclassified_after(max(1, m * deg))
        rates = " | ".join(f"{100 * h / len(chosen):.0f}%" for h in hits)
        print(f"| {'on' if unnoticeable else 'off'} | {rates} | {rejected} | {time.perf_counter() - t:.0f} |", flush=True)


if __name__ == "__main__":
    main()
