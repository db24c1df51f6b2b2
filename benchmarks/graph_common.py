"""Helpers of the graph_* benchmarks (not graph_prbcd): Planetoid largest connected component with a
Pro-GNN-style random split, and GCN training/evaluation with several seeds."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, List

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "planetoid"
if not DATA.is_dir():   # a git worktree beside the main checkout
    DATA = Path("/work/shared/data/planetoid")


def planetoid_lcc(name: str = "Cora", seed: int = 15, train: float = 0.1, val: float = 0.1):
    """The largest connected component of a Planetoid graph, with a random ``train``/``val``/rest split of its
    nodes (the kind of split of Jin et al. 2020's Pro-GNN: 10% / 10% / 80% of the LCC, seed 15); features as
    stored (binary bag of words)."""
    from torch_geometric.transforms import LargestConnectedComponents

    from mmrobust.graph.data import PLANETOID_NAMES, load_planetoid

    name = {n.lower(): n for n in PLANETOID_NAMES}.get(name.lower(), name)   # --data cora works too
    data = load_planetoid(name, tempfile.mkdtemp(prefix="mmrobust_bench_"), source=DATA)
    data = LargestConnectedComponents()(data)
    n = data.num_nodes
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train, n_val = int(train * n), int(val * n)
    for key, idx in (("train_mask", perm[:n_train]), ("val_mask", perm[n_train:n_train + n_val]),
                     ("test_mask", perm[n_train + n_val:])):
        m = torch.zeros(n, dtype=torch.bool)
        m[idx] = True
        data[key] = m
    return data


def gcn_accuracy(data, seeds=(0, 1, 2), make: Callable = None, epochs: int = 200) -> List[float]:
    """Test accuracy of a GCN (hidden 16, dropout 0.5, Adam 0.01, wd 5e-4; Pro-GNN's victim) trained on ``data``,
    one value per seed."""
    from mmrobust.graph.models import GCN
    from mmrobust.graph.training import node_accuracy, train_node_classifier

    out = []
    for s in seeds:
        torch.manual_seed(s)
        model = make(data) if make else GCN(data.num_features, int(data.y.max()) + 1, hidden=16)
        train_node_classifier(model, data, epochs=epochs)
        out.append(node_accuracy(model, data))
    return out


def mean_std(values) -> str:
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.pstdev(values):.1f}"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """``with PeakRSS() as m: ...``: ``m.mb``, the peak resident memory of this process during the block above
    its level at entry (sampled every 5 ms by a thread; torch's CPU kernels release the GIL).  Memory the
    allocator keeps from earlier blocks is in the baseline, so this is the block's own extra footprint."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.mb = (self.peak - self.base) / 2 ** 20
        return False
