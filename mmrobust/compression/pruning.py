"""Weight pruning: magnitude (global / layer-wise) with the gradual schedule, HYDRA scores, channel pruning.

Unstructured masks are a :mod:`torch.nn.utils.parametrize` parametrisation (:class:`PruningMask`,
``weight = original * mask`` with the mask a buffer), so masks are saved in checkpoints, survive
``deepcopy`` (which :mod:`torch.nn.utils.prune`'s non-leaf ``weight`` attribute breaks after a forward
pass) and work under DDP; pruned weights stay exactly zero during training (their gradient is zero),
and the mask stacks with :class:`~mmrobust.compression.FakeQuantize` (prune first, then quantise).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Type

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import check_choice, check_fraction, check_int, check_positive
from ..utils import kept_modes
from .quantization import FakeQuantize, default_weight_types, original_weight, own_parametrized_class

__all__ = ["PruningMask", "pruning_mask", "prunable_modules", "add_masks", "magnitude_masks", "set_masks",
           "sparsity_at", "weight_sparsity", "prune_magnitude", "make_permanent", "hydra_prune", "prune_channels"]

Modules = List[Tuple[str, nn.Module]]


class PruningMask(nn.Module):
    """Parametrisation ``weight = original * mask``; ``mask`` (0/1, same shape) is a buffer."""

    def __init__(self, weight: Tensor):
        super().__init__()
        self.register_buffer("mask", torch.ones_like(weight.detach()))

    def forward(self, w: Tensor) -> Tensor:
        return w * self.mask


def pruning_mask(module: nn.Module) -> Optional[Tensor]:
    """The module's weight mask buffer, or ``None`` when it is not pruned."""
    if parametrize.is_parametrized(module, "weight"):
        for p in module.parametrizations.weight:
            if isinstance(p, PruningMask):
                return p.mask
    return None


def prunable_modules(model: nn.Module, types: Optional[Sequence[Type[nn.Module]]] = None,
                     exclude: Sequence[str] = ()) -> Modules:
    """``(name, module)`` of every layer of ``types`` (default Conv1d/Conv2d/Linear/PyG Linear) with a weight."""
    types = tuple(types) if types is not None else default_weight_types()
    out = [(n, m) for n, m in model.named_modules()
           if isinstance(m, types) and n not in exclude and isinstance(getattr(m, "weight", None), Tensor)]
    if not out:
        raise ValueError(f"model has no layer of types {[t.__name__ for t in types]} to prune")
    return out


def add_masks(modules: Modules) -> None:
    """Give every module an all-ones :class:`PruningMask` (idempotent), so checkpoints with masks load into it.

    The mask goes first in the parametrisation chain, so a later quantiser sees the pruned weight.
    """
    for _, m in modules:
        if pruning_mask(m) is None:
            if parametrize.is_parametrized(m, "weight") and any(
                    isinstance(p, FakeQuantize) for p in m.parametrizations.weight):
                raise ValueError(f"{type(m).__name__} already has a quantised weight; add the pruning masks before "
                                 "quantising (mmrobust.compression.add_masks, then quantize_model) so the mask is "
                                 "applied first; the Pruning and Quantization callbacks do this in any order")
            parametrize.register_parametrization(m, "weight", PruningMask(m.weight))


def masked_weight_input(module: nn.Module) -> Tensor:
    """The weight the :class:`PruningMask` multiplies: the stored weight, or the kernel an earlier
    parametrisation computes from it (a Fourier kernel's spatial weights, not its coefficients)."""
    chain = module.parametrizations.weight
    w = chain.original
    for p in chain:
        if isinstance(p, PruningMask):
            return w
        w = p(w)
    raise ValueError(f"{type(module).__name__} has no pruning mask")


def _mask_first(module: nn.Module, what: str) -> None:
    if not isinstance(module.parametrizations.weight[0], PruningMask):
        raise ValueError(f"{what} needs the pruning mask first in the weight's parametrisations, got "
                         f"{[type(p).__name__ for p in module.parametrizations.weight]}; for Fourier-parametrised "
                         "kernels bake them first (mmrobust.compression.remove_fourier)")


def _importance(module: nn.Module) -> Tensor:
    with torch.no_grad():
        imp = masked_weight_input(module).detach().abs()
    mask = pruning_mask(module)
    if mask is not None:
        # already pruned weights rank last, so masks only ever grow (monotone schedule)
        imp = torch.where(mask.bool(), imp, torch.full_like(imp, -1.0))
    return imp


def _top_k_mask(scores: Tensor, keep: int) -> Tensor:
    mask = torch.zeros(scores.numel(), dtype=scores.dtype, device=scores.device)
    if keep > 0:
        mask[torch.topk(scores.reshape(-1), keep, sorted=False).indices] = 1
    return mask.reshape(scores.shape)


def magnitude_masks(modules: Modules, sparsity: float, scope: str = "global",
                    importance: Optional[Callable[[nn.Module], Tensor]] = None) -> List[Tensor]:
    """Masks keeping the ``1 - sparsity`` largest scores (``|w|`` by default), over all layers or per layer.

    Magnitude pruning (Han et al. 2015, https://arxiv.org/abs/1506.02626): remove the weights of least
    :math:`|w|`; ``scope="global"`` ranks all weights together, ``"layer"`` prunes each layer to ``sparsity``.
    """
    sparsity = check_fraction("sparsity", sparsity)
    check_choice("scope", scope, {"global", "layer"})
    importance = importance or _importance
    scores = [importance(m) for _, m in modules]
    if scope == "layer":
        return [_top_k_mask(s, s.numel() - int(round(sparsity * s.numel()))) for s in scores]
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    keep = flat.numel() - int(round(sparsity * flat.numel()))
    mask = _top_k_mask(flat, keep)
    out, start = [], 0
    for s in scores:
        out.append(mask[start:start + s.numel()].reshape(s.shape).to(s.dtype))
        start += s.numel()
    return out


@torch.no_grad()
def set_masks(modules: Modules, masks: Iterable[Tensor]) -> None:
    """Write ``masks`` into the modules' :class:`PruningMask` buffers."""
    add_masks(modules)
    for (_, m), mask in zip(modules, masks):
        pruning_mask(m).copy_(mask)


def sparsity_at(step: int, *, final: float, initial: float = 0.0, begin: int = 0, end: int = 0,
                frequency: int = 1) -> float:
    """Gradual pruning schedule of Zhu & Gupta 2017 (https://arxiv.org/abs/1710.01878, Eq. 1).

    .. math:: s_t = s_f + (s_i - s_f)\\Big(1 - \\frac{t - t_0}{n \\Delta t}\\Big)^3,\\quad
        t \\in \\{t_0, t_0 + \\Delta t, \\dots, t_0 + n\\Delta t\\}

    ``begin`` = :math:`t_0`, ``end`` = :math:`t_0 + n\\Delta t`, ``frequency`` = :math:`\\Delta t`; the
    sparsity changes only at multiples of ``frequency`` after ``begin``; 0 before ``begin``.
    """
    if step < begin:
        return 0.0
    if end <= begin or step >= end:
        return final
    t = begin + ((step - begin) // frequency) * frequency
    return final + (initial - final) * (1 - (t - begin) / (end - begin)) ** 3


def weight_sparsity(model: nn.Module, types: Optional[Sequence[Type[nn.Module]]] = None) -> float:
    """Fraction of exactly-zero weights among the prunable layers' (effective) weights."""
    modules = prunable_modules(model, types)
    zeros = sum(int((m.weight == 0).sum()) for _, m in modules)
    total = sum(m.weight.numel() for _, m in modules)
    return zeros / total


def prune_magnitude(model: nn.Module, sparsity: float, *, scope: str = "global",
                    types: Optional[Sequence[Type[nn.Module]]] = None, exclude: Sequence[str] = ()) -> nn.Module:
    """One-shot magnitude pruning of ``model`` (in place) to ``sparsity``; returns the model."""
    modules = prunable_modules(model, types, exclude)
    add_masks(modules)
    set_masks(modules, magnitude_masks(modules, sparsity, scope))
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Bake the masks into plain ``weight`` parameters (for export; masks are then no longer enforced).

    Layers whose weight carries further parametrisations (a quantiser) keep them; only the masked
    entries of their float weight are zeroed.
    """
    masked = [(m, pruning_mask(m)) for m in model.modules() if pruning_mask(m) is not None]
    for m, _ in masked:   # refuse before changing anything
        _mask_first(m, "make_permanent")
    for m, mask in masked:
        if len(m.parametrizations.weight) == 1:
            own_parametrized_class(m)
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        else:
            with torch.no_grad():
                m.parametrizations.weight.original.mul_(mask)
    return model


# -- HYDRA ---------------------------------------------------------------------------------------------------


class _TopKStraightThrough(torch.autograd.Function):
    """Top-k mask of the scores; the backward passes the gradient straight to the scores (HYDRA, Eq. 5)."""

    @staticmethod
    def forward(ctx, scores: Tensor, keep: int) -> Tensor:
        return _top_k_mask(scores.abs(), keep)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class _ScoredNetwork(nn.Module):
    """``model`` with every prunable weight replaced by ``w * topk(|s|)``; only the scores are parameters."""

    def __init__(self, model: nn.Module, modules: Modules, sparsity: float, scope: str):
        super().__init__()
        self.inner = [model]  # a list keeps the model's parameters out of this module's parameters
        self.names = [n for n, _ in modules]
        self.modules_ = [m for _, m in modules]
        self.sparsity, self.scope = sparsity, scope
        scores = []
        for _, m in modules:
            _mask_first(m, "hydra_prune")
            w = (original_weight(m) * pruning_mask(m)).detach()
            # scaled magnitude initialisation (Sehwag et al. 2020, Sec. 3.3): s ∝ w / max|w|
            scores.append(nn.Parameter(w / w.abs().amax().clamp_min(1e-12)))
        self.scores = nn.ParameterList(scores)

    def keeps(self) -> List[int]:
        sizes = [s.numel() for s in self.scores]
        if self.scope == "layer":
            return [n - int(round(self.sparsity * n)) for n in sizes]
        return [0] * len(sizes)  # unused for global scope

    def masks(self, differentiable: bool = True) -> List[Tensor]:
        if self.scope == "layer":
            fn = _TopKStraightThrough.apply if differentiable else (lambda s, k: _top_k_mask(s.abs(), k))
            return [fn(s, k) for s, k in zip(self.scores, self.keeps())]
        flat = torch.cat([s.reshape(-1) for s in self.scores])
        keep = flat.numel() - int(round(self.sparsity * flat.numel()))
        mask = _TopKStraightThrough.apply(flat, keep) if differentiable else _top_k_mask(flat.abs(), keep)
        out, start = [], 0
        for s in self.scores:
            out.append(mask[start:start + s.numel()].reshape(s.shape))
            start += s.numel()
        return out

    def forward(self, *args, **kwargs):
        model = self.inner[0]
        params = {}
        for name, m, mask in zip(self.names, self.modules_, self.masks()):
            prefix = f"{name}." if name else ""
            # the top-k mask replaces the old one, as set_masks does afterwards: the chain's mask (first, see
            # _mask_first) reads as ones here, so the network scored is the one deployed (folding the old mask in
            # scored weights pruned before as zeros, then deployed them with their stored values)
            params[prefix + "parametrizations.weight.original"] = original_weight(m).detach() * mask
            params[prefix + "parametrizations.weight.0.mask"] = torch.ones_like(pruning_mask(m))
        return torch.func.functional_call(model, params, args, kwargs, strict=False)


def hydra_prune(model: nn.Module, data: Iterable, sparsity: float, *, attack=None, epochs: int = 1,
                lr: float = 0.1, scope: str = "layer", loss_fn: Optional[Callable] = None,
                types: Optional[Sequence[Type[nn.Module]]] = None, exclude: Sequence[str] = ()) -> nn.Module:
    """Robustness-aware pruning by importance-score optimisation (HYDRA, Sehwag et al. 2020,
    https://arxiv.org/abs/2002.10509, Eq. 4-5).

    .. math:: \\min_{s}\\ \\mathbb E_{(x,y)}\\Big[\\max_{\\delta\\in\\Delta}\\mathcal L\\big(f(x+\\delta;\\, w \\odot
        \\mathbb 1[|s| \\in \\text{top-}k]),\\, y\\big)\\Big], \\quad \\nabla_s := \\nabla_{\\hat w} \\odot w

    The weights stay frozen; the scores (initialised to ``w / max|w|``) are trained with SGD (momentum
    0.9, cosine learning rate) on the adversarial loss, with ``attack.generate`` attacking the *pruned*
    network (no attack: the clean loss, i.e. plain score-based pruning). The top-k masks are then written
    into the layers' :class:`PruningMask` parametrisations; fine-tune afterwards (e.g. with adversarial training; the masks
    keep pruned weights at zero).

    Args:
        data: an iterable of batches (a DataLoader) of a form the attack's adapter reads.
        sparsity: fraction of weights removed, in [0, 1].
        attack: an mmrobust :class:`~mmrobust.attacks.Attack` for the inner maximisation (``None``: clean).
        epochs: passes over ``data`` for the scores; lr: initial SGD learning rate of the scores.
        scope: ``"layer"`` (k per layer, as in HYDRA) or ``"global"``.
        loss_fn: ``(model, batch) -> scalar loss`` (default: cross-entropy through the batch adapter).
    """
    from ..objectives import batch_cross_entropy

    sparsity = check_fraction("sparsity", sparsity)
    epochs = check_int("epochs", epochs, 1)
    lr = check_positive("lr", lr)
    check_choice("scope", scope, {"global", "layer"})
    loss_fn = loss_fn or batch_cross_entropy
    modules = prunable_modules(model, types, exclude)
    add_masks(modules)
    scored = _ScoredNetwork(model, modules, sparsity, scope)
    batches = list(data) if not hasattr(data, "__len__") else data
    total_steps = max(1, epochs * len(batches))
    opt = torch.optim.SGD(scored.scores.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps)
    with kept_modes(model, train=True):
        for _ in range(epochs):
            for batch in batches:
                if attack is not None:
                    batch = attack.generate(scored, batch)
                opt.zero_grad()
                loss_fn(scored, batch).backward()
                opt.step()
                sched.step()
    with torch.no_grad():
        set_masks(modules, [mask.detach() for mask in scored.masks(differentiable=False)])
    return model


# -- structured pruning --------------------------------------------------------------------------------------


def prune_channels(model: nn.Module, example_inputs: Any, sparsity: float, *, norm: int = 1,
                   ignored_layers: Optional[Sequence[nn.Module]] = None, global_pruning: bool = False,
                   iterative_steps: int = 1) -> nn.Module:
    """Remove whole output channels / filters / neurons, shrinking the layers (in place).

    Filters of least :math:`\\ell_p` norm are removed (Li et al. 2017, "Pruning filters for efficient
    ConvNets", https://arxiv.org/abs/1608.08710, Sec. 3.1: :math:`s_j = \\sum |\\mathcal F_{i,j}|`),
    together with every dependent slice (the next layer's input channels, batch norms, ...) found by
    Torch-Pruning's dependency graph (Fang et al. 2023, https://arxiv.org/abs/2301.12900). The final
    classifier layer (the one producing the outputs) is never pruned. Needs the optional dependency
    ``torch-pruning`` (``pip install mmrobust[compression]``).

    Args:
        example_inputs: an input the model accepts (traced once to build the dependency graph).
        sparsity: fraction of channels removed per layer (or globally), in [0, 1).
        norm: 1 or 2, the filter norm used for ranking.
        ignored_layers: layers left untouched (default: the last Linear/Conv layer).
    """
    try:
        import torch_pruning as tp
    except ImportError as e:  # optional dependency
        raise ImportError("structured pruning needs the optional dependency torch-pruning: "
                          "pip install 'mmrobust[compression]' (or pip install torch-pruning)") from e
    sparsity = check_fraction("sparsity", sparsity, open_high=True)
    norm = check_choice("norm", norm, {1, 2})
    iterative_steps = check_int("iterative_steps", iterative_steps, 1)
    if ignored_layers is None:
        last = [m for _, m in prunable_modules(model)][-1:]
        ignored_layers = last
    importance = tp.importance.MagnitudeImportance(p=norm)
    pruner = tp.pruner.MagnitudePruner(model, example_inputs, importance=importance, pruning_ratio=sparsity,
                                       ignored_layers=list(ignored_layers), global_pruning=global_pruning,
                                       iterative_steps=iterative_steps)
    for _ in range(iterative_steps):
        pruner.step()
    return model
