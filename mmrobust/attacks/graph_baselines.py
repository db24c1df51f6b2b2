"""Baseline structure attacks: uniformly random edge flips and DICE.

Both spend the full :class:`~mmrobust.threats.graph.EdgeFlips` budget of every graph without looking at
the model (within ``max_flips_per_node`` when the threat sets it), and are the reference points a
gradient attack such as PRBCD has to beat.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..adapters.graph import GraphStructure
from .edge_candidates import EdgeBlock, greedy_flips, rank_within_unit
from .graph_attack import EdgeProblem, GraphAttack


class RandomFlips(GraphAttack):
    """Flip ``budget`` node pairs per graph drawn uniformly from the candidate pairs of the threat model
    (all pairs, or pairs incident to the targets for ``EdgeFlips(local=True)``):

    .. math:: \\mathcal{F} \\sim \\mathrm{Uniform}\\{F \\subseteq \\mathcal{C} : |F| = \\Delta\\}

    Example:
        >>> from mmrobust.attacks import RandomFlips
        >>> import torch
        >>> from mmrobust.graph.data import toy_graph
        >>> from mmrobust.threats import EdgeFlips
        >>> model, data = toy_graph()  # a one-layer GCN on 20 nodes with 14 undirected edges
        >>> result = RandomFlips(EdgeFlips(0.3), seed=0)(model, data)  # int(0.3 * 14) = 4 flips
        >>> result.size["edges"], result.batch.edge_index.shape
        (tensor([4.]), torch.Size([2, ...]))
    """

    name = "random_flips"

    def __init__(self, threat, **kwargs):
        super().__init__(threat, **kwargs)
        if self.edge_threat is None or not isinstance(self.threat, type(self.edge_threat)):
            raise TypeError("RandomFlips takes an EdgeFlips threat")

    def choose(self, problem: EdgeProblem, pool: int = 2) -> EdgeBlock:
        """At least ``budget`` distinct candidates per graph, drawn ``pool`` x the total budget at a time."""
        pairs, device = problem.pairs, problem.device
        keys = torch.empty(0, dtype=torch.long, device=device)
        need = int(problem.budget.sum())
        for _ in range(100):
            keys = torch.unique(torch.cat([keys, pairs.sample(max(pool * need, 16), problem.generator, device)]))
            counts = torch.bincount(pairs.decode(keys)[2], minlength=problem.num_units)
            if bool((counts >= problem.budget).all()):
                break
        return EdgeBlock(keys, torch.zeros(keys.shape, device=device), pairs, problem.lookup)

    def perturb(self, victim, threats, target_labels, clean_logits):
        problem = self.edge_problem(victim, target_labels)
        graph, budget, gen, device = problem.graph, problem.budget, problem.generator, problem.device
        limit = problem.threat.max_flips_per_node
        # with a per-node limit some candidates are unusable: draw larger pools until every graph is full
        for pool in (2, 8, 32) if limit is not None else (2,):
            block = self.choose(problem, pool)
            prio = torch.rand(block.keys.shape, generator=gen) if gen is None or gen.device.type == "cpu" else \
                torch.rand(block.keys.shape, generator=gen, device=device)
            chosen = self.select(block, graph, budget, prio.to(device), limit)
            if limit is None or bool((torch.bincount(block.unit[chosen], minlength=graph.num_units) >= budget).all()):
                break
        ei, ew = block.flip(graph.edge_index, problem.base_weight, chosen)
        return problem.adversarial(ei, ew, torch.stack([block.row[chosen], block.col[chosen]]))

    def select(self, block: EdgeBlock, graph: GraphStructure, budget: Tensor, priority: Tensor,
               limit: Optional[int] = None) -> Tensor:
        """The ``budget`` candidates of each graph with the highest random ``priority`` (with a per-node
        ``limit``: greedily in that order, skipping pairs with a node already at its limit)."""
        if limit is None:
            return rank_within_unit(priority, block.unit, graph.num_units) < budget[block.unit]
        order = torch.argsort(priority, descending=True)
        return greedy_flips(order, block.row, block.col, block.unit, budget, limit, num_nodes=graph.num_nodes)


class DICE(RandomFlips):
    """"Delete Internally, Connect Externally" (Waniek et al. 2018, https://arxiv.org/abs/1608.00375):
    random flips restricted to deleting edges between same-label nodes and inserting edges between
    different-label nodes,

    .. math:: \\mathcal{C}_{DICE} = \\{(i,j) \\in E : y_i = y_j\\} \\cup \\{(i,j) \\notin E : y_i \\ne y_j\\},

    half of the budget deleting random internal edges and the other half inserting random external
    ones (the split of the common reference implementation, e.g. DeepRobust).  Node classification only.

    Example:
        >>> from mmrobust.attacks import DICE
        >>> import torch
        >>> from mmrobust.graph.data import toy_graph
        >>> from mmrobust.threats import EdgeFlips
        >>> model, data = toy_graph()  # a one-layer GCN on 20 nodes with 14 undirected edges
        >>> result = DICE(EdgeFlips(4), seed=0)(model, data)
        >>> (row, col), y = result.inputs["flipped_edges"], data.y
        >>> clean = {(int(a), int(b)) for a, b in data.edge_index.t()}
        >>> existed = torch.tensor([(int(a), int(b)) in clean for a, b in zip(row, col)])
        >>> bool((existed == (y[row] == y[col])).all())  # deleted edges were internal, inserted ones external
        True
    """

    name = "dice"

    def choose(self, problem, pool=2):
        graph, device = problem.graph, problem.device
        if graph.node_labels is None:
            raise ValueError("DICE needs node labels (node classification)")
        y = graph.node_labels
        # all same-label clean edges (row < col) are deletion candidates; insertions come from random pairs
        row, col = graph.edge_index
        keep = (row < col) & (y[row] == y[col])
        if problem.pairs.local:
            is_target = torch.zeros(graph.num_nodes, dtype=torch.bool, device=device)
            is_target[graph.targets] = True
            keep &= is_target[row] | is_target[col]
        deletions = row[keep] * graph.num_nodes + col[keep]
        block = super().choose(problem, pool)
        keys = torch.unique(torch.cat([deletions, block.keys]))
        return EdgeBlock(keys, torch.zeros(keys.shape, device=device), problem.pairs, problem.lookup)

    def select(self, block, graph, budget, priority, limit=None):
        y = graph.node_labels
        same = y[block.row] == y[block.col]
        deletable, insertable = block.exists & same, ~block.exists & ~same
        units = graph.num_units
        minus_inf = torch.full_like(priority, float("-inf"))
        n_del = torch.bincount(block.unit[deletable], minlength=units)
        n_del = torch.minimum(n_del, budget // 2)         # half the budget deletes (when it can)
        if limit is not None:  # greedily: deletions first (up to half the budget), then insertions
            used = torch.zeros(graph.num_nodes, dtype=torch.long)
            order = torch.argsort(priority, descending=True)
            dels = greedy_flips(order[deletable[order]], block.row, block.col, block.unit, n_del, limit, used)
            n_del = torch.bincount(block.unit[dels], minlength=units)
            ins = greedy_flips(order[insertable[order]], block.row, block.col, block.unit, budget - n_del, limit,
                               used)
            return dels | ins
        del_rank = rank_within_unit(torch.where(deletable, priority, minus_inf), block.unit, units)
        ins_rank = rank_within_unit(torch.where(insertable, priority, minus_inf), block.unit, units)
        return ((deletable & (del_rank < n_del[block.unit]))
                | (insertable & (ins_rank < (budget - n_del)[block.unit])))
