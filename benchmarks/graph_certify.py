"""Certified accuracy vs radius (additions / deletions) of sparse randomized smoothing for a GCN on the Cora LCC
(Bojchevski et al. 2020), with the library defaults (p_plus 0.001, p_minus 0.4, n0 100, n 1000, alpha 0.01).

    nice python benchmarks/graph_certify.py [--n 1000] [--base plain noise]

Base models: ``plain``, a GCN (hidden 16, dropout 0.5, 200 epochs, seed 0) trained on the clean graph; ``noise``,
the same GCN trained with noise augmentation -- every epoch on a fresh draw of the smoothing distribution
(``train_node_classifier(..., augment=smoothing.noisy_graph)``), as Bojchevski et al. 2020 train their base
models.  Certified accuracy counts test nodes whose smoothed prediction is correct and certified at the radius.
"""

from __future__ import annotations

import argparse
import time

import torch

from graph_common import gcn_accuracy, planetoid_lcc  # noqa: F401  (gcn_accuracy: same victim recipe)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="Cora")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--p_plus", type=float, default=0.001)
    ap.add_argument("--p_minus", type=float, default=0.4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--base", nargs="+", default=["plain", "noise"], choices=["plain", "noise"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from mmrobust.graph.certify import SparseSmoothing
    from mmrobust.graph.models import GCN
    from mmrobust.graph.training import node_accuracy, train_node_classifier
    from mmrobust.metrics.certified_graph import SparseCertifiedAccuracy

    if args.data == "csbm":   # the generated graph of graph_poisoning.py / graph_local.py
        from mmrobust.graph.data import sbm_graph
        data = sbm_graph(600, 3, p_in=0.03, p_out=0.004, binary_features=32, train_fraction=0.1, val_fraction=0.1,
                         seed=0)
    else:
        data = planetoid_lcc(args.data)
    radii = [(0, 0)] + [(a, 0) for a in (1, 2, 3)] + [(0, d) for d in (1, 2, 4, 6, 8, 10, 15)]
    columns = {}
    for base in args.base:
        smoothing_kw = dict(p_plus=args.p_plus, p_minus=args.p_minus, n=args.n)
        torch.manual_seed(0)
        model = GCN(data.num_features, int(data.y.max()) + 1, hidden=16)
        noise = SparseSmoothing(model, **smoothing_kw)
        train_node_classifier(model, data, epochs=200, augment=noise.noisy_graph if base == "noise" else None)
        t = time.perf_counter()
        cert = SparseSmoothing(model, **smoothing_kw).certify(data)
        secs = time.perf_counter() - t
        metric = SparseCertifiedAccuracy(radii)
        metric.update(cert, data.y, data.test_mask)
        columns[base] = metric.compute().tolist()
        print(f"{args.data}, base {base}: GCN clean test accuracy {100 * node_accuracy(model, data):.1f}%; smoothing "
              f"p+={args.p_plus} p-={args.p_minus} n={args.n}: {secs:.0f} s", flush=True)
    print("| radius (add, del) | " + " | ".join(f"certified accuracy (%), {b} GCN" for b in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for i, r in enumerate(radii):
        print(f"| {r} | " + " | ".join(f"{100 * v[i]:.1f}" for v in columns.values()) + " |")


if __name__ == "__main__":
    main()
