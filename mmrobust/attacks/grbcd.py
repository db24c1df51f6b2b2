"""Greedy randomized block coordinate descent for edge flips (Geisler et al. 2021)."""

from __future__ import annotations

import warnings

import torch

from ..errors import NonFiniteError, check_int
from ..threats.graph import EdgeFlips
from .edge_candidates import EdgeBlock, EdgeLookup, greedy_flips, rank_within_unit
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
    With ``max_flips_per_node`` each step walks the block in gradient order and takes the best pairs whose two
    nodes are still below the limit; a step's flips that no admissible pair could take carry over to the next
    steps.  If the budget still is not spent (no admissible pair left in the sampled blocks), the result says
    why in ``result.extras["edges/unspent"]`` and a warning is issued.

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
        node_flips = torch.zeros(graph.num_nodes, dtype=torch.long)   # greedy_flips counts on the CPU
        limit = problem.threat.max_flips_per_node
        spent = torch.zeros_like(budget)
        for s in range(steps):
            quota = per_step[: s + 1].sum(0) - spent      # this step's share plus what earlier steps left
            if int(quota.clamp_min(0).sum()) == 0:
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
                if limit is None:
                    rank = rank_within_unit(grad, block.unit, graph.num_units)
                    chosen = rank < quota.clamp_min(0)[block.unit]
                else:   # best admissible pairs in gradient order: a pair blocked by the limit leaves its slot
                    order = torch.argsort(grad, descending=True, stable=True)  # to the next one, not empty
                    chosen = greedy_flips(order, block.row, block.col, block.unit, quota.clamp_min(0), limit,
                                          node_flips)                        # node_flips updated in place
                ei, ew = block.flip(ei, ew, chosen)
                flipped_keys = torch.cat([flipped_keys, block.keys[chosen]])
                spent += torch.bincount(block.unit[chosen], minlength=graph.num_units)
        flipped = torch.stack([flipped_keys // graph.num_nodes, flipped_keys % graph.num_nodes])
        return problem.adversarial(ei, ew, flipped)

    def finish(self, victim, threats, adv, clean_logits, target_labels, logits=None):
        result = super().finish(victim, threats, adv, clean_logits, target_labels, logits)
        graph = victim.meta["graph"]
        budget = self.allowed_flips(graph, self.edge_threat)   # checked against the candidates in perturb
        used = result.size["edges"].to(budget.device).long()
        if bool((used < budget).any()):
            short = (used < budget).nonzero().squeeze(1).tolist()
            why = (f"max_flips_per_node={self.edge_threat.max_flips_per_node} left no admissible pair"
                   if self.edge_threat.max_flips_per_node is not None else "no candidate pair left")
            note = (f"{int((budget - used).clamp_min(0).sum())} of {int(budget.sum())} flips unused (graphs "
                    f"{short[:10]}{'...' if len(short) > 10 else ''}): {why} in the sampled blocks (pairs are "
                    "never flipped back); a larger block_size may find more")
            result.extras["edges/unspent"] = note
            warnings.warn(f"GRBCD: {note}", stacklevel=2)
        return result
