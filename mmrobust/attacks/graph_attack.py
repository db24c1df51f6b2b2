"""The base of attacks on PyG graphs, and the edge problem every edge attack starts from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ..adapters.base import BatchView
from ..adapters.graph import GraphStructure
from ..threats.base import ThreatModel
from ..threats.graph import EdgeFlips
from .base import Attack, AttackResult
from .edge_candidates import EPS, CandidatePairs, EdgeBlock, EdgeLookup


@dataclass
class EdgeProblem:
    """One edge attack's problem: the victim graph, its candidate pairs and per-graph flip budget.

    Attributes:
        victim: the :class:`BatchView` (scored outputs, labels, closures).
        graph: its clean structure (:class:`GraphStructure`).
        x: clean node features in unit layout (``victim.inputs["x"]``).
        threat: the :class:`EdgeFlips` threat.
        pairs: the candidate pairs that threat lets flip.
        lookup: clean edges, for matching candidate pairs.
        budget: ``(units,)`` flips allowed per graph.
        base_weight: clean edge weights (ones for an unweighted graph), in the features' dtype.
        generator: the attack's random generator (``None``: the global RNG).
        target_labels: target classes of a targeted attack, else ``None``.
    """

    victim: BatchView
    graph: GraphStructure
    x: Tensor
    threat: EdgeFlips
    pairs: CandidatePairs
    lookup: EdgeLookup
    budget: Tensor
    base_weight: Tensor
    generator: Optional[torch.Generator]
    target_labels: Optional[Tensor] = None

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def num_units(self) -> int:
        return self.graph.num_units

    def sample_block(self, size: int) -> EdgeBlock:
        """A block of ``size`` random distinct candidates (fewer after deduplication), weights at ``EPS``."""
        keys = self.pairs.sample(size, self.generator, self.device)
        return EdgeBlock(keys, torch.full(keys.shape, EPS, dtype=self.x.dtype, device=self.device), self.pairs,
                         self.lookup)

    def logits(self, edge_index: Tensor, edge_weight: Tensor, delta: Optional[Tensor] = None) -> Tensor:
        """The model's scored outputs on a (weighted) edge list, with node features ``x + delta``."""
        x = self.x if delta is None else self.x + delta
        return self.graph.forward_with_edges(self.graph.nodes_from_inputs(x), edge_index, edge_weight)

    def flipped_logits(self, block: EdgeBlock, chosen: Tensor, delta: Optional[Tensor] = None) -> Tensor:
        """Outputs on the clean graph with the block entries ``chosen`` flipped."""
        return self.logits(*block.flip(self.graph.edge_index, self.base_weight, chosen), delta)

    def adversarial(self, edge_index: Tensor, edge_weight: Tensor, flipped: Tensor,
                    delta: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """The attack's returned inputs: features, perturbed edges (and weights for a weighted graph) and the
        flipped pairs ``(2, K)``, ``row < col``."""
        adv = {"x": self.x if delta is None else self.x + delta, "edge_index": edge_index, "flipped_edges": flipped}
        if self.graph.edge_weight is not None:
            adv["edge_weight"] = edge_weight
        return adv


class GraphAttack(Attack):
    """Base for attacks on PyG graphs that may flip edges (:class:`EdgeFlips`) and perturb node features.

    ``threat`` is an :class:`EdgeFlips`, a feature threat (e.g. :func:`~mmrobust.threats.graph.feature_ball`),
    or a mapping ``{"edges": EdgeFlips(...), "x": feature_ball(...)}`` for a joint attack.  The result's
    ``inputs`` hold the perturbed ``"x"`` (unit layout), ``"edge_index"``/``"edge_weight"`` and the
    ``"flipped_edges"`` ``(2, K)`` (row < col); ``size["edges"]`` counts flips per graph.  ``result.batch``
    is a whole graph: every per-edge attribute follows its edge (:mod:`mmrobust.adapters.graph_edges`).

    Example:
        >>> from mmrobust.attacks import GraphAttack, RandomFlips
        >>> import torch
        >>> from mmrobust.graph.data import toy_graph
        >>> from mmrobust.threats import EdgeFlips
        >>> model, data = toy_graph()  # a one-layer GCN on 20 nodes with 14 undirected edges
        >>> attack = RandomFlips(EdgeFlips(2), seed=0)
        >>> result = attack(model, data)
        >>> isinstance(attack, GraphAttack), sorted(result.inputs), result.size["edges"]
        (True, ['edge_index', 'flipped_edges', 'x'], tensor([2.]))
    """

    def __init__(self, threat, **kwargs):
        if isinstance(threat, dict) and "edges" in threat and not isinstance(threat["edges"], EdgeFlips):
            raise TypeError("threat['edges'] must be an EdgeFlips")
        super().__init__(threat, **kwargs)

    @property
    def changes_structure(self) -> bool:
        return self.edge_threat is not None

    @property
    def edge_threat(self) -> Optional[EdgeFlips]:
        if isinstance(self.threat, EdgeFlips):
            return self.threat
        if isinstance(self.threat, ThreatModel):
            return None
        return self.threat.get("edges")

    def threats_for(self, victim: BatchView) -> Dict[str, ThreatModel]:
        if "graph" not in victim.meta:
            raise TypeError("graph attacks need a GraphAdapter victim (a torch_geometric Data or Batch)")
        if isinstance(self.threat, EdgeFlips):
            return {}
        if isinstance(self.threat, ThreatModel):
            return {"x": self.threat}
        features = {k: v for k, v in self.threat.items() if k != "edges"}
        unknown = set(features) - {"x"}
        if unknown:
            raise KeyError(f"graph threats name inputs {sorted(unknown)}; use 'edges' and 'x'")
        return features

    def verified_threats(self, victim: BatchView) -> Dict[str, ThreatModel]:
        """What :mod:`mmrobust.threats.verify` re-measures: the feature threats and the edge budget (``"edges"``,
        counted on the returned ``edge_index``; :meth:`threats_for` leaves it out, since no input tensor carries it)."""
        threats = self.threats_for(victim)
        return threats if self.edge_threat is None else {**threats, "edges": self.edge_threat}

    def edge_problem(self, victim: BatchView, target_labels: Optional[Tensor] = None) -> EdgeProblem:
        """What every edge attack starts from: the graph, its features, the candidate pairs, the per-graph
        flip budget and the attack's generator."""
        graph: GraphStructure = victim.meta["graph"]
        x = victim.inputs["x"]
        pairs = CandidatePairs(graph, self.edge_threat.local)
        budget = self.edge_budget(graph, self.edge_threat, pairs)
        return EdgeProblem(victim=victim, graph=graph, x=x, threat=self.edge_threat, pairs=pairs,
                           lookup=EdgeLookup(graph.edge_index, graph.num_nodes), budget=budget,
                           base_weight=self.edge_weights(graph, x), generator=self.generator(),
                           target_labels=target_labels)

    def edge_budget(self, graph: GraphStructure, threat: EdgeFlips, pairs: CandidatePairs) -> Tensor:
        """``(units,)`` flips allowed per graph; refuses directed graphs and budgets above the candidates."""
        from torch_geometric.utils import is_undirected

        if not is_undirected(graph.edge_index, num_nodes=graph.num_nodes):
            raise ValueError("EdgeFlips flips undirected pairs, but edge_index is directed; store both directions "
                             "(e.g. torch_geometric.transforms.ToUndirected()) before attacking")
        budget = GraphAttack.allowed_flips(graph, threat)   # also called unbound by MetaPRBCD (poisoning.py)
        too_big = budget > pairs.per_unit
        if bool(too_big.any()):
            u = int(too_big.nonzero()[0])
            raise ValueError(f"the edge budget ({int(budget[u])} flips) exceeds the {int(pairs.per_unit[u])} "
                             f"candidate node pairs of graph {u}; lower budget")
        return budget

    @staticmethod
    def allowed_flips(graph: GraphStructure, threat: EdgeFlips) -> Tensor:
        """``(units,)`` flips ``threat`` allows per graph (of the target's degree when local), unchecked."""
        return threat.flips_allowed(graph.target_degree() if threat.local else graph.undirected_edges)

    def finish(self, victim, threats, adv, clean_logits, target_labels, logits=None) -> AttackResult:
        result = super().finish(victim, threats, adv, clean_logits, target_labels, logits)
        if "flipped_edges" in adv:
            graph: GraphStructure = victim.meta["graph"]
            flipped = adv["flipped_edges"]
            result.size["edges"] = torch.zeros(graph.num_units, dtype=torch.float32,
                                               device=flipped.device).index_add_(
                0, graph.node_unit[flipped[0]], torch.ones(flipped.shape[1], device=flipped.device))
        return result

    # -- shared helpers ----------------------------------------------------------------------------
    def graph_objective(self, logits: Tensor, victim: BatchView, target_labels) -> Tuple[Tensor, Tensor]:
        """Scalar objective (sum over graphs of the mean loss of their outputs) and per-output loss."""
        loss = self.output_loss(logits, victim, target_labels)
        return victim.per_unit(loss, "mean").sum(), loss

    def unit_score(self, logits: Tensor, victim: BatchView, target_labels) -> Tuple[Tensor, Tensor]:
        """Per unit: (number of successful outputs, mean loss), compared lexicographically (:func:`better`)."""
        succ = victim.per_unit(self.is_success(logits, victim, target_labels).float())
        return succ, victim.per_unit(self.output_loss(logits, victim, target_labels), "mean")

    @staticmethod
    def edge_weights(graph: GraphStructure, like: Tensor) -> Tensor:
        if graph.edge_weight is not None:
            return graph.edge_weight.to(like.dtype)
        return torch.ones(graph.edge_index.shape[1], dtype=like.dtype, device=like.device)


def better(score, best, or_equal: bool = False) -> Tensor:
    """Per unit, whether ``score`` (successes, loss) beats ``best``: more successes, then a higher loss."""
    succ, loss = score
    bsucc, bloss = best
    tie = (succ == bsucc) & ((loss >= bloss) if or_equal else (loss > bloss))
    return (succ > bsucc) | tie
