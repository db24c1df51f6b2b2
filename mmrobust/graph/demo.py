"""The graph part of ``mmrobust demo``: node classification with a GCN on a contextual stochastic block model
generated in code (:data:`CSBM`, the kind of graph Gosch et al. 2023, https://arxiv.org/abs/2306.15427, Sec. 4,
study adversarial training on; Cora when ``args.cora_root`` names a folder holding ``Cora/raw``), normal vs
adversarial training, and accuracy as a function of the edge-flip budget under PRBCD (Geisler et al. 2021,
https://arxiv.org/abs/2110.14038, Algorithm 1).

Adversarial training is the library's :class:`~mmrobust.callbacks.AdversarialTraining` callback on a
plain Lightning ``Trainer`` -- the same callback as for images and speech -- with PRBCD scoring the
training nodes (Xu et al. 2019, https://arxiv.org/abs/1906.04214, Eq. 7):

.. math:: \\min_\\theta \\max_{\\|\\tilde A - A\\|_0/2 \\le \\Delta} \\mathcal L_{train}(f_\\theta(X, \\tilde A))
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

#: edge-flip budgets of the curve, as fractions of the undirected edges
BUDGETS = (0.0, 0.05, 0.1, 0.2)


#: the default graph, a contextual SBM (:func:`~mmrobust.graph.data.sbm_graph`): class-homophilous edges and
#: noisy class-mean features, so that both the structure and the features carry the label; 10% of the nodes
#: labelled, transductive (the graph holds the test nodes during training, as with the library's Planetoid split)
CSBM = dict(num_nodes=300, num_classes=2, p_in=0.04, p_out=0.01, feature_noise=1.0, train_fraction=0.1,
            val_fraction=0.1, seed=0)


def settings(quick: bool, cora: bool) -> Dict:
    """Epochs and attack sizes; ``quick`` keeps the part to seconds on the CSBM."""
    return {"epochs": 100 if quick else 200, "adv_epochs": 30 if quick else (60 if cora else 100),
            "train_budget": 0.1, "train_attack_epochs": 10 if quick else 20,
            "attack_epochs": 30 if quick else 100, "hidden": 16}


def demo_datamodule(cora_root: Optional[str] = None):
    """``(name, datamodule)``: the CSBM, or Cora copied from ``cora_root/Cora/raw`` (nothing downloads)."""
    from .data import PlanetoidDataModule, SBMDataModule

    if cora_root:
        if not (Path(cora_root) / "Cora" / "raw").is_dir():
            raise FileNotFoundError(f"cora_root must be a folder holding Cora/raw, got {cora_root!r}")
        return "Cora", PlanetoidDataModule("Cora", root=tempfile.mkdtemp(prefix="mmrobust_cora_"), source=cora_root)
    return "CSBM", SBMDataModule(**CSBM)


def run(report, args) -> List[Dict]:
    """Train a GCN normally and with PRBCD adversarial training; add a section with the budget curve."""
    import pytorch_lightning as pl

    from ..adapters import GraphAdapter
    from ..attacks import PRBCD
    from ..callbacks import AdversarialTraining
    from ..threats import EdgeFlips
    from .models import GCN
    from .training import NodeClassifier, robust_accuracy_curve

    cora_root = getattr(args, "cora_root", None)
    name, data_module = demo_datamodule(cora_root)
    data_module.setup("fit")
    graph = data_module.data
    cfg = settings(args.quick, cora_root is not None)
    n = graph.num_nodes
    block = min(250_000, max(100, n * (n - 1) // 4))

    def prbcd(budget: float, mask: str, epochs: int) -> PRBCD:
        return PRBCD(EdgeFlips(budget), block_size=block, epochs=epochs, epochs_resampling=int(0.8 * epochs),
                     loss="prob_margin", adapter=GraphAdapter(mask=mask), seed=args.seed)

    variants = {"normal": [],
                f"PRBCD-AT @ {cfg['train_budget']:.0%}": [
                    AdversarialTraining(prbcd(cfg["train_budget"], "train", cfg["train_attack_epochs"]))]}
    rows, curves = [], {}
    eval_budget = 0.1
    for variant, callbacks in variants.items():
        pl.seed_everything(args.seed, workers=True)
        model = GCN(graph.num_features, data_module.num_classes, hidden=cfg["hidden"], dropout=0.5)
        epochs = cfg["epochs"] if not callbacks else cfg["adv_epochs"]
        start = time.perf_counter()
        if callbacks:  # adversarial fine-tuning of a normally trained model (as in the graph recipe)
            _fit(NodeClassifier(model, lr=0.01), data_module, cfg["epochs"], [])
        _fit(NodeClassifier(model, lr=0.01 if not callbacks else 0.005), data_module, epochs, callbacks)
        seconds = time.perf_counter() - start
        model.eval()
        curve = robust_accuracy_curve(model, graph, lambda b: prbcd(b, "test", cfg["attack_epochs"]), BUDGETS)
        accs = [row["robust_accuracy"] for row in curve]
        curves[variant] = ([100 * b for b in BUDGETS], accs)
        rows.append({"modality": f"graph ({name})", "model": f"GCN {variant}", "clean acc": accs[0],
                     "robust acc": accs[BUDGETS.index(eval_budget)],
                     "attack": f"PRBCD-{cfg['attack_epochs']}, {eval_budget:.0%} of edges", "train s": seconds})
    report.section(f"Graph: node classification on {name}")
    report.curve(f"Graph: accuracy vs edge-flip budget ({name})", curves, xlabel="edge budget (% of edges flipped)",
                 ylabel="accuracy of test nodes under PRBCD",
                 caption="Global evasion attack on the structure; adversarial training perturbs the training "
                         "graph with PRBCD before every step (AdversarialTraining callback).")
    setting = "inductive (test nodes unseen in training)" if data_module.inductive else "transductive"
    source = f"sbm_graph({', '.join(f'{k}={v}' for k, v in CSBM.items())})" if name == "CSBM" else "library split"
    report.settings({"graph.data": f"{name} ({n} nodes, {graph.edge_index.shape[1] // 2} undirected edges), "
                                   f"{setting}, {source}",
                     "graph.model": f"GCN(hidden={cfg['hidden']}, dropout=0.5), Adam lr 0.01, wd 5e-4",
                     "graph.epochs": f"{cfg['epochs']} clean (+{cfg['adv_epochs']} adversarial, lr 0.005)",
                     "graph.train_attack": f"PRBCD EdgeFlips({cfg['train_budget']}) on train nodes, "
                                           f"{cfg['train_attack_epochs']} epochs, loss prob_margin",
                     "graph.eval_attack": f"PRBCD {cfg['attack_epochs']} epochs, block {block}, loss prob_margin, "
                                          f"budgets {list(BUDGETS)}, seed {args.seed}"})
    return rows


def _fit(module, data_module, epochs: int, callbacks) -> None:
    import pytorch_lightning as pl

    pl.Trainer(max_epochs=epochs, callbacks=list(callbacks), logger=False, enable_checkpointing=False,
               enable_model_summary=False, enable_progress_bar=False, accelerator="cpu", devices=1,
               num_sanity_val_steps=0, limit_val_batches=0).fit(module, datamodule=data_module)
