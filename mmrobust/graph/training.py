"""Training and evaluation of node classifiers, clean or adversarial (on perturbed training graphs).

Graph adversarial training (Xu et al. 2019, https://arxiv.org/abs/1906.04214, Eq. 7; in the inductive
setting of Gosch et al. 2023, https://arxiv.org/abs/2306.15427):

.. math:: \\min_\\theta \\max_{\\tilde A \\in \\Phi(A)} \\mathcal{L}_{train}(f_\\theta(X, \\tilde A))

where the inner maximisation is an edge attack (e.g. :class:`~mmrobust.attacks.PRBCD` with a
``GraphAdapter(mask="train")``) or a feature attack (:class:`~mmrobust.attacks.PGD` over a
:func:`~mmrobust.threats.graph.feature_ball`) on the *training* graph; with
:func:`~mmrobust.graph.data.inductive_split` the test nodes are never seen during training.

With Lightning, use :class:`NodeClassifier` with the library's
:class:`~mmrobust.callbacks.adversarial.AdversarialTraining` callback (it replaces the training graph
by ``attack.generate(...)``); :func:`train_node_classifier` is the same loop without a Trainer.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks.base import Attack
from ..errors import check_finite_nonneg, check_int, check_positive
from ..utils import kept_modes


def _mask(data, name: str) -> Tensor:
    m = getattr(data, f"{name}_mask", None)
    if m is None:
        raise KeyError(f"the graph has no '{name}_mask'")
    return m


def node_accuracy(model: nn.Module, data, mask: str = "test") -> float:
    """Accuracy on the ``{mask}_mask`` nodes, in eval mode (the model's mode is restored)."""
    with kept_modes(model, train=False), torch.no_grad():
        out = model(data.x, data.edge_index, getattr(data, "edge_weight", None))
    m = _mask(data, mask)
    return (out.argmax(1) == data.y)[m].float().mean().item()


def train_node_classifier(model: nn.Module, data, *, epochs: int = 200, lr: float = 0.01,
                          weight_decay: float = 5e-4, attack: Optional[Attack] = None, attack_every: int = 1,
                          clean_epochs: int = 0, progress: bool = False,
                          augment: Optional[Callable[[Any], Any]] = None) -> List[float]:
    """Full-batch training on the ``train_mask`` nodes with Adam; returns the per-epoch training loss.

    With ``attack`` (whose adapter should score the training nodes, ``GraphAdapter(mask="train")``), the
    model trains on ``attack.generate(model, data)`` -- a freshly perturbed training graph every
    ``attack_every`` epochs after ``clean_epochs`` clean warm-up epochs (adversarial training).
    With ``augment`` (a function of the clean graph returning a graph), the model trains on
    ``augment(data)``, drawn anew every epoch -- noise augmentation, e.g. the smoothing noise of the base model
    of :class:`~mmrobust.graph.certify.SparseSmoothing` (``augment=smoothing.noisy_graph``).
    """
    if attack is not None and augment is not None:
        raise ValueError("give attack (adversarial training) or augment (noise augmentation), not both")
    check_int("epochs", epochs, 1)
    check_positive("lr", lr)
    check_finite_nonneg("weight_decay", weight_decay)
    check_int("attack_every", attack_every, 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    train = _mask(data, "train")
    losses = []
    graph = data
    epochs_iter: Iterable[int] = range(epochs)
    if progress:
        from tqdm.auto import tqdm
        epochs_iter = tqdm(epochs_iter, desc="adversarial training" if attack else "training", leave=False)
    for epoch in epochs_iter:
        if attack is not None and epoch >= clean_epochs and (epoch - clean_epochs) % attack_every == 0:
            graph = attack.generate(model, data)
        if augment is not None:
            graph = augment(data)
        model.train()
        opt.zero_grad()
        out = model(graph.x, graph.edge_index, getattr(graph, "edge_weight", None))
        loss = F.cross_entropy(out[train], data.y[train])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def pseudo_label(model: nn.Module, graph):
    """Self-training (Gosch et al. 2023, https://arxiv.org/abs/2306.15427, Sec. 3): a copy of ``graph`` whose
    nodes outside ``train_mask`` and ``val_mask`` get ``model``'s predictions as labels and join ``train_mask``,
    so that adversarial training attacks and fits the whole training graph instead of the few labelled nodes.
    ``graph`` is unchanged (the evaluation graph keeps its true labels); the model's mode is restored."""
    import copy

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            pred = model(graph.x, graph.edge_index, getattr(graph, "edge_weight", None)).argmax(1)
    finally:
        model.train(was)
    val = getattr(graph, "val_mask", None)
    unlabelled = ~_mask(graph, "train") & (~val if val is not None else True)
    out = copy.copy(graph)
    out.y = torch.where(unlabelled, pred, graph.y)
    out.train_mask = graph.train_mask | unlabelled
    return out


def robust_accuracy_curve(model: nn.Module, data, attack_for_budget: Callable[[float], Attack],
                          budgets: Iterable[float]) -> List[Dict[str, float]]:
    """Robust accuracy per budget (a curve), measured with the spine's
    :class:`~mmrobust.metrics.RobustAccuracy` (correct clean *and* under attack).

    ``attack_for_budget(b)`` builds the attack for budget ``b`` (e.g.
    ``lambda b: PRBCD(EdgeFlips(b), adapter=GraphAdapter(mask="test"), seed=0)``); budget 0 is clean.
    """
    from ..metrics.robust_accuracy import RobustAccuracy
    from ..threats.verify import run_checked

    rows = []
    for b in budgets:
        metric = RobustAccuracy()
        result = run_checked(attack_for_budget(b), model, data)  # the returned graph re-counted, as in evaluate
        metric.update(result)
        rows.append({"budget": float(b), "clean_accuracy": metric.clean_accuracy().item(),
                     "robust_accuracy": metric.compute().item(),
                     "flips": float(result.size["edges"].sum()) if "edges" in result.size else 0.0})
    return rows


class NodeClassifier(pl.LightningModule):
    """Full-batch node classification with Lightning: cross-entropy on the ``train_mask`` nodes of each
    graph batch, accuracy on ``val_mask`` / ``test_mask``.  Graph adversarial training: add
    ``AdversarialTraining(PRBCD(EdgeFlips(0.05), adapter=GraphAdapter(mask="train"), seed=0))`` to the
    Trainer's callbacks; the callback runs the attack on the training graph before every step.
    """

    def __init__(self, model: nn.Module, lr: float = 0.01, weight_decay: float = 5e-4):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.lr = check_positive("lr", lr)
        self.weight_decay = check_finite_nonneg("weight_decay", weight_decay)

    def forward(self, x, edge_index, edge_weight=None, **kwargs):
        return self.model(x, edge_index, edge_weight, **kwargs)

    def _step(self, batch, split: str) -> Tensor:
        out = self(batch.x, batch.edge_index, getattr(batch, "edge_weight", None))
        m = _mask(batch, split)
        if not bool(m.any()):
            return out.sum() * 0
        loss = F.cross_entropy(out[m], batch.y[m])
        n = int(m.sum())
        self.log(f"{split}/loss", loss.detach(), batch_size=n, prog_bar=split == "train")
        self.log(f"{split}/acc", (out[m].argmax(1) == batch.y[m]).float().mean(), batch_size=n,
                 prog_bar=split != "train")
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
