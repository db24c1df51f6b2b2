"""Greedy randomized block coordinate descent for edge flips (Geisler et al. 2021)."""

from __future__ import annotations

import torch

from ..errors import NonFiniteError, check_int
from ..threats.graph import EdgeFlips
from .edge_candidates import EdgeBlock, EdgeLookup, limit_node_flips, rank_within_unit
from .graph_attack import GraphAttack


class GRBCD(GraphAttack):
    """Greedy Randomized Block Coordinate Descent (Geisler et al. 2021, https://arxiv.org/abs/2110.14038,
    Algorithm 2).

    The budget is spent over ``epochs`` greedy steps: each step draws a random block of candidate pairs,
    takes the gradient of the loss w.r.t. their (relaxed) flip weights at :math:`p = 0`, and flips the
    :math:`\\lceil\\Delta / E\\rceil`-ish pairs with the largest gradient

    .. math:: \\mathcal{F}_t = \\operatorname{top-k}_{b \\in \\text{block}} \\nabla_{p_b}
              \\mathcal{L}(f(X, A_{t-1} \\oplus p))|_{p=0},\\quad A_t = A_{t-1} \\oplus \\mathcal{F}_t

    Pairs flipped once are never flipped back.  Default loss: masked cross-entropy (the paper's choice).

    Example:
        >>> from mmrobust.attacks import GRBCD
        >>> import torch
        >>> from mmrobust.graph.data import toy_graph
        >>> from mmrobust.threats import EdgeFlips
        >>> model, data = toy_graph()  # a one-layer GCN on 20 nodes with 14 undirected edges
        >>> result = GRBCD(EdgeFlips(4), block_size=100, epochs=4, seed=0)(model, data)
        >>> result.size["edges"], result.inputs["flipped_edges"].shape
        (tensor([4.]), torch.Size([2, 4]))
    """

    name = "grbcd"

    def __init__(self, threat, *, block_size: int = 250_000, epochs: int = 125, loss="masked_ce", **kwargs):
        super().__init__(threat, loss=loss, **kwargs)
        if not isinstance(self.threat, EdgeFlips):
            raise TypeError("GRBCD takes an EdgeFlips threat")
        self.block_size = check_int("block_size", block_size, 1)
        self.epochs = check_int("epochs", epochs, 1)

    def perturb(self, victim, threats, target_labels, clean_logits):
        problem = self.edge_problem(victim, target_labels)
        graph, budget, device = problem.graph, problem.budget, problem.device
        steps = max(1, min(self.epochs, int(budget.max())))
        # per unit and step: the budget split as evenly as possible, remainder first (reference schedule)
        t = torch.arange(steps, device=device)
        per_step = budget[None, :] // steps + (t[:, None] < budget[None, :] % steps).long()
        ei, ew = graph.edge_index, problem.base_weight
        flipped_keys = torch.empty(0, dtype=torch.long, device=device)
        node_flips = torch.zeros(graph.num_nodes, dtype=torch.long, device=device)
        limit = problem.threat.max_flips_per_node
        for s in range(steps):
            if int(per_step[s].sum()) == 0:
                continue
            keys = problem.pairs.sample(self.block_size, problem.generator, device)
            keys = keys[~torch.isin(keys, flipped_keys)]
            block = EdgeBlock(keys, torch.zeros(keys.shape, dtype=problem.x.dtype, device=device), problem.pairs,
                              EdgeLookup(ei, graph.num_nodes))
            p = block.weights.requires_grad_(True)
            pei, pew = block.perturbed(ei, ew, p)
            obj, _ = self.graph_objective(problem.logits(pei, pew), victim, target_labels)
            (grad,) = torch.autograd.grad(obj, [p])
            if not bool(torch.isfinite(grad).all()):  # NaN ranks last: the step would flip nothing, silently
                raise NonFiniteError("NaN/Inf in the gradient of the edge weights; the model or loss overflows (or "
                                     "its backward is undefined at these weights)")
            with torch.no_grad():
                if limit is not None:
                    full = (node_flips[block.row] >= limit) | (node_flips[block.col] >= limit)
                    grad = grad.masked_fill(full, float("-inf"))
                rank = rank_within_unit(grad, block.unit, graph.num_units)
                chosen = (rank < per_step[s][block.unit]) & torch.isfinite(grad)
                if limit is not None:
                    chosen = limit_node_flips(chosen, grad, block.row, block.col, limit, node_flips)
                ei, ew = block.flip(ei, ew, chosen)
                flipped_keys = torch.cat([flipped_keys, block.keys[chosen]])
                node_flips.index_add_(0, block.row[chosen], torch.ones_like(block.row[chosen]))
                node_flips.index_add_(0, block.col[chosen], torch.ones_like(block.col[chosen]))
        flipped = torch.stack([flipped_keys // graph.num_nodes, flipped_keys % graph.num_nodes])
        return problem.adversarial(ei, ew, flipped)
