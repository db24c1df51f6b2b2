"""Projected randomized block coordinate descent for edge flips (Geisler et al. 2021).

The attack works on a random *block* of candidate node pairs (:mod:`~mmrobust.attacks.edge_candidates`),
so memory grows with ``edges + block_size`` and never with ``nodes^2``.  The relaxed perturbed graph

.. math:: A' = A + (1 - 2A) \\odot P

is materialised as a weighted edge list: clean edges keep weight ``w (1 - p)`` (soft deletion), missing
candidate pairs enter with weight ``p`` in both directions (soft insertion).  No sorting or coalescing
is needed per step because block pairs are matched to clean edges once per block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ..errors import NonFiniteError, check_choice, check_int, check_positive
from ..threats.base import ThreatModel
from ..threats.graph import project_capped_simplex
from ..utils import progress_bar
from .base import apply_masks
from .edge_candidates import (EPS, CandidatePairs, EdgeBlock, EdgeLookup, greedy_flips, limit_node_flips,
                              rank_within_unit)
from .graph_attack import EdgeProblem, GraphAttack, better


@dataclass
class Snapshot:
    """A block's keys and relaxed weights (and the feature perturbation) to return to later."""

    keys: Tensor
    weights: Tensor
    delta: Optional[Tensor]

    @classmethod
    def of(cls, block: EdgeBlock, delta: Optional[Tensor]) -> "Snapshot":
        return cls(block.keys.clone(), block.weights.clone(), None if delta is None else delta.clone())

    def restore(self, problem: EdgeProblem) -> Tuple[EdgeBlock, Optional[Tensor]]:
        return EdgeBlock(self.keys, self.weights.clone(), problem.pairs, problem.lookup), self.delta


class PRBCD(GraphAttack):
    """Projected Randomized Block Coordinate Descent (Geisler et al. 2021, https://arxiv.org/abs/2110.14038,
    Algorithm 1).

    .. math:: p_{t} = \\Pi_{\\{0 \\le p \\le 1,\\ \\mathbf{1}^\\top p \\le \\Delta\\}}
              \\big(p_{t-1} + \\alpha_t \\nabla_{p} \\mathcal{L}(f(X, A \\oplus p_{t-1}))\\big)

    over a random block of ``block_size`` candidate pairs; for the first ``epochs_resampling`` epochs the
    entries with (near) zero weight (at least half the block) are redrawn after every step, then the
    block is fixed and the step size decays as :math:`1/\\sqrt{t - T_{res} + 1}` (fine-tuning).  The
    learning rate is :math:`\\alpha = \\Delta / N \\cdot lr` (the budget-scaling heuristic of the
    reference implementation).  Finally ``final_samples`` discrete flip sets are drawn (the first is the
    top-:math:`\\Delta`, the rest Bernoulli(p)); samples over budget keep their largest-weight flips, and
    per graph the sample with the most successes (then highest loss) wins.  A graph whose winning sample
    flips fewer than :math:`\\Delta` pairs (few weights left above zero, or the per-node limit) then gets
    the rest of its budget from the block pairs with the largest loss gradient at that discrete graph, kept
    only if the graph's score does not drop -- the attack spends its whole budget whenever that helps
    (``spend_budget="always"`` keeps them regardless, for callers whose real objective is not the evasion
    score, e.g. :func:`~mmrobust.graph.poisoning.transfer_poison`).

    With a feature threat (``{"edges": EdgeFlips(...), "x": feature_ball(...)}``) the node features take
    a projected steepest-ascent step on the same objective each epoch (joint attack); binary features
    (``feature_ball(k, "bits")``) are rounded to ``k`` real bit flips at the end.

    Args:
        block_size: number of candidate pairs in the block (memory ~ ``edges + block_size``; must exceed the
            edge budget).  The default 100k is, on Cora and CiteSeer, at least as strong as PyG's
            ``PRBCDAttack`` with 250k and faster (``benchmarks/graph_prbcd.py``); graphs with far more node
            pairs (OGB scale) want millions, as in the paper.
        epochs: total gradient steps; ``epochs_resampling`` of them resample the block (default
            ``int(0.8 * epochs)``, the reference's 100 of 125).
        lr: base learning rate (scaled by budget / nodes).
        final_samples: discrete samples drawn at the end (``K`` in the paper).
        eval_every: every this many epochs (default 5) the top-:math:`\\Delta` flips are evaluated and the best
            weights kept (early stopping of the reference implementation); ``0`` disables it.
        loss: ``"prob_margin"`` (default, as PyG's ``PRBCDAttack``: stronger than ``"tanh_margin"`` at every
            budget on Cora, see ``benchmarks/results/graph_prbcd.md``), ``"tanh_margin"`` (the paper's
            recommendation for global attacks), ``"margin"``, ``"ce"``, ``"masked_ce"`` or a callable.
        progress: a progress bar over the epochs, shown only when stderr is a terminal (``False``: never).
        spend_budget: ``"if_not_worse"`` (default) keeps the flips that fill a graph up to its budget only when its
            score (successes, then loss) does not drop; ``"always"`` keeps them anyway, so every graph flips its
            whole budget unless the block (or ``max_flips_per_node``) has too few candidates left.

    Evasion by default.  Poisoning without meta-gradients: attack the *training* nodes of a model trained
    on the clean graph (``GraphAdapter(mask="train")``), take ``result.batch`` and retrain on it (the
    transfer poisoning Xu et al. 2019, https://arxiv.org/abs/1906.04214, evaluate).  Subclasses change
    what is maximised by overriding :meth:`relaxed_objective`; :meth:`optimise` (the relaxed problem),
    :meth:`resample` and :meth:`discretise` are the pieces of the algorithm.

    Example:
        >>> from mmrobust.attacks import PRBCD
        >>> import torch
        >>> from mmrobust.graph.data import toy_graph
        >>> from mmrobust.threats import EdgeFlips
        >>> model, data = toy_graph()  # a one-layer GCN on 20 nodes with 14 undirected edges
        >>> result = PRBCD(EdgeFlips(4), block_size=100, epochs=10, progress=False, seed=0)(model, data)
        >>> result.size["edges"], result.inputs["flipped_edges"].shape  # 4 pairs, as (row, col), row < col
        (tensor([4.]), torch.Size([2, 4]))
        >>> adversarial_graph = result.batch  # a Data like ``data``, with the perturbed edge_index
    """

    name = "prbcd"

    def __init__(self, threat, *, block_size: int = 100_000, epochs: int = 125,
                 epochs_resampling: Optional[int] = None, lr: float = 1000.0, final_samples: int = 20,
                 eval_every: int = 5, feature_step_size: float = 0.1, loss="prob_margin", progress: bool = True,
                 spend_budget: str = "if_not_worse", **kwargs):
        super().__init__(threat, loss=loss, **kwargs)
        #: a progress bar over the epochs, shown on a terminal only (``False``: never)
        self.progress = bool(progress)
        if self.edge_threat is None and isinstance(self.threat, ThreatModel):
            raise TypeError("PRBCD needs an EdgeFlips threat (use PGD for feature-only attacks)")
        self.block_size = check_int("block_size", block_size, 1)
        self.epochs = check_int("epochs", epochs, 1)
        if epochs_resampling is None:   # the reference's 100 of 125 epochs, for any number of epochs
            epochs_resampling = int(0.8 * self.epochs)
        self.epochs_resampling = check_int("epochs_resampling", epochs_resampling, 0)
        if self.epochs_resampling > self.epochs:
            raise ValueError(f"epochs_resampling must lie in [0, epochs={self.epochs}], got {epochs_resampling}; "
                             f"leave it unset for {int(0.8 * self.epochs)} (0.8 x epochs)")
        self.lr = check_positive("lr", lr)
        self.final_samples = check_int("final_samples", final_samples, 1)
        self.eval_every = check_int("eval_every", eval_every, 0)
        self.feature_step_size = check_positive("feature_step_size", feature_step_size)
        self.spend_budget = check_choice("spend_budget", spend_budget, ("if_not_worse", "always"))

    def settings(self) -> List[str]:
        return super().settings() + [f"block_size={self.block_size}", f"epochs={self.epochs}",
                                    f"epochs_resampling={self.epochs_resampling}"] + \
            ([f"spend_budget={self.spend_budget}"] if self.spend_budget != "if_not_worse" else [])

    def perturb(self, victim, threats, target_labels, clean_logits):
        problem = self.edge_problem(victim, target_labels)
        if int(problem.budget.max()) >= self.block_size:
            raise ValueError(f"block_size ({self.block_size}) must exceed the edge budget ({int(problem.budget.max())})")
        feat = threats.get("x")
        block, delta = self.optimise(problem, feat)
        return self.discretise(problem, block, delta, feat)

    # -- the relaxed problem -------------------------------------------------------------------------
    def relaxed_objective(self, problem: EdgeProblem, logits: Tensor) -> Tensor:
        """The scalar PRBCD ascends (sum over graphs of their outputs' mean loss)."""
        return self.graph_objective(logits, problem.victim, problem.target_labels)[0]

    def optimise(self, problem: EdgeProblem, feat: Optional[ThreatModel] = None
                 ) -> Tuple[EdgeBlock, Optional[Tensor]]:
        """Algorithm 1, lines 1-15: the final block of relaxed flip weights (and feature perturbation)."""
        victim, graph = problem.victim, problem.graph
        sizes = (graph.ptr[1:] - graph.ptr[:-1]).to(problem.x.dtype)
        delta = radius = None
        if feat is not None:
            delta = apply_masks({"x": torch.zeros_like(problem.x)}, victim)["x"]
            radius = feat.radius(problem.x)
        block = problem.sample_block(self.block_size)
        best: Optional[Tuple[tuple, Snapshot]] = None
        bar = progress_bar(getattr(self, "progress", True), total=self.epochs, desc=type(self).__name__, unit="epoch")
        for epoch in range(self.epochs):
            leaves = [block.weights.detach().requires_grad_(True)]
            if feat is not None:
                leaves.append(delta.detach().requires_grad_(True))
            p, xd = leaves[0], (leaves[1] if feat is not None else None)
            ei, ew = block.perturbed(graph.edge_index, problem.base_weight, p)
            grads = torch.autograd.grad(self.relaxed_objective(problem, problem.logits(ei, ew, xd)), leaves)
            if not all(bool(torch.isfinite(g).all()) for g in grads):
                raise NonFiniteError("NaN/Inf in the gradient of the edge weights; the model or loss overflows")
            with torch.no_grad():
                decay = math.sqrt(max(0, epoch - self.epochs_resampling) + 1)
                lr = problem.budget.to(p.dtype)[block.unit] / sizes[block.unit] * self.lr / decay
                w = project_capped_simplex(p + lr * grads[0], block.unit, problem.budget, graph.num_units)
                block.weights = w.clamp(EPS, 1 - EPS)
                if feat is not None:
                    delta = feat.step(delta, grads[1], radius * self.feature_step_size / decay)
                    delta = feat.project(apply_masks({"x": delta}, victim)["x"], problem.x)
                if self.eval_every and (epoch + 1) % self.eval_every == 0:
                    score = _total(self.unit_score(problem.flipped_logits(block, self.top_budget(problem, block),
                                                                          delta), victim, problem.target_labels))
                    if best is None or bool(better(score, best[0])):
                        best = (score, Snapshot.of(block, delta))
                if epoch < self.epochs_resampling - 1:
                    block = self.resample(problem, block)
                elif epoch == self.epochs_resampling - 1 and best is not None:
                    block, delta = best[1].restore(problem)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if best is not None:
            with torch.no_grad():
                score = _total(self.unit_score(problem.flipped_logits(block, self.top_budget(problem, block), delta),
                                               victim, problem.target_labels))
            if not bool(better(score, best[0])):
                block, delta = best[1].restore(problem)
        return block, delta

    def resample(self, problem: EdgeProblem, block: EdgeBlock) -> EdgeBlock:
        """Keep the heavier half (or all entries above eps), redraw the rest (Algorithm 1, lines 9-14)."""
        return resample_block(block, problem.pairs, problem.lookup, self.block_size, problem.generator,
                              problem.device)

    @staticmethod
    def top_budget(problem: EdgeProblem, block: EdgeBlock) -> Tensor:
        """Per graph, its ``budget`` block entries of largest weight (above eps)."""
        rank = rank_within_unit(block.weights, block.unit, problem.num_units)
        return (rank < problem.budget[block.unit]) & (block.weights > EPS)

    # -- back to a discrete graph ----------------------------------------------------------------------
    def discretise(self, problem: EdgeProblem, block: EdgeBlock, delta: Optional[Tensor],
                   feat: Optional[ThreatModel] = None):
        """Sample discrete flips (Algorithm 1, line 16), keep the best sample per graph, then spend the rest
        of the budget (:meth:`fill_budget`).  Returns the adversarial inputs (and logits when known)."""
        victim, limit = problem.victim, problem.threat.max_flips_per_node
        with torch.no_grad():
            if delta is not None and hasattr(feat, "discretize"):
                delta = feat.discretize(delta, problem.x)
            w = block.weights.clone()
            w[w <= EPS] = 0
            best = None
            for i in range(self.final_samples):
                if i == 0:
                    chosen = self.top_budget(problem, block) & (w > 0)
                else:
                    gen = problem.generator
                    u = torch.rand(w.shape, generator=gen, device=w.device) if gen is None or \
                        gen.device == w.device else torch.rand(w.shape, generator=gen).to(w.device)
                    chosen = u < w
                    # over budget: keep the largest-weight sampled flips
                    rank = rank_within_unit(torch.where(chosen, w, torch.full_like(w, -1.0)), block.unit,
                                            problem.num_units)
                    chosen &= rank < problem.budget[block.unit]
                if limit is not None:
                    chosen = limit_node_flips(chosen, w, block.row, block.col, limit)
                logits = problem.flipped_logits(block, chosen, delta)
                best = _keep_better(best, (chosen, self.unit_score(logits, victim, problem.target_labels), logits),
                                    block.unit)
        chosen, score, logits = best
        chosen, logits = self.fill_budget(problem, block, chosen, score, logits, delta)
        ei, ew = block.flip(problem.graph.edge_index, problem.base_weight, chosen)
        adv = problem.adversarial(ei, ew, torch.stack([block.row[chosen], block.col[chosen]]), delta)
        return (adv, logits) if logits is not None else adv

    def fill_budget(self, problem: EdgeProblem, block: EdgeBlock, chosen: Tensor, score, logits: Optional[Tensor],
                    delta: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """Add to every graph that flips fewer than its budget the block pairs with the largest first-order
        gain at its discrete graph (the greedy step of Geisler et al.'s GRBCD), within the per-node limit;
        per graph the filled flips are kept when its score does not drop (always with ``spend_budget="always"``).  Returns the flips and their
        logits (``None`` when graphs took different choices)."""
        short = problem.budget - torch.bincount(block.unit[chosen], minlength=problem.num_units)
        if not bool((short > 0).any()):
            return chosen, logits
        p = chosen.to(problem.x.dtype).requires_grad_(True)
        ei, ew = block.perturbed(problem.graph.edge_index, problem.base_weight, p)
        (grad,) = torch.autograd.grad(self.relaxed_objective(problem, problem.logits(ei, ew, delta)), [p])
        with torch.no_grad():
            limit = problem.threat.max_flips_per_node
            grad = grad.masked_fill(chosen, float("-inf"))
            if limit is None:
                extra = (rank_within_unit(grad, block.unit, problem.num_units) < short.clamp_min(0)[block.unit]) \
                    & ~chosen
            else:
                used = torch.bincount(torch.cat([block.row[chosen], block.col[chosen]]),
                                      minlength=problem.graph.num_nodes)
                order = torch.argsort(grad, descending=True)
                order = order[~chosen[order]]
                extra = greedy_flips(order, block.row, block.col, block.unit, short.clamp_min(0), limit, used)
            if not bool(extra.any()):
                return chosen, logits
            filled = chosen | extra
            f_logits = problem.flipped_logits(block, filled, delta)
            if getattr(self, "spend_budget", "if_not_worse") == "always":
                return filled, f_logits
            win = better(self.unit_score(f_logits, problem.victim, problem.target_labels), score, or_equal=True)
        if bool(win.all()):
            return filled, f_logits
        if not bool(win.any()):
            return chosen, logits
        return torch.where(win[block.unit], filled, chosen), None


def resample_block(block: EdgeBlock, pairs: CandidatePairs, lookup: EdgeLookup, block_size: int,
                   generator: Optional[torch.Generator], device) -> EdgeBlock:
    """A block of ``block_size`` candidates that keeps the heavier half of ``block`` (or all its entries above
    eps) with their weights and redraws the rest (Geisler et al. 2021, Algorithm 1, lines 9-14)."""
    w = block.weights
    half = w.numel() // 2
    alive = (w > EPS).nonzero().squeeze(1)
    # usually few entries carry mass, so selecting them avoids sorting the whole block
    keep = alive if alive.numel() <= half else torch.topk(w, w.numel() - half, sorted=False).indices
    new_keys = pairs.sample(block_size - keep.numel(), generator, device, unique=False)
    keys, inverse = torch.unique(torch.cat([block.keys[keep], new_keys]), sorted=True, return_inverse=True)
    weights = torch.full(keys.shape, EPS, dtype=w.dtype, device=w.device)
    weights[inverse[:keep.numel()]] = w[keep]   # kept keys are distinct, so no write conflicts
    return EdgeBlock(keys, weights, pairs, lookup)


def _keep_better(best, candidate, unit: Tensor):
    """Per graph, the better of two ``(chosen, score, logits)`` samples (logits ``None`` once graphs mix)."""
    if best is None:
        return candidate
    win = better(candidate[1], best[1])
    if not bool(win.any()):
        return best
    if bool(win.all()):
        return candidate
    chosen = torch.where(win[unit], candidate[0], best[0])
    return chosen, tuple(torch.where(win, s, b) for s, b in zip(candidate[1], best[1])), None


def _total(score):
    return score[0].sum(), score[1].sum()
