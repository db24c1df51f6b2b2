"""Decision-boundary slices: the predicted class on a 2-D plane through an input.

The plane :math:`\\{x + a u + b v\\}` is spanned by the adversarial direction :math:`u` (normalised input
gradient of the loss) and either a random direction or a second adversarial direction (towards the runner-up
class), orthogonalised against :math:`u` by Gram-Schmidt, as in the decision-region plots of
Moosavi-Dezfooli et al. 2019 (https://arxiv.org/abs/1811.09716, Fig. 2) and Fawzi et al. 2018
(https://arxiv.org/abs/1705.09552, Sec. 3):

.. math:: c(a, b) = \\arg\\max_k f_k(x + a u + b v), \\qquad \\|u\\|_2 = \\|v\\|_2 = 1,\\ u \\perp v.

Works for any continuous input read by a batch adapter (images, waveforms, features).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..adapters.base import BatchAdapter
from ..attacks.base import attack_mode, prepare_victim
from ..attacks.losses import get_loss, margin
from ..errors import check_choice, check_int, check_positive
from ..utils import make_generator, randn
from ._victim import flat, forward_at, single_input, victim_for


@dataclass
class DecisionSlice:
    """Predicted classes on a grid ``classes[i, j]`` at ``x + a[j] u + b[i] v`` (rows: ``b``, columns: ``a``)."""

    classes: Tensor
    a: Tensor
    b: Tensor
    u: Tensor
    v: Tensor
    label: int
    clean_class: int
    second: str

    def region_fraction(self, cls: int) -> float:
        """Fraction of the plotted plane predicted as class ``cls``."""
        return float((self.classes == cls).float().mean())

    def render(self, path: Union[str, Path], *, class_names: Optional[Sequence[str]] = None,
               title: Optional[str] = None) -> Path:
        """Save the slice as a PNG (see :func:`render_slice`)."""
        return render_slice(self, path, class_names=class_names, title=title)


def _orthonormal(u: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
    u = u / u.norm().clamp_min(1e-12)
    v = v - (v * u).sum() * u
    n = v.norm()
    if float(n) < 1e-8:
        raise ValueError("the two slice directions are parallel; choose another second direction")
    return u, v / n


def decision_slice(model: nn.Module, batch: Any, *, index: int = 0, extent: Union[float, Tuple[float, float]] = 1.0,
                   resolution: int = 41, second: str = "random", directions: Optional[Tuple[Tensor, Tensor]] = None,
                   loss="ce", seed: Optional[int] = 0, chunk: int = 256, adapter: Optional[BatchAdapter] = None,
                   input_name: Optional[str] = None) -> DecisionSlice:
    """The decision regions on the plane through input ``index`` of ``batch``.

    Args:
        extent: half-width of the plotted square in L2 input units (or ``(extent_a, extent_b)``).
        resolution: grid points per axis.
        second: ``"random"`` (Gaussian, orthogonalised) or ``"adversarial"`` (margin gradient towards the
            runner-up class, orthogonalised).
        directions: explicit ``(u, v)`` (shaped like one input); overrides the computed directions.
        loss: loss whose input gradient gives the adversarial direction :math:`u`.
        chunk: grid points per forward pass.
    The value box of the input is not applied: the slice shows the model, not the admissible set.
    """
    resolution = check_int("resolution", resolution, 2)
    chunk = check_int("chunk", chunk, 1)
    check_choice("second", second, ("random", "adversarial"))
    ea, eb = (extent, extent) if not isinstance(extent, (tuple, list)) else extent
    ea, eb = check_positive("extent", ea), check_positive("extent", eb)
    loss_fn = get_loss(loss)
    with attack_mode(model):
        full = victim_for(model, batch, adapter)
        name, xs = single_input(full, input_name)
        check_int("index", index, 0)
        if index >= xs.shape[0]:
            raise ValueError(f"index must lie in [0, {xs.shape[0] - 1}] for this batch, got {index}")
        if full.select is None:
            raise ValueError("this batch's adapter cannot select single units (BatchView.select is None)")
        victim = prepare_victim(full.select(torch.tensor([index], device=xs.device)))
        x = victim.inputs[name]
        with torch.no_grad():
            logits = victim.forward(victim.inputs)
        if logits.shape[0] != 1:
            raise ValueError("decision slices need one scored output per unit (image/audio classification)")
        label = int(victim.target[0])
        clean_class = int(logits.argmax(1)[0])
        if directions is not None:
            u, v = (torch.as_tensor(d, dtype=x.dtype, device=x.device).reshape(-1) for d in directions)
            if u.numel() != x[0].numel() or v.numel() != x[0].numel():
                raise ValueError(f"directions must each have {x[0].numel()} elements (one input), "
                                 f"got {u.numel()} and {v.numel()}")
        else:
            leaf = x.detach().requires_grad_(True)
            out = forward_at(victim, name, leaf)
            (g,) = torch.autograd.grad(loss_fn(out, victim.target, None).sum(), leaf)
            u = flat(g)[0]
            if second == "random":
                v = randn(u.shape, make_generator(seed, "cpu"), u)   # CPU draw: the same slice on any device
            else:
                runner_up = out.detach().masked_fill(
                    nn.functional.one_hot(victim.target, out.shape[1]).bool(), float("-inf")).argmax(1)
                leaf = x.detach().requires_grad_(True)
                out = forward_at(victim, name, leaf)
                (g2,) = torch.autograd.grad(margin(out, victim.target, runner_up).sum(), leaf)
                v = flat(g2)[0]
        u, v = _orthonormal(u, v)
        a = torch.linspace(-ea, ea, resolution, dtype=x.dtype, device=x.device)
        b = torch.linspace(-eb, eb, resolution, dtype=x.dtype, device=x.device)
        bb, aa = torch.meshgrid(b, a, indexing="ij")
        points = x.reshape(1, -1) + aa.reshape(-1, 1) * u + bb.reshape(-1, 1) * v
        classes = []
        with torch.no_grad():
            for start in range(0, points.shape[0], chunk):
                part = points[start:start + chunk]
                rep = victim.select(torch.zeros(part.shape[0], dtype=torch.long, device=x.device))
                classes.append(forward_at(rep, name, part.reshape(-1, *x.shape[1:])).argmax(1))
        grid = torch.cat(classes).reshape(resolution, resolution).cpu()
        return DecisionSlice(grid, a.cpu(), b.cpu(), u.reshape(x.shape[1:]).detach().cpu(),
                             v.reshape(x.shape[1:]).detach().cpu(), label, clean_class,
                             "given" if directions is not None else second)


def render_slice(slice_: DecisionSlice, path: Union[str, Path], *, class_names: Optional[Sequence[str]] = None,
                 title: Optional[str] = None) -> Path:
    """Render a :class:`DecisionSlice` to a PNG with a discrete colour per class; the input is the cross
    at the origin. Uses matplotlib's object API (no global pyplot state), so it is safe in callbacks."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure
    import matplotlib

    classes = slice_.classes.numpy()
    n_classes = int(max(classes.max(), slice_.label, slice_.clean_class)) + 1
    base = matplotlib.colormaps["tab10" if n_classes <= 10 else "tab20"]
    cmap = ListedColormap([base(i % base.N) for i in range(n_classes)])
    norm = BoundaryNorm([i - 0.5 for i in range(n_classes + 1)], n_classes)
    fig = Figure(figsize=(4.6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    a, b = slice_.a.numpy(), slice_.b.numpy()
    im = ax.imshow(classes, origin="lower", extent=(a[0], a[-1], b[0], b[-1]), cmap=cmap, norm=norm,
                   interpolation="nearest", aspect="auto")
    ax.plot([0], [0], marker="x", color="black", markersize=8)
    ax.set_xlabel("adversarial direction u (L2)")
    ax.set_ylabel(f"{slice_.second} direction v (L2)")
    ax.set_title(title or f"label {slice_.label}, predicted {slice_.clean_class}")
    cbar = fig.colorbar(im, ax=ax, ticks=list(range(n_classes)))
    if class_names is not None:
        cbar.ax.set_yticklabels([str(class_names[i]) if i < len(class_names) else str(i) for i in range(n_classes)])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path
