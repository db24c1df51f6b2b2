"""Square Attack (Andriushchenko et al. 2020): a score-based black-box attack by random square updates."""

from __future__ import annotations

import math
from typing import Dict, List

import torch
from torch import Tensor

from ..errors import check_fraction, check_int
from ..threats.base import ThreatModel, per_unit
from ..threats.norms import LinfBall
from ..utils import rand
from .base import Attack, Threat, check_logits
from .losses import fixed_loss

#: Iterations (on a 10 000-query scale) at which the window fraction ``p`` is halved (Sec. 3.1 and the
#: authors' schedule): ``p = p_init / 2^j`` after the j-th entry.
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, iteration: int, n_queries: int) -> float:
    """Fraction of the input a square covers at ``iteration`` (the piecewise-constant ``p`` schedule)."""
    it = int(iteration / n_queries * 10000)
    halvings = sum(it > h for h in _P_HALVINGS)
    return p_init / 2 ** halvings


def _randint(high: int, generator, like: Tensor) -> int:
    return int(rand((1,), generator, like).item() * high) if high > 0 else 0


def _as_image(t: Tensor) -> Tensor:
    """View a unit-first tensor as ``(units, channels, height, width)``; 1-D signals get height 1."""
    if t.dim() == 4:
        return t
    if t.dim() == 3:
        return t.unsqueeze(2)
    if t.dim() == 2:
        return t[:, None, None, :]
    raise ValueError(f"Square needs inputs shaped (units, [channels,] [height,] width), got {tuple(t.shape)}")



def _take_lower(margin: Tensor, best_margin: Tensor, units: Tensor, pairs) -> bool:
    """Where ``margin`` (of ``units``) is below ``best_margin[units]``, keep it and each ``(best, new)`` pair's
    new rows, in place (``best`` ``None``: nothing kept). Returns whether a kept margin is <= 0 (a unit fooled)."""
    better = margin < best_margin[units]
    if not bool(better.any()):
        return False
    idx = units[better]
    kept = margin[better]
    best_margin[idx] = kept
    for best, new in pairs:
        if best is not None:
            best[idx] = new[better]
    return bool((kept <= 0).any())


class Square(Attack):
    """Square Attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box adversarial
    attack via random search", https://arxiv.org/abs/1912.00049, Algorithms 1-3).

    Random search on the margin loss :math:`L(x) = z_y(x) - \\max_{j \\ne y} z_j(x)` (targeted:
    :math:`\\max_{j \\ne t} z_j - z_t`): each query changes one random square window of side
    :math:`s = \\mathrm{round}(\\sqrt{p \\cdot h w})` (at most :math:`h - 1`; for L2 odd and at least 3)
    and is kept only if the loss decreases,

    .. math:: \\delta^{k+1} = \\begin{cases} \\delta_{new} & L(x + \\delta_{new}) < L(x + \\delta^k) \\\\ \\delta^k & \\text{else}\\end{cases}

    * L-inf (Alg. 2): start from vertical stripes :math:`\\pm\\epsilon`; a window gets a new random sign
      :math:`\\pm\\epsilon` per channel.
    * L2 (Alg. 3): start from a grid of "pseudo-Gaussian" blocks scaled to norm :math:`\\epsilon`; a
      window gets a new pseudo-Gaussian block and takes over the mass of a second window, which is zeroed,
      so the perturbation stays on the sphere of radius :math:`\\epsilon`.

    Only forward passes are used (never gradients); ``n_queries`` counts them per unit, the initial point
    included, and units stop being queried once misclassified. One-dimensional inputs (audio, feature
    vectors) are treated as images of height 1, so windows become segments (L-inf only).

    Args:
        n_queries: query budget per unit and restart (AutoAttack uses 5000).
        p_init: initial fraction of the input a window covers (paper: 0.05 for L-inf on ImageNet,
            0.1 for L2; AutoAttack uses 0.8).
        restarts: independent restarts for units still not fooled.

    Example:
        >>> from mmrobust.attacks import Square
        >>> from mmrobust.threats import LinfBall
        >>> from mmrobust.utils import toy_problem
        >>> model, x, y = toy_problem()
        >>> result = Square(LinfBall(0.1, lower=0, upper=1), n_queries=20, seed=0)(model, [x, y])   # no gradients used
        >>> bool(((result.inputs["image"] - x).abs() <= 0.1 + 1e-6).all())
        True
    """

    name = "square"

    def __init__(self, threat: Threat, *, n_queries: int = 5000, p_init: float = 0.8, restarts: int = 1, **kwargs):
        super().__init__(threat, loss=fixed_loss(type(self).__name__, kwargs), **kwargs)
        self.n_queries = check_int("n_queries", n_queries, 1)
        self.p_init = check_fraction("p_init", p_init, open_low=True)
        self.restarts = check_int("restarts", restarts, 1)
        for t in ([threat] if isinstance(threat, ThreatModel) else threat.values()):
            if t.norm not in ("linf", "l2"):
                raise ValueError(f"Square supports L-inf and L2 threat models (norm 'linf' or 'l2'), "
                                 f"got {type(t).__name__} with norm {t.norm!r}")

    def settings(self) -> List[str]:
        return super().settings() + [f"n_queries={self.n_queries}", f"p_init={self.p_init:g}"]

    # -- margin to minimise: negative of the (attack-maximised) margin loss -------------------------
    def _unit_margin(self, victim, logits, target_labels) -> Tensor:
        return victim.per_unit(-self.output_loss(logits, victim, target_labels))

    def perturb(self, victim, threats: Dict[str, ThreatModel], target_labels, clean_logits):
        if len(threats) != 1:
            raise ValueError("Square attacks one input at a time; give it a single ThreatModel")
        name, threat = next(iter(threats.items()))
        x = victim.inputs[name]
        device = x.device
        gen = self.generator()

        def evaluator(index: Tensor):
            """A function giving the margins (and logits) of units ``index`` at ``x + delta`` (delta for those
            units only); the sub-batch is read once and reused for every query on the same units."""
            if victim.unit is None and victim.select is not None and index.numel() < victim.num_units:
                sub, x_sub = victim.select(index), x[index]
                sub_targets = None if target_labels is None else target_labels[index]

                def evaluate(delta: Tensor):
                    logits = sub.forward({**sub.inputs, name: x_sub + delta})
                    check_logits(logits, sub, "during the Square search")  # NaN margins would never be accepted
                    return self._unit_margin(sub, logits, sub_targets), logits
                return evaluate

            every = index.numel() == victim.num_units  # then index is every unit in order (arange)

            def evaluate_all(delta: Tensor):
                full = {**victim.inputs, name: x + delta if every else x.index_copy(0, index, x[index] + delta)}
                logits = victim.forward(full)
                check_logits(logits, victim, "during the Square search")
                margins = self._unit_margin(victim, logits, target_labels)
                # logits are tracked per output only when outputs are units (images, audio)
                if every:
                    return margins, (logits if victim.unit is None else None)
                return margins[index], (logits[index] if victim.unit is None else None)
            return evaluate_all

        best_delta = torch.zeros_like(x)
        best_margin = None
        best_logits = None
        all_units = torch.arange(victim.num_units, device=device)
        with torch.no_grad():
            for _ in range(self.restarts):
                active = all_units if best_margin is None else all_units[best_margin > 0]
                if active.numel() == 0:
                    break
                delta, margin, logits = self._search(name, threat, x, victim, active, evaluator, gen)
                if best_margin is None:
                    best_delta, best_margin, best_logits = delta, margin, logits
                    continue
                _take_lower(margin, best_margin, active, [(best_delta, delta), (best_logits, logits)])
        adv = {**victim.inputs, name: x + best_delta}
        return (adv, best_logits) if best_logits is not None else adv

    def _search(self, name, threat, x_all, victim, index, evaluator, gen):
        """Random search for the units ``index``; returns their deltas, margins and logits."""
        x = x_all[index]
        eps = usable_radius(threat, x_all)[index]
        mask = victim.masks.get(name)
        mask = None if mask is None else (mask[index] if mask.shape[0] == x_all.shape[0] else mask)
        img = _as_image(x)
        n, c, h, w = img.shape
        if threat.norm == "l2" and min(h, w) < 5:
            raise ValueError(f"L2 Square needs image-shaped inputs of at least 5x5, got {tuple(x.shape[1:])}")
        # a LinfBall projection is elementwise and leaves an admissible delta as it is, so an L-inf candidate
        # (the admissible delta with one new window) needs only its window projected: _linf_candidate does it
        window_only = type(threat) is LinfBall
        delta = self._init(threat, x, eps, gen)
        delta = self._admissible(threat, delta, x, mask)
        margin, logits = evaluator(index)(delta)
        work = None  # the units still searched, their inputs and evaluator: rebuilt only when one is fooled
        for it in range(1, self.n_queries):
            if work is None:
                todo = (margin > 0).nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                every = todo.numel() == n
                md = None if mask is None else (mask[todo] if mask.shape[0] == n else mask)
                work = (todo, x if every else x[todo], eps if every else eps[todo], md,
                        evaluator(index if every else index[todo]), every)
            todo, xd, ed, md, evaluate, every = work
            p = square_fraction(self.p_init, it, self.n_queries)
            dd = delta if every else delta[todo]
            if threat.norm == "linf":
                cand = self._linf_candidate(xd, dd, ed, p, gen, threat, in_box=window_only and md is None)
            else:
                cand = self._l2_candidate(xd, dd, ed, p, gen)
            if not (window_only and md is None):
                cand = self._admissible(threat, cand, xd, md)
            new_margin, new_logits = evaluate(cand)
            if _take_lower(new_margin, margin, todo, [(delta, cand), (logits, new_logits)]):
                work = None
        return delta, margin, logits

    @staticmethod
    def _admissible(threat, delta, x, mask):
        if mask is not None:
            delta = delta * mask
        return threat.project(delta, x)

    # -- initialisations ------------------------------------------------------------------------------
    def _init(self, threat, x, eps, gen) -> Tensor:
        img = _as_image(x)
        n, c, h, w = img.shape
        if threat.norm == "linf":
            # vertical stripes of +-eps (Alg. 2, line 2)
            signs = torch.where(rand((n, c, 1, w), gen, x) < 0.5, -1.0, 1.0).to(x.dtype)
            return (signs * per_unit(eps, img)).expand(n, c, h, w).reshape(x.shape).clone()
        # L2 (Alg. 3): a 5x5 grid of pseudo-Gaussian blocks with random signs, scaled to norm eps
        delta = torch.zeros_like(img)
        s = h // 5
        start = (h - 5 * s) // 2
        for ch in range(start, start + 5 * s, s):
            for cw in range(start, start + 5 * s, s):
                block = _meta_pseudo_gaussian(s, gen, x)
                signs = torch.where(rand((n, c, 1, 1), gen, x) < 0.5, -1.0, 1.0).to(x.dtype)
                delta[:, :, ch:ch + s, cw:cw + s] += block * signs
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        return (delta * per_unit(eps / norm, delta)).reshape(x.shape)

    # -- candidate updates ----------------------------------------------------------------------------
    def _linf_candidate(self, x, delta, eps, p, gen, threat, in_box: bool = False) -> Tensor:
        """One window of side ``sqrt(p * h * w)`` at a random place set to ``+-eps`` per unit and channel
        (Alg. 2). Where the new window would change nothing inside the value box (a query wasted), its
        signs are flipped: the authors' code redraws the signs of such an image until the window changes.
        ``in_box``: the window is clamped into the value box (``threat.clamp_box``), which for a
        :class:`~mmrobust.threats.LinfBall` and an admissible ``delta`` is the projection of the whole candidate."""
        img, d = _as_image(x), _as_image(delta).clone()
        n, c, h, w = img.shape
        s = _window_side(p, h, w)
        sh, sw = min(s, h), min(s, w)
        r = per_unit(eps, img)
        th, tw = _randint(h - sh + 1, gen, x), _randint(w - sw + 1, gen, x)
        signs = torch.where(rand((n, c, 1, 1), gen, x) < 0.5, -1.0, 1.0).to(x.dtype)
        old = d[:, :, th:th + sh, tw:tw + sw]
        if threat.lower is not None or threat.upper is not None:
            window = img[:, :, th:th + sh, tw:tw + sw]
            lower, upper = self._b(threat.lower), self._b(threat.upper)
            new_in_box = (window + signs * r).clamp(lower, upper)
            old_in_box = (window + old).clamp(lower, upper)
            same = (new_in_box - old_in_box).abs().flatten(1).amax(1) <= 1e-7
            signs = torch.where(per_unit(same, signs), -signs, signs)
        values = (signs * r).expand(n, c, sh, sw)
        if in_box:
            values = threat.clamp_box(values, img[:, :, th:th + sh, tw:tw + sw])
        d[:, :, th:th + sh, tw:tw + sw] = values
        return d.reshape(x.shape)

    @staticmethod
    def _b(v):
        return None if v is None else float(v)

    def _l2_candidate(self, x, delta, eps, p, gen) -> Tensor:
        img, d = _as_image(x), _as_image(delta).clone()
        n, c, h, w = img.shape
        s = max(_window_side(p, h, w), 3)
        if s % 2 == 0:
            s += 1
        s = min(s, h, w)
        th, tw = _randint(h - s + 1, gen, x), _randint(w - s + 1, gen, x)
        th2, tw2 = _randint(h - s + 1, gen, x), _randint(w - s + 1, gen, x)
        win1 = torch.zeros_like(img)
        win1[:, :, th:th + s, tw:tw + s] = 1
        win2 = torch.zeros_like(img)
        win2[:, :, th2:th2 + s, tw2:tw2 + s] = 1
        both = torch.maximum(win1, win2)
        # mass of both windows (per channel), and what the rest of the image leaves of the budget
        mass_windows = (d * both).pow(2).sum((2, 3), keepdim=True).sqrt()
        norm_image = d.flatten(1).norm(dim=1)
        old_block = d[:, :, th:th + s, tw:tw + s]
        old_norm = old_block.pow(2).sum((2, 3), keepdim=True).sqrt()
        signs = torch.where(rand((n, c, 1, 1), gen, x) < 0.5, -1.0, 1.0).to(x.dtype)
        new = _meta_pseudo_gaussian(s, gen, x) * signs + old_block / (old_norm + 1e-10)
        spare = ((eps ** 2 - norm_image ** 2).clamp_min(0) / c)[:, None, None, None]
        new = new / new.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12) * (spare + mass_windows ** 2).sqrt()
        d[:, :, th2:th2 + s, tw2:tw2 + s] = 0
        d[:, :, th:th + s, tw:tw + s] = new
        norm = d.flatten(1).norm(dim=1).clamp_min(1e-12)
        return (d * per_unit(eps / norm, d)).reshape(x.shape)


def _window_side(p: float, h: int, w: int) -> int:
    s = int(round(math.sqrt(p * h * w))) if h > 1 else int(round(p * w))
    return max(1, min(s, (h - 1) if h > 1 else w - 1 if w > 1 else 1))


def _pseudo_gaussian_rectangle(a: int, b: int, like: Tensor) -> Tensor:
    """Concentric rectangles with weights ``1 / (k + 1)^2`` from the centre out (Alg. 3, Fig. 2)."""
    d = torch.zeros(a, b, dtype=like.dtype, device=like.device)
    ca, cb = a // 2, b // 2
    for k in range(max(ca + 1, cb + 1)):
        d[max(ca - k, 0):min(ca + k + 1, a), max(cb - k, 0):min(cb + k + 1, b)] += 1.0 / (k + 1) ** 2
    return d / d.norm().clamp_min(1e-12)


def _meta_pseudo_gaussian(s: int, generator, like: Tensor) -> Tensor:
    """An ``s x s`` block: two pseudo-Gaussian halves of opposite sign, randomly transposed (Alg. 3)."""
    d = torch.zeros(s, s, dtype=like.dtype, device=like.device)
    half = s // 2
    if half > 0:
        d[:half] = _pseudo_gaussian_rectangle(half, s, like)
    d[half:] = -_pseudo_gaussian_rectangle(s - half, s, like)
    d = d / d.norm().clamp_min(1e-12)
    if float(rand((1,), generator, like)) > 0.5:
        d = d.t()
    return d


def usable_radius(threat: ThreatModel, x: Tensor) -> Tensor:
    """The per-unit radius Square searches with: the threat's radius, capped where the value box is reached
    anyway (beyond the box's farthest point a larger ball adds nothing), refused with an error naming
    ``eps`` where it is not finite or the L2 search would overflow squaring it."""
    r = threat.radius(x)
    if threat.lower is not None and threat.upper is not None:
        far = torch.maximum(threat.upper - x, x - threat.lower)
        r = torch.minimum(r, threat.size(far, x).to(r.dtype))
    limit = math.sqrt(torch.finfo(x.dtype).max) / max(1, x[0].numel())
    too_big = ~torch.isfinite(r) | ((r > limit) if threat.norm == "l2" else torch.zeros_like(r, dtype=torch.bool))
    if bool(too_big.any()):
        shown = "inf" if not math.isfinite(float(r.max())) else f"{float(r.max()):.3g}"
        raise ValueError(f"eps of {threat!r} gives a radius of {shown} in {x.dtype}, too large for Square's "
                         f"{threat.norm} search (it must be finite{f' and <= {limit:.3g}' if threat.norm == 'l2' else ''}"
                         f"); give the threat model a value box (lower/upper), which caps every useful radius, or a "
                         "smaller eps")
    return r

