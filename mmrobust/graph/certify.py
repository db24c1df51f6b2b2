"""Sparsity-aware randomized smoothing for graphs (Bojchevski, Gasteiger, Günnemann 2020, "Efficient Robustness
Certificates for Discrete Data", https://arxiv.org/abs/2008.12952).

The smoothed node classifier :math:`g(A)_v = \\arg\\max_c P(f(\\phi(A))_v = c)` draws each undirected pair of
:math:`\\phi(A)` independently: an existing edge is deleted with probability :math:`p_-`, a missing pair is added
with probability :math:`p_+` (and likewise for binary node attributes).  Sampling is sparse: deletions are drawn
per edge, additions as a Binomial number of uniformly drawn pairs, so memory is ~ ``edges + additions``.

Certificate (Sec. 3, Theorem 1 and Eq. 4): for any graph :math:`\\tilde A` with at most ``r_a`` additions and
``r_d`` deletions, the likelihood ratio :math:`P(\\phi(\\tilde A) = z) / P(\\phi(A) = z)` depends only on how many
of the ``r_a`` added pairs (``i``) and ``r_d`` deleted pairs (``j``) are present in ``z``; Neyman-Pearson fills
these ``(r_a+1)(r_d+1)`` regions in increasing order of the ratio with the clean mass :math:`\\underline{p_A}` and
the worst-case probability of the top class under :math:`\\tilde A` is what they hold under :math:`\\tilde A`.
The prediction is certified when that exceeds 1/2 (the top class against all others, with
:math:`\\underline{p_A}` a one-sided Clopper-Pearson bound as in Cohen et al. 2019).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from scipy.stats import binom
from torch import Tensor, nn

from ..adapters.calls import graph_call
from ..attacks.base import attack_mode
from ..certify import ABSTAIN, clopper_pearson_lower
from ..errors import NonFiniteError, check_fraction, check_int


def worst_case_top_probability(p_lower: float, r_add: int, r_del: int, p_plus: float, p_minus: float) -> float:
    """Smallest probability of the top class under any input with ``r_add`` additions and ``r_del`` deletions,
    given it is at least ``p_lower`` under the clean input (Bojchevski et al. 2020, Theorem 1)."""
    if r_add == 0 and r_del == 0:
        return p_lower
    i = np.arange(r_add + 1)[:, None]
    j = np.arange(r_del + 1)[None, :]
    # clean: added pairs are absent (present in z w.p. p+), deleted pairs present (kept w.p. 1 - p-)
    clean = binom.logpmf(i, r_add, p_plus) + binom.logpmf(j, r_del, 1 - p_minus)
    pert = binom.logpmf(i, r_add, 1 - p_minus) + binom.logpmf(j, r_del, p_plus)
    clean, pert = np.broadcast_to(clean, (r_add + 1, r_del + 1)).ravel(), np.broadcast_to(
        pert, (r_add + 1, r_del + 1)).ravel()
    order = np.argsort(pert - clean, kind="stable")          # increasing likelihood ratio
    mass, mass_pert = np.exp(clean[order]), np.exp(pert[order])
    before = np.concatenate([[0.0], np.cumsum(mass)[:-1]])
    take = np.clip((p_lower - before) / np.maximum(mass, 1e-300), 0.0, 1.0)
    return float(np.sum(take * mass_pert))


def max_certified_radius(p_lower: float, p_plus: float, p_minus: float, max_radius: int = 64,
                         deletions: bool = False) -> int:
    """Largest number of additions (``deletions=False``) or deletions certified on their own (0 if none)."""
    r = 0
    while r < max_radius:
        ra, rd = (0, r + 1) if deletions else (r + 1, 0)
        if worst_case_top_probability(p_lower, ra, rd, p_plus, p_minus) <= 0.5:
            break
        r += 1
    return r if p_lower > 0.5 else -1


def _distinct_pairs(num_nodes: int, k: int, gen: torch.Generator) -> Tensor:
    """``k`` distinct pairs ``i < j`` drawn uniformly (as keys ``i * num_nodes + j``): with ``k ~ Binomial(pairs,
    p_plus)`` every pair is then present independently with probability exactly ``p_plus``, the distribution the
    certificate assumes (drawing ``k`` pairs with replacement and dropping ``i == j`` adds fewer)."""
    keys = torch.empty(0, dtype=torch.long)
    while keys.numel() < k:
        m = k - keys.numel()
        a = torch.randint(num_nodes, (m,), generator=gen)
        b = torch.randint(num_nodes - 1, (m,), generator=gen)
        b = b + (b >= a).long()                                   # uniform over b != a
        keys = torch.unique(torch.cat([keys, torch.minimum(a, b) * num_nodes + torch.maximum(a, b)]))
    return keys


@dataclass
class SparseCertificate:
    """Per node: ``prediction`` (``ABSTAIN`` = -1 where the top class's bound is at most 1/2), ``p_lower`` and the
    smoothing parameters; :meth:`certified` answers for a radius ``(additions, deletions)``."""

    prediction: Tensor
    p_lower: Tensor
    counts: Tensor
    p_plus: float
    p_minus: float

    def certified(self, r_add: int, r_del: int) -> Tensor:
        """Whether each node's prediction provably stays under any ``r_add`` additions and ``r_del`` deletions."""
        check_int("r_add", r_add, 0)
        check_int("r_del", r_del, 0)
        cache = {}
        out = torch.zeros(self.p_lower.shape, dtype=torch.bool)
        for k, p in enumerate(self.p_lower.tolist()):
            if p <= 0.5:
                continue
            if p not in cache:
                cache[p] = worst_case_top_probability(p, r_add, r_del, self.p_plus, self.p_minus) > 0.5
            out[k] = cache[p]
        return out.to(self.prediction.device) & (self.prediction != ABSTAIN)


def check_unweighted(data, where: str = "SparseSmoothing") -> None:
    """Refuse a graph whose edges carry values the smoothing cannot keep faithfully.

    Bojchevski et al. 2020 smooth and certify *binary* data: the graph is a 0/1 adjacency matrix, a sample
    keeps or drops each edge and adds absent pairs, and the radius counts flipped entries (their reference
    code samples edge indices only, every sampled edge with weight 1). Edge weights or edge features have no
    place in that setting: the model is called on the binary samples without them (a certificate for another
    model than the user's), and an added edge has no weight or feature the threat model fixes. ``edge_weight``
    that is all ones is the unweighted graph and is accepted.
    """
    weight = getattr(data, "edge_weight", None)
    if weight is not None and not bool((weight == 1).all()):
        raise ValueError(
            f"{where} certifies binary graphs (Bojchevski et al. 2020), but data.edge_weight holds weights other "
            "than 1: the model would be called on samples without them, so the certificate would be for another "
            "model. Certify the unweighted model (data.edge_weight = None, if that is the model you deploy) or "
            "binarise the graph first")
    attr = getattr(data, "edge_attr", None)
    if attr is not None:
        raise ValueError(
            f"{where} certifies binary graphs (Bojchevski et al. 2020), but data has edge_attr (shape "
            f"{tuple(attr.shape)}): sampled and added edges have no features the certificate covers. Remove it "
            "(data.edge_attr = None) if your model does not read it; a model that needs edge features is outside "
            "this certificate")


class SparseSmoothing:
    """Randomized smoothing of a node classifier over the graph structure (and optionally binary attributes).

    Args:
        model: ``(N, C)`` logits from ``model(x, edge_index)`` (``edge_weight=None``) or ``model(data)``.
            The graph must be unweighted (no ``edge_weight`` other than all ones, no ``edge_attr``): the paper's
            smoothing and certificate are for binary graphs, so weighted graphs are refused with an error
            rather than certified as if they were unweighted (see :func:`check_unweighted`).
        p_plus / p_minus: probability to add a missing pair / delete an edge (Bojchevski et al. use e.g.
            ``p_plus=0.001, p_minus=0.4`` on Cora; tiny ``p_plus`` keeps samples sparse).
        attr_p_plus / attr_p_minus: the same for binary node attributes (0 leaves ``x`` unchanged); the
            certificate covers structure perturbations (noise on the other part is the same under both graphs,
            so it does not change the likelihood ratio); attribute flips are certified when the structure is
            not smoothed (``p_plus = p_minus = 0``).
        n0 / n: samples to guess the class / to bound its probability; ``alpha``: failure probability.
        seed: seeds the sampler (the same seed gives the same certificate).
    """

    def __init__(self, model: nn.Module, *, p_plus: float = 0.001, p_minus: float = 0.4, attr_p_plus: float = 0.0,
                 attr_p_minus: float = 0.0, n0: int = 100, n: int = 1000, alpha: float = 0.01, seed: int = 0):
        self.model = model
        self.p_plus = check_fraction("p_plus", p_plus, open_high=True)
        self.p_minus = check_fraction("p_minus", p_minus, open_high=True)
        self.attr_p_plus = check_fraction("attr_p_plus", attr_p_plus, open_high=True)
        self.attr_p_minus = check_fraction("attr_p_minus", attr_p_minus, open_high=True)
        if self.p_plus + self.p_minus == 0 and self.attr_p_plus + self.attr_p_minus == 0:
            raise ValueError("all flip probabilities are 0: nothing is smoothed; set p_plus/p_minus (e.g. 0.001/0.4)")
        self.n0, self.n = check_int("n0", n0, 1), check_int("n", n, 1)
        self.alpha = check_fraction("alpha", alpha, open_low=True, open_high=True)
        self.seed = int(seed)

    def sample_graph(self, x: Tensor, edge_index: Tensor, num_nodes: int, gen: torch.Generator):
        """One draw of :math:`\\phi`: ``(x, edge_index)`` of a randomly perturbed graph (undirected, no self loops)."""
        device = edge_index.device
        row, col = edge_index
        # each undirected pair once (i < j): a duplicated edge would survive with probability 1 - p_minus^2 and
        # an edge stored in one direction only would vanish, neither the distribution the certificate assumes
        keys = torch.unique(torch.minimum(row, col) * num_nodes + torch.maximum(row, col))
        keys = keys[keys // num_nodes != keys % num_nodes]                       # self loops are not pairs
        upper = torch.stack([keys // num_nodes, keys % num_nodes])
        keep = torch.rand(upper.shape[1], generator=gen).to(device) >= self.p_minus
        parts = [upper[:, keep]]
        if self.p_plus > 0:
            pairs = num_nodes * (num_nodes - 1) // 2
            k = int(torch.binomial(torch.tensor(float(pairs)), torch.tensor(self.p_plus), generator=gen))
            keys = _distinct_pairs(num_nodes, k, gen).to(device)
            a = torch.stack([keys // num_nodes, keys % num_nodes])
            # pairs that already exist were "added" to an edge: leave them to the deletion draw
            exists = torch.isin(a[0] * num_nodes + a[1], upper[0] * num_nodes + upper[1])
            parts.append(a[:, ~exists])
        e = torch.unique(torch.cat(parts, 1), dim=1)
        if self.attr_p_plus > 0 or self.attr_p_minus > 0:
            if not bool(((x == 0) | (x == 1)).all()):
                raise ValueError("attr_p_plus/attr_p_minus flip binary node attributes, but data.x has values other "
                                 "than 0 and 1 (they would be replaced by 0/1); use attr_p_plus=attr_p_minus=0 for "
                                 "continuous features")
            u = torch.rand(x.shape, generator=gen).to(x.device)
            on = x > 0
            x = torch.where(on, (u >= self.attr_p_minus).to(x.dtype), (u < self.attr_p_plus).to(x.dtype))
        return x, torch.cat([e, e.flip(0)], 1)

    def noisy_graph(self, data, generator: Optional[torch.Generator] = None):
        """A shallow copy of ``data`` with ``x`` and ``edge_index`` drawn from the smoothing distribution (labels
        and masks kept; ``data`` unchanged): the training graphs of a noise-augmented base model, as Bojchevski
        et al. 2020 (Sec. 5) train theirs, via ``train_node_classifier(..., augment=smoothing.noisy_graph)``.
        Without ``generator`` the smoothing's own noise stream (seeded by ``seed``, continued across calls)."""
        if generator is None:
            if getattr(self, "_noise_gen", None) is None:
                self._noise_gen = torch.Generator().manual_seed(self.seed + 1)
            generator = self._noise_gen
        check_unweighted(data, "SparseSmoothing.noisy_graph")
        out = copy.copy(data)
        out.x, out.edge_index = self.sample_graph(data.x, data.edge_index, data.num_nodes, generator)
        if "edge_weight" in out:
            del out.edge_weight
        return out

    def sample_counts(self, data, num: int, gen: torch.Generator) -> Tensor:
        """``(N, C)`` votes of the model on ``num`` smoothed graphs (eval mode, restored afterwards)."""
        check_unweighted(data)
        counts = None
        call = graph_call(self.model)
        with attack_mode(self.model), torch.no_grad():
            for _ in range(num):
                x, ei = self.sample_graph(data.x, data.edge_index, data.num_nodes, gen)
                logits = call(data, x, ei, None, None)  # the model's own signature (x, edge_index[, ...]) or (data)
                if not bool(torch.isfinite(logits).all()):   # argmax would count a NaN as the top class's vote
                    raise NonFiniteError("the model returned NaN/Inf logits on a smoothed graph; its votes would be "
                                         "meaningless")
                pred = logits.argmax(1)
                if counts is None:
                    counts = torch.zeros(data.num_nodes, logits.shape[1], dtype=torch.long, device=pred.device)
                counts[torch.arange(data.num_nodes, device=pred.device), pred] += 1
        return counts

    def certify(self, data) -> SparseCertificate:
        """CERTIFY (Cohen et al. 2019) for every node: guess the class from ``n0`` samples, bound its probability
        from ``n`` fresh samples; abstain where the bound is at most 1/2."""
        gen = torch.Generator().manual_seed(self.seed)
        guess = self.sample_counts(data, self.n0, gen).argmax(1)
        counts = self.sample_counts(data, self.n, gen)
        n_a = counts.gather(1, guess[:, None]).squeeze(1)
        cache = {}
        p_lower = torch.tensor([cache.setdefault(k, clopper_pearson_lower(k, self.n, self.alpha))
                                for k in n_a.tolist()], dtype=torch.float64)
        prediction = torch.where(p_lower.to(guess.device) > 0.5, guess, torch.full_like(guess, ABSTAIN))
        p_plus = self.attr_p_plus if self.p_plus + self.p_minus == 0 else self.p_plus
        p_minus = self.attr_p_minus if self.p_plus + self.p_minus == 0 else self.p_minus
        return SparseCertificate(prediction, p_lower, counts, p_plus, p_minus)


__all__ = ["SparseSmoothing", "SparseCertificate", "worst_case_top_probability", "max_certified_radius",
           "check_unweighted"]
