"""Poisoning of graph structure: the graph is perturbed *before* training, then a model is trained on it.

Two attacks, both within an :class:`~mmrobust.threats.graph.EdgeFlips` budget and sparse (memory ~ ``edges +
block`` per unrolled step, never ``nodes^2``):

* :class:`MetaPRBCD` -- meta-gradients (Zügner & Günnemann 2019, https://arxiv.org/abs/1902.08412, Eq. 4,
  "Meta-Self") through a short unrolled training loop of a surrogate, optimised by PRBCD's projected
  randomized block coordinate descent (Geisler et al. 2021, https://arxiv.org/abs/2110.14038, Sec. 5 and
  Algorithm 1) instead of Metattack's greedy dense flips;
* :func:`transfer_poison` -- the cheap baseline: an evasion PRBCD on a surrogate trained on the clean graph,
  scoring all nodes with the self-training labels, whose perturbed graph is then used for training.

:func:`poison` is the single entry for both.  Evaluate by training a fresh model on ``result.data``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..adapters.graph import GraphAdapter
from ..attacks.edge_candidates import EPS as _EPS
from ..attacks.edge_candidates import CandidatePairs, EdgeBlock, EdgeLookup, rank_within_unit
from ..attacks.losses import get_loss
from ..attacks.prbcd import PRBCD, resample_block
from ..errors import BudgetViolation, NonFiniteError, check_choice, check_fraction, check_int, check_positive
from ..threats.graph import EdgeFlips, project_capped_simplex, undirected_pairs
from .models import GCN
from .training import train_node_classifier


@dataclass
class PoisonResult:
    """``data``: the poisoned graph (a copy; the user's is unchanged); ``flipped_edges``: ``(2, K)`` flipped pairs
    (row < col); ``budget``: the allowed flips; ``loss``: the attack objective of the returned graph;
    ``unspent``: empty when ``K == budget``, else why the attack left ``budget - K`` flips unused."""

    data: object
    flipped_edges: Tensor
    budget: int
    loss: float
    attack: str
    unspent: str = ""


def _default_surrogate(num_features: int, num_classes: int) -> nn.Module:
    return GCN(num_features, num_classes, hidden=16, dropout=0.0)


def self_training_labels(model: nn.Module, data) -> Tensor:
    """Labels for Meta-Self: the true labels of the training nodes, the model's predictions elsewhere."""
    with torch.no_grad():
        pred = model(data.x, data.edge_index, getattr(data, "edge_weight", None)).argmax(1)
    return torch.where(data.train_mask, data.y, pred)


def _check_data(data) -> None:
    from torch_geometric.data import Batch

    if isinstance(data, Batch):
        raise TypeError("poisoning takes one graph (a torch_geometric Data), not a Batch")
    if getattr(data, "train_mask", None) is None:
        raise KeyError("poisoning needs data.train_mask (the labelled nodes the victim trains on)")


def _train_clean(make: Callable[[int, int], nn.Module], data, epochs: int, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make(data.num_features, int(data.y.max()) + 1).to(data.x.device, data.x.dtype)
        train_node_classifier(model, data, epochs=epochs)
    return model.eval()


class MetaPRBCD:
    """Meta-gradient poisoning with PRBCD (Geisler et al. 2021, Sec. 5; Zügner & Günnemann 2019, Eq. 4).

    The attacker maximises the loss of a model *trained on* the perturbed graph,

    .. math:: \\max_{P} \\mathcal{L}_{self}(f_{\\theta^*(P)}(X, A \\oplus P)),\\quad
              \\theta^*(P) = \\theta_T,\\ \\theta_{t+1} = \\theta_t - \\eta\\, v_{t+1},\\
              v_{t+1} = \\mu v_t + \\nabla_\\theta \\mathcal{L}_{train}(f_{\\theta_t}(X, A \\oplus P))

    with :math:`\\mathcal{L}_{self}` the mean ``loss`` of the unlabelled nodes w.r.t. self-training labels
    (Meta-Self; predictions of a surrogate trained on the clean graph) and the ``inner_steps`` training steps
    of SGD with momentum (Metattack's inner optimiser: ``inner_lr=0.1``, momentum 0.9) unrolled with
    ``torch.func.functional_call`` and differentiated w.r.t. the relaxed flip weights :math:`P` of a random
    block of ``block_size`` candidate pairs (default 20k, not PRBCD's 100k: every unrolled step carries the
    block's edges, so time grows with it; it must exceed the budget).  Each epoch takes one projected step of size
    ``lr * budget`` in :math:`\\ell_1` (gradient normalised: meta-gradients have no natural scale), the first
    ``epochs_resampling`` epochs redraw the dead half of the block; at the end the top-``budget`` flips and
    ``final_samples - 1`` Bernoulli samples are each scored by the same unrolled training (no gradient), and
    the highest self-training loss wins; flips it leaves unused are spent on the block pairs of largest
    meta-gradient at that discrete graph, so the returned graph flips exactly the budget.

    Args:
        threat: an :class:`EdgeFlips` (global; ``int`` flips or a fraction of the undirected edges).
        surrogate: ``(num_features, num_classes) -> nn.Module`` following ``model(x, edge_index, edge_weight)``;
            default a 2-layer GCN with 16 hidden units and no dropout (the unrolled training is deterministic).
        inner_steps: unrolled training steps (memory and time grow linearly).  Default 100, Metattack's
            ``train_iters`` (Zügner & Günnemann 2019; their reference code and DeepRobust's both unroll 100 steps of
            SGD with momentum): with 50, the surrogate's training is cut short and the meta-gradient aims at a
            less-trained model than the victim; on Pro-GNN's Cora split the victim trained on the poisoned graph
            reached 65.6 / 46.3 % at 10 / 20 % with 50 steps and 60.2 / 43.3 % with 100, against 63.0 / 44.5 % on
            Metattack's own published graphs (``benchmarks/results/graph_poisoning.md``).  Halve it to halve
            memory and time.
        clean_epochs: epochs of the surrogate trained on the clean graph (self-training labels).
        loss: the per-node attack loss on the scored nodes, a name of :func:`~mmrobust.attacks.losses.get_loss` or a
            callable ``(logits, labels, None) -> per-node loss``.  Default ``"prob_margin"``
            (:math:`\\max_{c \\ne y} p_c - p_y`, as evasion :class:`PRBCD`), not Metattack's cross-entropy
            (``"ce"``): Geisler et al. 2021, Sec. 4, show that CE, unbounded, keeps pushing nodes that are already
            misclassified and is a weak objective for a global attack that moves many flips at once (a greedy
            attack like Metattack re-scores after every flip); bounded margin losses spread the budget over the
            nodes still correct.  On the Cora LCC with Pro-GNN's split at 25 %, the GCN victim fell to 36.2 % with
            ``"prob_margin"`` against 58.7 % with ``"ce"`` (``benchmarks/results/graph_poisoning.md``).
        seed: seeds the block sampling, the surrogate and the unrolled initialisation.
    """

    name = "meta_prbcd"

    def __init__(self, threat: EdgeFlips, *, surrogate: Optional[Callable[[int, int], nn.Module]] = None,
                 inner_steps: int = 100, inner_lr: float = 0.1, momentum: float = 0.9, epochs: int = 40,
                 epochs_resampling: int = 30, block_size: int = 20_000, lr: float = 0.1, final_samples: int = 5,
                 clean_epochs: int = 200, self_training: bool = True, loss="prob_margin", seed: int = 0):
        if not isinstance(threat, EdgeFlips) or threat.local:
            raise TypeError("MetaPRBCD takes a global EdgeFlips threat, e.g. EdgeFlips(0.05)")
        if threat.max_flips_per_node is not None:
            raise ValueError(f"MetaPRBCD does not enforce max_flips_per_node (got {threat.max_flips_per_node}); use "
                             f"EdgeFlips(budget) without it, or transfer_poison, whose PRBCD enforces it")
        self.threat = threat
        self.surrogate = surrogate or _default_surrogate
        self.inner_steps = check_int("inner_steps", inner_steps, 1)
        self.inner_lr = check_positive("inner_lr", inner_lr)
        self.momentum = check_fraction("momentum", momentum, open_high=True)
        self.epochs = check_int("epochs", epochs, 1)
        self.epochs_resampling = check_int("epochs_resampling", epochs_resampling, 0)
        if self.epochs_resampling > self.epochs:
            raise ValueError(f"epochs_resampling must lie in [0, epochs={self.epochs}], got {epochs_resampling}")
        self.block_size = check_int("block_size", block_size, 1)
        self.lr = check_positive("lr", lr)
        self.final_samples = check_int("final_samples", final_samples, 1)
        self.clean_epochs = check_int("clean_epochs", clean_epochs, 1)
        self.self_training = bool(self_training)
        self.loss = get_loss(loss)
        self.seed = int(seed)
        self._x = None

    def describe(self) -> str:
        return (f"MetaPRBCD({self.threat.describe()}, inner_steps={self.inner_steps}, epochs={self.epochs}, "
                f"block_size={self.block_size})")

    # -- the unrolled training ----------------------------------------------------------------------
    def _inner(self, model: nn.Module, init: Dict[str, Tensor], data, labels: Tensor, ei: Tensor, ew: Tensor,
               differentiable: bool) -> Tensor:
        """Self-training loss of the surrogate after ``inner_steps`` training steps on ``(ei, ew)``."""
        from torch.func import functional_call

        names = list(init)
        x = self._x if self._x is not None else data.x
        params = [init[k].detach().clone().requires_grad_(True) for k in names]
        velocity = [torch.zeros_like(p) for p in params]
        train = data.train_mask
        with torch.enable_grad():
            for _ in range(self.inner_steps):
                out = functional_call(model, dict(zip(names, params)), (x, ei, ew))
                loss = F.cross_entropy(out[train], data.y[train])
                grads = torch.autograd.grad(loss, params, create_graph=differentiable)
                velocity = [self.momentum * v + g for v, g in zip(velocity, grads)]
                params = [p - self.inner_lr * v for p, v in zip(params, velocity)]
                if not differentiable:
                    params = [p.detach().requires_grad_(True) for p in params]
                    velocity = [v.detach() for v in velocity]
            out = functional_call(model, dict(zip(names, params)), (x, ei, ew))
        scored = ~data.train_mask if self.self_training else data.train_mask
        return self.loss(out[scored], labels[scored], None).mean()

    def __call__(self, data) -> PoisonResult:
        _check_data(data)
        if getattr(data, "edge_attr", None) is not None:  # refused before minutes of training, not after
            raise ValueError("MetaPRBCD flips edges of graphs without edge_attr; drop data.edge_attr first "
                             "(transfer_poison keeps it: added edges get zero rows)")
        try:
            return _verified(data, self.threat, self._attack(data))
        finally:
            self._x = None                   # the attack keeps nothing of the call (nor the graph's features)

    def _attack(self, data) -> PoisonResult:
        gen = torch.Generator(device=data.x.device).manual_seed(self.seed)
        clean = _train_clean(self.surrogate, data, self.clean_epochs, self.seed)
        labels = self_training_labels(clean, data) if self.self_training else data.y
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + 1)
            model = self.surrogate(data.num_features, int(data.y.max()) + 1).to(data.x.device, data.x.dtype)
        model.eval()                         # no dropout in the unrolled loop: one deterministic function
        for p in model.parameters():
            p.requires_grad_(False)
        init = {k: v.detach().clone() for k, v in model.named_parameters()}
        # bag-of-words features (Cora: 1.3% non-zero) enter the unrolled loop as a sparse matrix: the first
        # layer's x @ W dominates each step; PyG layers accept it unchanged
        sparse = self.surrogate is _default_surrogate and float((data.x != 0).float().mean()) < 0.1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # "sparse CSR support is in beta"
            self._x = data.x.to_sparse_csr() if sparse else None
        graph = GraphAdapter(mask=None).victim(model, data).meta["graph"]
        pairs = CandidatePairs(graph, local=False)
        budget = PRBCD.edge_budget(self, graph, self.threat, pairs)   # same checks and rounding as PRBCD
        b = int(budget[0])
        if b >= self.block_size:
            raise ValueError(f"block_size ({self.block_size}) must exceed the edge budget ({b})")
        lookup = EdgeLookup(graph.edge_index, graph.num_nodes)
        base_w = PRBCD.edge_weights(graph, data.x)
        device = data.x.device
        keys = pairs.sample(self.block_size, gen, device)
        block = EdgeBlock(keys, torch.full(keys.shape, _EPS, dtype=data.x.dtype, device=device), pairs, lookup)
        for epoch in range(self.epochs):
            p = block.weights.detach().requires_grad_(True)
            ei, ew = block.perturbed(graph.edge_index, base_w, p)
            loss = self._inner(model, init, data, labels, ei, ew, differentiable=True)
            (grad,) = torch.autograd.grad(loss, [p])
            if not bool(torch.isfinite(grad).all()):
                raise NonFiniteError("NaN/Inf in the meta-gradient; lower inner_lr or inner_steps")
            with torch.no_grad():
                decay = math.sqrt(max(0, epoch - self.epochs_resampling) + 1)
                step = self.lr * b / decay / grad.abs().sum().clamp_min(1e-30)
                w = project_capped_simplex(p + step * grad, block.unit, budget, 1)
                block.weights = w.clamp(_EPS, 1 - _EPS)
                if epoch < self.epochs_resampling - 1:
                    block = resample_block(block, pairs, lookup, self.block_size, gen, device)
        return self._final(model, init, data, labels, graph, block, base_w, budget, gen)

    def _final(self, model, init, data, labels, graph, block, base_w, budget, gen) -> PoisonResult:
        w = block.weights.detach().clone()
        w[w <= _EPS] = 0
        best, best_loss = None, -math.inf
        for i in range(self.final_samples):
            if i == 0:
                chosen = (rank_within_unit(w, block.unit, 1) < budget[block.unit]) & (w > 0)
            else:
                chosen = torch.rand(w.shape, generator=gen, device=w.device) < w
                rank = rank_within_unit(torch.where(chosen, w, torch.full_like(w, -1.0)), block.unit, 1)
                chosen &= rank < budget[block.unit]
            ei, ew = block.flip(graph.edge_index, base_w, chosen)
            loss = float(self._inner(model, init, data, labels, ei, ew, differentiable=False).detach())
            if loss > best_loss:
                best, best_loss = chosen, loss
        short = int(budget[0]) - int(best.sum())
        if short > 0:
            best = self._fill_budget(model, init, data, labels, graph, block, base_w, best, short)
            ei, ew = block.flip(graph.edge_index, base_w, best)
            best_loss = float(self._inner(model, init, data, labels, ei, ew, differentiable=False).detach())
        return _result(data, graph, block, base_w, best, int(budget[0]), best_loss, self.describe())

    def _fill_budget(self, model, init, data, labels, graph, block, base_w, chosen: Tensor, short: int) -> Tensor:
        """Spend the ``short`` flips a sample left unused (the top-``budget`` pick finds fewer weights above eps,
        a Bernoulli sample draws fewer): add the block pairs of largest meta-gradient at the discrete graph, so the
        poisoned graph flips exactly the budget, as Metattack's greedy flips do."""
        p = chosen.to(base_w.dtype).requires_grad_(True)
        ei, ew = block.perturbed(graph.edge_index, base_w, p)
        (grad,) = torch.autograd.grad(self._inner(model, init, data, labels, ei, ew, differentiable=True), [p])
        grad = grad.detach().masked_fill(chosen, -math.inf)
        return chosen | (rank_within_unit(grad, block.unit, 1) < short) & ~chosen


def _verified(data, threat: EdgeFlips, result: PoisonResult) -> PoisonResult:
    """``result`` if its graph lies inside ``threat`` around ``data``, re-counted from the two edge sets by
    :mod:`mmrobust.threats.verify` (not from the attack's own bookkeeping); :class:`BudgetViolation` otherwise."""
    from ..threats.verify import violations

    victim = GraphAdapter(mask=None).victim(nn.Identity(), data)
    found = violations(victim, {"edge_index": result.data.edge_index}, {"edge_index": threat})
    if found:
        details = "; ".join(reason for reasons in found.values() for reason in reasons)
        raise BudgetViolation(f"{result.attack} returned a poisoned graph outside {threat!r}: {details}. The "
                              "poisoning would be reported at a budget it exceeds")
    return result


def _result(data, graph, block, base_w, chosen, budget, loss, attack) -> PoisonResult:
    import copy

    ei, ew = block.flip(graph.edge_index, base_w, chosen)
    out = copy.copy(data)
    out.edge_index = ei
    if getattr(data, "edge_weight", None) is not None:
        out.edge_weight = ew
    flipped = torch.stack([block.row[chosen], block.col[chosen]])
    return PoisonResult(out, flipped, budget, loss, attack)


def transfer_poison(data, threat: EdgeFlips, *, surrogate: Optional[Callable[[int, int], nn.Module]] = None,
                    attack: Optional[Callable[[EdgeFlips, GraphAdapter], PRBCD]] = None, clean_epochs: int = 200,
                    seed: int = 0) -> PoisonResult:
    """Transfer poisoning: train ``surrogate`` on the clean graph, attack it with evasion PRBCD scoring *all*
    nodes against the self-training labels (training labels where known, predictions elsewhere), and return
    the perturbed graph for training (the baseline of Geisler et al. 2021, Sec. 5, and Xu et al. 2019).

    ``attack(threat, adapter)`` builds the evasion attack (default: :class:`PRBCD` with its defaults except
    ``spend_budget="always"``).  Evasion PRBCD keeps the flips that top a sample up to the budget only if the
    *surrogate's* evasion score does not drop; a poisoning attack is judged by a model retrained on the graph,
    where that score says little, and every flip the threat model allows is spent (as Metattack does).  If the
    returned graph still flips fewer than the budget (a user ``attack`` that refuses them, or
    ``max_flips_per_node`` leaving too few candidates), ``result.unspent`` says why and a warning is issued.
    """
    _check_data(data)
    if not isinstance(threat, EdgeFlips) or threat.local:
        raise TypeError("transfer_poison takes a global EdgeFlips threat, e.g. EdgeFlips(0.05)")
    model = _train_clean(surrogate or _default_surrogate, data, clean_epochs, seed)
    pseudo = data.clone()
    pseudo.y = self_training_labels(model, data)
    adapter = GraphAdapter(mask=None)
    evasion = attack(threat, adapter) if attack is not None else PRBCD(threat, adapter=adapter, seed=seed,
                                                                        spend_budget="always")
    result = evasion(model, pseudo)
    out = result.batch
    out.y = data.y
    flipped = result.inputs["flipped_edges"]
    allowed = int(threat.flips_allowed(undirected_pairs(data.edge_index).shape[1]))  # distinct edges, scale included
    unspent = ""
    if flipped.shape[1] < allowed:
        if getattr(evasion, "spend_budget", None) == "if_not_worse":
            why = ("the evasion attack kept a sample below the budget because the filling flips lowered the "
                   "surrogate's evasion score; build it with spend_budget='always' to spend the whole budget")
        elif threat.max_flips_per_node is not None:
            why = f"max_flips_per_node={threat.max_flips_per_node} left too few candidate pairs in the block"
        else:
            why = f"{type(evasion).__name__} returned fewer flips"
        unspent = f"{allowed - flipped.shape[1]} of {allowed} flips unused: {why}"
        warnings.warn(f"transfer_poison: {unspent}", stacklevel=2)
    return _verified(data, threat, PoisonResult(out, flipped, allowed, float(result.loss.mean()),
                                                f"transfer({evasion.describe()})", unspent))


def poison(data, threat: EdgeFlips, method: str = "meta", **kwargs) -> PoisonResult:
    """Poison ``data`` within ``threat``: ``method="meta"`` (:class:`MetaPRBCD`, keyword arguments go to it)
    or ``"transfer"`` (:func:`transfer_poison`).  Train the victim on ``result.data`` afterwards."""
    check_choice("method", method, ("meta", "transfer"))
    if method == "meta":
        return MetaPRBCD(threat, **kwargs)(data)
    return transfer_poison(data, threat, **kwargs)
