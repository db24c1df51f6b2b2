"""Local (targeted) attacks: fraction of 40 target nodes misclassified by LocalGreedy at budgets 1..5 x degree,
with and without Nettack's unnoticeability test (Zügner et al. 2018's target selection: among correctly
classified test nodes, the 10 with the highest margin, the 10 with the lowest, 20 at random).

    nice python benchmarks/graph_local.py --data csbm      # or --data cora / citeseer (LCC, 10/10/80 split)

Greedy attacks are incremental, so one run per target with budget 5 x degree gives every smaller budget as a
prefix.  Victim: GCN (hidden 16, dropout 0.5, 200 epochs, seed 0), evasion.  Every result is checked here,
independently of the attack's own bookkeeping: the returned graph differs from the clean one in exactly the
reported flips, all at the target, undirected, within ``max(1, m * degree)`` for each prefix used; with the
test on, every prefix's degree sequence passes Nettack's likelihood-ratio test (recomputed in float64 from the
degrees); the target's prediction after each prefix is recomputed by a plain forward pass on the prefix graph
(that prediction, not the attack's margin, fills the table); the user's graph is unchanged.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from graph_common import planetoid_lcc


def powerlaw_lr_statistic(d0, d1, d_min=2):
    """Nettack Eqs. 6-8 written out on Python floats (the independent check of the degree test)."""
    def ll(ds):
        ds = [d for d in ds if d >= d_min]
        n, s = len(ds), math.fsum(math.log(d) for d in ds)
        a = 1 + n / (s - n * math.log(d_min - 0.5))
        return n * math.log(a) + n * a * math.log(d_min) - (a + 1) * s
    return -2 * ll(d0 + d1) + 2 * (ll(d0) + ll(d1))


def pairs(edge_index):
    r, c = edge_index.tolist()
    return {(min(a, b), max(a, b)) for a, b in zip(r, c)}


def apply_flips(edge_index, flips):
    ps = pairs(edge_index) ^ set(flips)
    ei = torch.tensor(sorted(ps), dtype=edge_index.dtype).t()
    return torch.cat([ei, ei.flip(0)], 1)


def apply_feature_flips(x, flips):
    x = x.clone()
    for node, j in flips:
        x[node, j] = 1 - x[node, j]
    return x


def cooccurrence_ok(x, target, added):
    """Nettack's co-occurrence test written with the full F x F co-occurrence matrix (as the authors' code)."""
    xb = (x != 0).double()
    words = (xb.t() @ xb) > 0
    words.fill_diagonal_(False)
    inv = 1 / (words.sum(0).double() + 1e-8)
    s = xb[target].bool()
    score = (words[:, s].double() * inv[s]).sum(1)
    return all(bool(score[j] > 0.5 * inv[s].sum()) for j in added)


def check(model, data, target, res, budget, threshold, unnoticeable, ks):
    """``{k: target misclassified after the first k flips}`` for the prefixes ``ks`` (capped at the flips made),
    recomputed by a forward pass, after checking ``res`` and every prefix of it against the threat."""
    if res.x is not None:
        changed_x = (res.x != data.x).nonzero().tolist()
        assert {tuple(c) for c in changed_x} == set(res.feature_flips), "returned features != reported flips"
        assert all(node == target for node, _ in changed_x), "a feature flip not at the target"
        assert bool(((res.x == 0) | (res.x == 1)).all()), "features no longer binary"
        if unnoticeable:
            added = [j for _, j in res.feature_flips if data.x[target, j] == 0]
            assert cooccurrence_ok(data.x, target, added), "an added feature fails the co-occurrence test"
    clean = pairs(data.edge_index)
    r, c = res.edge_index.tolist()
    directed = set(zip(r, c))
    assert all((b, a) in directed for a, b in directed), "returned graph is not undirected"
    assert all(a != b for a, b in directed), "returned graph has self loops"
    changed = clean ^ pairs(res.edge_index)
    assert changed == set(res.flips) and len(res.flips) == len(changed), "returned graph != reported flips"
    assert all(target in p for p in changed), "a flip not at the target"
    used = len(changed) + len(res.feature_flips)
    assert used <= budget == res.budget, f"{used} flips > budget {budget}"
    n = data.num_nodes
    d0 = torch.bincount(torch.tensor([a for p in clean for a in p]), minlength=n).tolist()
    out = {}
    for k in range(used + 1):
        flips, feature_flips = res.prefix(k)
        if unnoticeable and flips:
            d1 = list(d0)
            for a, b in flips:
                step = -1 if (a, b) in clean else 1
                d1[a] += step
                d1[b] += step
            stat = powerlaw_lr_statistic(d0, d1)
            assert stat < threshold, f"prefix {k} fails the degree test: {stat:.5f} >= {threshold}"
        if k in ks or (k == used and max(ks) > used):
            with torch.no_grad():
                x = apply_feature_flips(data.x, feature_flips) if feature_flips else data.x
                pred = int(model(x, apply_flips(data.edge_index, flips))[target].argmax())
            for j in ks:
                if min(j, used) == k:
                    out[j] = pred != int(data.y[target])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="csbm", help="csbm (generated in code), cora or citeseer")
    ap.add_argument("--targets", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", nargs="+", default=["structure", "structure+features"],
                    help="structure: edge flips at the target; structure+features: also its binary features")
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
    degs = [int((data.edge_index[0] == t).sum()) for t in chosen]
    print(f"{args.data}: {data.num_nodes} nodes, {data.edge_index.shape[1] // 2} edges; GCN test accuracy "
          f"{100 * node_accuracy(model, data):.1f}%; {len(chosen)} correctly classified targets, degree "
          f"median {sorted(degs)[len(degs) // 2]}, max {max(degs)}")
    print("| perturbs | unnoticeability | 1 x deg | 2 x deg | 3 x deg | 4 x deg | 5 x deg | rejected candidates | "
          "flips used (mean) | wall s | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    saved = (data.edge_index.clone(), data.x.clone())
    for row, unnoticeable in [(r, u) for r in args.rows for u in (False, True)]:
        features = row == "structure+features"
        t, cpu = time.perf_counter(), time.process_time()
        hits, rejected, used, used_f = [0] * 5, 0, 0, 0
        for target, deg in zip(chosen, degs):
            attack = LocalGreedy(5.0, unnoticeable=unnoticeable, features=features)
            res = attack(model, data, target)
            assert torch.equal(data.edge_index, saved[0]) and torch.equal(data.x, saved[1]), "user graph changed"
            ks = [max(1, m * deg) for m in range(1, 6)]
            wrong = check(model, data, target, res, max(1, int(5.0 * deg)), attack.threshold, unnoticeable, ks)
            rejected += res.rejected
            used += len(res.flips)
            used_f += len(res.feature_flips)
            for m in range(1, 6):
                hits[m - 1] += wrong[ks[m - 1]]
        rates = " | ".join(f"{100 * h / len(chosen):.0f}%" for h in hits)
        test = ("degree + co-occurrence" if features else "degree test") if unnoticeable else "off"
        print(f"| {row} | {test} | {rates} | {rejected} | {used / len(chosen):.1f} edges"
              f"{f' + {used_f / len(chosen):.1f} features' if features else ''} | "
              f"{time.perf_counter() - t:.0f} | {time.process_time() - cpu:.0f} |", flush=True)


if __name__ == "__main__":
    main()
