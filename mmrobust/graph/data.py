"""Graph datasets and Lightning datamodules: Planetoid (Cora, CiteSeer) from a local copy, KarateClub,
TU graph classification, synthetic stochastic block model graphs, and inductive splits.

Nothing here downloads unless a loader is explicitly asked to (``TUDataModule(download=True)``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Tuple, Union

import pytorch_lightning as pl
import torch
from torch import Tensor

from ..errors import check_fraction, check_int, check_positive

PathLike = Union[str, Path]

PLANETOID_NAMES = ("Cora", "CiteSeer", "PubMed")


def _random_split(n: int, train: float, val: float, generator: torch.Generator):
    perm = torch.randperm(n, generator=generator)
    n_train, n_val = int(round(train * n)), int(round(val * n))
    masks = []
    for idx in (perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]):
        m = torch.zeros(n, dtype=torch.bool)
        m[idx] = True
        masks.append(m)
    return masks


#: up to this many nodes :func:`sbm_graph` draws one Bernoulli per node pair (the seeded graphs of earlier versions)
SBM_DENSE_MAX_NODES = 2000


def _distinct_indices(m: int, k: int, generator: torch.Generator) -> Tensor:
    """``k`` distinct integers drawn uniformly from ``range(m)`` (a uniform random ``k``-subset), in memory
    ~ ``k`` when ``k`` is small against ``m`` (rejection: the distinct values of i.i.d. uniform draws form a uniform
    random subset of their size, and a uniform ``k``-subset of that is uniform) and ~ ``m <= 4k`` otherwise."""
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    if m <= 4 * k:
        return torch.randperm(m, generator=generator)[:k]
    keys = torch.zeros(0, dtype=torch.long)
    while keys.numel() < k:
        draw = torch.randint(m, (int(1.2 * (k - keys.numel())) + 16,), generator=generator)
        keys = torch.cat([keys, draw]).unique()
    return keys[torch.randperm(keys.numel(), generator=generator)[:k]]


def _pairs_below_diagonal(t: Tensor) -> Tuple[Tensor, Tensor]:
    """The ``t``-th pair ``(i, j)``, ``i < j``, in the order ``t = j (j - 1) / 2 + i`` (inverse of that formula)."""
    j = ((1 + torch.sqrt(1 + 8 * t.double())) / 2).floor().long()
    j = j - (j * (j - 1) // 2 > t).long()                  # float rounding, at most one step either way
    j = j + ((j + 1) * j // 2 <= t).long()
    return t - j * (j - 1) // 2, j


def sbm_edges(sizes, p_in: float, p_out: float, generator: torch.Generator) -> Tensor:
    """Undirected edges (both directions, coalesced) of a stochastic block model with blocks of ``sizes``: each
    node pair is an edge independently with probability ``p_in`` inside a block and ``p_out`` across blocks.
    Sampled per block pair -- ``Binomial(pairs, p)`` edges, then that many distinct pairs uniformly -- which is
    the same distribution as one Bernoulli per pair, in time and memory ~ ``edges + blocks^2``, never
    ``nodes^2`` (PyG's ``stochastic_blockmodel_graph`` materialises every pair)."""
    from torch_geometric.utils import to_undirected

    starts = [0]
    for n in sizes:
        starts.append(starts[-1] + int(n))
    rows, cols = [], []
    for a, na in enumerate(sizes):
        for b in range(a, len(sizes)):
            nb, p = int(sizes[b]), float(p_in if a == b else p_out)
            m = na * (na - 1) // 2 if a == b else na * nb
            if m == 0 or p == 0.0:
                continue
            k = int(torch.binomial(torch.tensor(float(m), dtype=torch.float64),
                                   torch.tensor(p, dtype=torch.float64), generator=generator))
            t = _distinct_indices(m, k, generator)
            i, j = _pairs_below_diagonal(t) if a == b else (t // nb, t % nb)
            rows.append(starts[a] + i)
            cols.append(starts[b] + j)
    num_nodes = starts[-1]
    if not rows:
        return torch.zeros(2, 0, dtype=torch.long)
    return to_undirected(torch.stack([torch.cat(rows), torch.cat(cols)]), num_nodes=num_nodes)


def sbm_graph(num_nodes: int = 120, num_classes: int = 3, p_in: float = 0.1, p_out: float = 0.01,
              feature_noise: float = 1.0, binary_features: Optional[int] = None, train_fraction: float = 0.3,
              val_fraction: float = 0.1, seed: int = 0, test_fraction: Optional[float] = None):
    """A contextual stochastic block model graph (Deshpande et al. 2018, https://arxiv.org/abs/1807.09596):
    class-homophilous edges :math:`P(A_{ij}=1) = p_{in}` within and :math:`p_{out}` across classes, and
    features ``onehot(y) + noise * N(0, I)`` (or, with ``binary_features=d``, ``d`` Bernoulli bits whose
    rates depend on the class).  Random train/val/test masks; ``test_fraction=None`` makes every other node a
    test node, a fraction leaves the remaining nodes unlabelled (in no mask, as Planetoid's public split does).
    Deterministic given ``seed``, without touching the global random state.

    Graphs above :data:`SBM_DENSE_MAX_NODES` nodes are sampled per block pair (:func:`sbm_edges`: memory and time ~
    edges, so millions of nodes fit); smaller ones with PyG's ``stochastic_blockmodel_graph`` (one Bernoulli per
    node pair, ~ nodes^2 / 2 of memory, at most ~60 MB there), which keeps the exact seeded graphs of earlier
    versions that tests, docstring examples and recorded benchmark results use.  Both draw every pair
    independently with the same probabilities: the same distribution, different samples for the same seed.
    """
    from torch_geometric.data import Data

    check_int("num_nodes", num_nodes, 2)
    check_int("num_classes", num_classes, 2)
    check_fraction("p_in", p_in)
    check_fraction("p_out", p_out)
    g = torch.Generator().manual_seed(seed)
    sizes = [num_nodes // num_classes + (i < num_nodes % num_classes) for i in range(num_classes)]
    if num_nodes <= SBM_DENSE_MAX_NODES:
        from torch_geometric.utils import stochastic_blockmodel_graph

        probs = torch.full((num_classes, num_classes), float(p_out))
        probs.fill_diagonal_(float(p_in))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            edge_index = stochastic_blockmodel_graph(sizes, probs, directed=False)
    else:   # the edges' own stream, seeded unlike ``g`` (an equal seed would replay g's draws in the edges)
        edge_index = sbm_edges(sizes, p_in, p_out, torch.Generator().manual_seed((seed * 2654435761 + 12345) % 2**32))
    y = torch.cat([torch.full((s,), i, dtype=torch.long) for i, s in enumerate(sizes)])
    if binary_features:
        rates = torch.full((num_classes, binary_features), 0.1)
        for c in range(num_classes):
            rates[c, c::num_classes] = 0.4
        x = (torch.rand(num_nodes, binary_features, generator=g) < rates[y]).float()
    else:
        x = torch.nn.functional.one_hot(y, num_classes).float()
        x = x + check_positive("feature_noise", feature_noise) * torch.randn(num_nodes, num_classes, generator=g)
    train, val, test = _random_split(num_nodes, train_fraction, val_fraction, g)
    if test_fraction is not None:
        check_fraction("test_fraction", test_fraction)
        if train_fraction + val_fraction + test_fraction > 1 + 1e-9:
            raise ValueError(f"train_fraction + val_fraction + test_fraction must be at most 1, got "
                             f"{train_fraction} + {val_fraction} + {test_fraction}")
        test[test.nonzero().flatten()[int(round(test_fraction * num_nodes)):]] = False
    return Data(x=x, edge_index=edge_index, y=y, train_mask=train, val_mask=val, test_mask=test)


def load_planetoid(name: str = "Cora", root: PathLike = "data/planetoid", source: Optional[PathLike] = None):
    """A Planetoid graph (Yang et al. 2016; Cora, CiteSeer, PubMed) with the public split.

    ``source`` is a directory holding ``<name>/raw`` (e.g. an offline copy); its raw files are copied
    into the writable ``root`` first so nothing is downloaded.  Without ``source``, PyG downloads into
    ``root`` when the raw files are absent.
    """
    from torch_geometric.datasets import Planetoid

    if name not in PLANETOID_NAMES:
        raise ValueError(f"name must be one of {list(PLANETOID_NAMES)}, got {name!r}")
    root = Path(root)
    if source is not None:
        src = Path(source) / name / "raw"
        if not src.is_dir():
            raise FileNotFoundError(f"no Planetoid raw files at {src}")
        dst = root / name / "raw"
        if not dst.is_dir():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, dst)
    return Planetoid(str(root), name)[0]


def karate_club():
    """Zachary's karate club (ships with PyG, no download): 34 nodes, 4 classes; the 4 labelled nodes
    of PyG's ``train_mask`` train, the rest are the test nodes."""
    from torch_geometric.datasets import KarateClub

    data = KarateClub()[0]
    data.x = data.x.float()
    data.test_mask = ~data.train_mask
    data.val_mask = torch.zeros_like(data.train_mask)
    return data


def inductive_split(data, test_mask: Optional[Tensor] = None):
    """Inductive node classification (Gosch et al. 2023, https://arxiv.org/abs/2306.15427, Sec. 3):
    the model trains on the graph *without* the test nodes and is evaluated (and attacked) on the
    full graph.  Returns ``(train_graph, full_graph)``; ``train_graph`` is the subgraph induced by the
    non-test nodes (relabelled), with its ``train_mask``/``val_mask`` carried over.
    """
    from torch_geometric.utils import subgraph

    test = data.test_mask if test_mask is None else test_mask
    keep = ~test
    edge_index, _ = subgraph(keep, data.edge_index, relabel_nodes=True, num_nodes=data.num_nodes)
    train = data.__class__(x=data.x[keep], edge_index=edge_index, y=data.y[keep])
    for split in ("train_mask", "val_mask"):
        if getattr(data, split, None) is not None:
            train[split] = data[split][keep]
    train.test_mask = torch.zeros(int(keep.sum()), dtype=torch.bool)
    return train, data


def toy_graph(seed: int = 0, num_nodes: int = 20):
    """``(model, data)``: a one-layer GCN (eval mode, weights drawn with ``seed``) on a two-class contextual SBM
    (:func:`sbm_graph`, 20 nodes and 14 undirected edges by default), built without touching the global random
    state; the setting of the graph attacks' docstring examples (the graph twin of
    :func:`mmrobust.utils.toy_problem`)."""
    from .models import GCN

    data = sbm_graph(num_nodes=num_nodes, num_classes=2, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GCN(data.num_features, 2, layers=1).eval()
    return model, data


class _SingleGraphModule(pl.LightningDataModule):
    """Full-batch node classification: every dataloader yields the one graph (PyG's DataLoader)."""

    def __init__(self, inductive: bool = False):
        super().__init__()
        self.inductive = bool(inductive)
        self.data = None
        self.train_graph = None

    def load(self):
        raise NotImplementedError

    def setup(self, stage: Optional[str] = None):
        if self.data is None:
            self.data = self.load()
            self.train_graph = inductive_split(self.data)[0] if self.inductive else self.data

    def _loader(self, graph):
        from torch_geometric.loader import DataLoader
        return DataLoader([graph], batch_size=1, shuffle=False)

    def train_dataloader(self):
        return self._loader(self.train_graph)

    def val_dataloader(self):
        return self._loader(self.data)

    def test_dataloader(self):
        return self._loader(self.data)

    @property
    def num_features(self) -> int:
        self.setup()
        return self.data.num_features

    @property
    def num_classes(self) -> int:
        self.setup()
        return int(self.data.y.max()) + 1


class PlanetoidDataModule(_SingleGraphModule):
    """Cora / CiteSeer / PubMed (public split), optionally inductive; see :func:`load_planetoid`."""

    def __init__(self, name: str = "Cora", root: PathLike = "data/planetoid", source: Optional[PathLike] = None,
                 inductive: bool = False):
        super().__init__(inductive)
        if name not in PLANETOID_NAMES:
            raise ValueError(f"name must be one of {list(PLANETOID_NAMES)}, got {name!r}")
        self.name, self.root, self.source = name, root, source

    def load(self):
        return load_planetoid(self.name, self.root, self.source)


class KarateClubDataModule(_SingleGraphModule):
    """Zachary's karate club (embedded in PyG; the offline default)."""

    def load(self):
        return karate_club()


class SBMDataModule(_SingleGraphModule):
    """A synthetic contextual SBM graph (:func:`sbm_graph`), for tests and quick experiments."""

    def __init__(self, inductive: bool = False, **sbm_kwargs):
        super().__init__(inductive)
        self.sbm_kwargs = sbm_kwargs

    def load(self):
        return sbm_graph(**self.sbm_kwargs)


class TUDataModule(pl.LightningDataModule):
    """A TU graph-classification dataset (Morris et al. 2020; e.g. ``"MUTAG"``, ``"PROTEINS"``) through
    PyG's ``TUDataset``, split at random into train/val/test graphs.  ``download=False`` (default) refuses
    to fetch missing files; pass ``dataset=`` to use an in-memory list of ``Data`` graphs instead.
    """

    def __init__(self, name: str = "MUTAG", root: PathLike = "data/TU", batch_size: int = 32,
                 val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0, download: bool = False,
                 dataset=None):
        super().__init__()
        self.name, self.root = name, Path(root)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.test_fraction = check_fraction("test_fraction", test_fraction)
        self.seed, self.download, self.dataset = seed, download, dataset
        self.splits = None

    def setup(self, stage: Optional[str] = None):
        if self.splits is not None:
            return
        if self.dataset is None:
            from torch_geometric.datasets import TUDataset
            raw = self.root / self.name / "raw"
            if not self.download and not raw.is_dir():
                raise FileNotFoundError(f"{raw} is missing; copy the TU files there or pass download=True")
            self.dataset = TUDataset(str(self.root), self.name)
        n = len(self.dataset)
        g = torch.Generator().manual_seed(self.seed)
        perm = torch.randperm(n, generator=g).tolist()
        n_test, n_val = int(round(self.test_fraction * n)), int(round(self.val_fraction * n))
        pick = lambda idx: [self.dataset[i] for i in idx]  # noqa: E731
        self.splits = {"test": pick(perm[:n_test]), "val": pick(perm[n_test:n_test + n_val]),
                       "train": pick(perm[n_test + n_val:])}

    def _loader(self, split, shuffle=False):
        from torch_geometric.loader import DataLoader
        self.setup()
        return DataLoader(self.splits[split], batch_size=self.batch_size, shuffle=shuffle)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")
