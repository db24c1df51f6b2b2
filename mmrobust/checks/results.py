"""Checks that read the attack results of every batch (no extra forward or backward pass).

The evaluation loop hands each batch's results to a tally (:func:`tally_black_box`, :func:`tally_edge_budget`);
the checks read the summed tallies at the end.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

import torch

from ..attacks.base import Attack, AttackResult
from .base import CheckResult, not_applicable, register


def is_black_box(attack: Any) -> bool:
    """Gradient-free attacks (Square, or any attack with ``gradient_free = True``), by object or description."""
    from ..attacks.square import Square

    if isinstance(attack, str):
        return attack.startswith("Square(")
    return isinstance(attack, Square) or bool(getattr(attack, "gradient_free", False))


def tally_black_box(attacks: Mapping[str, Attack], results: Sequence[AttackResult], tally: Dict[str, int]) -> None:
    """Add to ``tally`` the outputs a black-box attack broke that the gradient attacks left robust: across the
    evaluation's attacks, and inside each :class:`~mmrobust.attacks.Ensemble` from its per-member counts
    (``extras["robust_after"]``: a gradient-free member after a gradient member lowering the count)."""
    tally.setdefault("outputs", 0)
    tally.setdefault("black_box_only", 0)
    tally.setdefault("pairs", 0)
    tally["outputs"] += int(results[0].target.numel())
    white = [r for a, r in zip(attacks.values(), results) if not is_black_box(a) and "robust_after" not in r.extras]
    black = [r for a, r in zip(attacks.values(), results) if is_black_box(a)]
    if white and black:
        tally["pairs"] += 1
        white_robust = torch.stack([r.robust for r in white]).all(0)
        black_robust = torch.stack([r.robust.to(white_robust.device) for r in black]).all(0)
        tally["black_box_only"] += int((white_robust & ~black_robust).sum())
    for r in results:
        history = r.extras.get("robust_after")
        if not history:
            continue
        seen_white, before = False, None
        for description, count in history:
            if is_black_box(description):
                if seen_white and before is not None:
                    tally["pairs"] += 1
                    tally["black_box_only"] += max(0, before - count)
            else:
                seen_white = True
            before = count


@register("black_box_beats_white_box", "results", "a gradient-free attack breaks what gradient attacks left robust")
def black_box_beats_white_box(tally: Mapping[str, int], *, max_fraction: float = 0.01) -> CheckResult:
    """Square (gradient-free, Andriushchenko et al. 2020) breaks outputs that the gradient attacks left robust:
    with working gradients a white-box attack should be at least as strong as a black-box one, so the
    gradients are probably masked (Athalye et al. 2018, https://arxiv.org/abs/1802.00420; Carlini et al. 2019,
    https://arxiv.org/abs/1902.06705, Sec. 4.3; Pintor et al. 2022, https://arxiv.org/abs/2106.09947).

    Read from the results the evaluation already has (an ``Ensemble``'s per-member counts, or a Square attack
    beside gradient attacks); fires when more than ``max_fraction`` of the outputs (and at least one) fall only
    to the black-box attack. No extra cost.
    """
    if not tally.get("pairs"):
        return not_applicable("black_box_beats_white_box",
                              "needs a gradient-free attack (Square) run after or beside gradient attacks")
    n, k = tally["outputs"], tally["black_box_only"]
    fired = k > 0 and k > max_fraction * n
    return CheckResult("black_box_beats_white_box", fired,
                       f"the black-box attack broke {k} of {n} outputs that the gradient attacks left robust",
                       "gradient attacks fail where a gradient-free one succeeds: the gradients are probably "
                       "masked; see zero_gradients/gradient_masking, attack a differentiable approximation (BPDA) "
                       "and keep Square in the ensemble" if fired else "",
                       values={"outputs": n, "black_box_only": k})


def tally_edge_budget(attacks: Mapping[str, Attack], results: Sequence[AttackResult], victim, tally: Dict[str, Any]
                      ) -> None:
    """Add to ``tally`` the flips used and allowed on graphs where an edge attack left some scored node robust
    (``victim``: the batch's graph victim, for the clean edge counts), and under ``"notes"`` what the attacks
    said about flips they left unused (GRBCD's ``extras["edges/unspent"]``)."""
    from ..threats.graph import EdgeFlips

    graph = victim.meta.get("graph") if victim is not None else None
    if graph is None:
        return
    for attack, r in zip(attacks.values(), results):
        threat = getattr(attack, "edge_threat", None)
        if not isinstance(threat, EdgeFlips) or threat.local or "edges" not in r.size:
            continue
        allowed = threat.flips_allowed(graph.undirected_edges).to(r.size["edges"].device).float()
        robust_units = victim.per_unit(r.robust.float().to(allowed.device), "amax") > 0
        tally["graphs"] = tally.get("graphs", 0) + int(robust_units.sum())
        tally["used"] = tally.get("used", 0.0) + float(r.size["edges"][robust_units].sum())
        tally["allowed"] = tally.get("allowed", 0.0) + float(allowed[robust_units].sum())
        note = r.extras.get("edges/unspent")
        if note and bool(robust_units.any()):
            tally.setdefault("notes", []).append(f"{type(attack).__name__}: {note}")


@register("edge_budget_unused", "results", "an edge attack left flips unused on graphs it did not break")
def edge_budget_unused(tally: Mapping[str, Any], *, min_share: float = 0.95) -> CheckResult:
    """An edge-flip attack (PRBCD, GRBCD) used less than ``min_share`` of its flip budget on graphs where some
    scored node stayed robust: the unused flips could only have helped (issue 20, Sec. 4: PRBCD with the
    ``tanh_margin`` loss flipped 1277 of 1319 allowed pairs on Cora). The evidence quotes what the attack
    reported about its unused flips (GRBCD's ``extras["edges/unspent"]``: how many, and why). No extra cost.
    """
    if not tally.get("allowed"):
        return not_applicable("edge_budget_unused", "needs a global edge-flip attack (PRBCD, GRBCD) on a graph "
                                                    "with nodes left robust")
    used, allowed = tally["used"], tally["allowed"]
    fired = used < min_share * allowed
    notes = list(dict.fromkeys(tally.get("notes", ())))  # one batch after another may repeat a note
    reported = "" if not notes else "; the attack reported: " + " | ".join(notes[:3]) + \
        (f" (and {len(notes) - 3} more)" if len(notes) > 3 else "")
    return CheckResult("edge_budget_unused", fired,
                       f"the edge attacks flipped {used:.0f} of the {allowed:.0f} pairs allowed on the "
                       f"{int(tally['graphs'])} graph(s) with nodes left robust{reported}",
                       "the attack left budget unused: use loss='prob_margin' (PRBCD), more epochs, or a larger "
                       "block_size so the whole budget is spent" if fired else "",
                       values={"used": used, "allowed": allowed})
