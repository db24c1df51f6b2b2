"""Small tensor helpers shared across modules."""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor


def rand(shape: Sequence[int], generator: Optional[torch.Generator], like: Tensor) -> Tensor:
    """``torch.rand`` on ``like``'s device and dtype, drawing from ``generator`` wherever it lives."""
    if generator is None or generator.device == like.device:
        return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)
    return torch.rand(shape, generator=generator, dtype=like.dtype).to(like.device)


def randn(shape: Sequence[int], generator: Optional[torch.Generator], like: Tensor) -> Tensor:
    """``torch.randn`` on ``like``'s device and dtype, drawing from ``generator`` wherever it lives."""
    if generator is None or generator.device == like.device:
        return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
    return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)


def normal_tensor(t: Tensor) -> Tensor:
    """A tensor usable by autograd: clones tensors created under ``inference_mode``."""
    return t.clone() if isinstance(t, Tensor) and t.is_inference() else t


def make_generator(seed: Optional[int], device: torch.device | str = "cpu") -> Optional[torch.Generator]:
    """A generator seeded with ``seed`` (``None`` -> use the global RNG)."""
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


class SeededStream:
    """One random stream per object, the semantics every seeded attack follows: the generator is created
    from ``self.seed`` on first use and *continued* by later calls; :meth:`restart_stream` restarts it at
    ``seed`` in place (copies that share the generator restart too). ``seed=None`` means the global RNG.

    The generator always lives on the CPU (random tensors are drawn there and moved to the input's device
    by :func:`rand`), so the same seed gives the same draws on CPU and CUDA and a checkpointed state
    resumes exactly on either. Users of the mixin set ``self.seed`` and ``self._generator = None``.
    """

    seed: Optional[int]
    _generator: Optional[torch.Generator]

    def generator(self) -> Optional[torch.Generator]:
        """The object's generator (created on first use from ``seed``), kept across calls; ``None`` without
        a seed."""
        if self.seed is None:
            return None
        if self._generator is None:
            self._generator = make_generator(self.seed, "cpu")
        return self._generator

    def restart_stream(self) -> None:
        """Restart the stream at ``seed``, in place; nothing without a seed."""
        if self.seed is None:
            return
        fresh = make_generator(self.seed, "cpu")
        if self._generator is None:
            self._generator = fresh
        else:  # in place: copies sharing this generator (with_adapter) restart too
            self._generator.set_state(fresh.get_state())


@contextlib.contextmanager
def kept_buffers(module: torch.nn.Module) -> Iterator[None]:
    """Run the body and put every buffer of ``module`` back as it was (in place, also on error).

    Extra forward passes in training mode (a regulariser, a bit-error pass, a weight-perturbation search)
    must not move BatchNorm's running statistics or ``num_batches_tracked``: only the user's own forward
    pass of a step may.
    """
    saved = buffer_values(module)
    try:
        yield
    finally:
        restore_buffers(saved)


def buffer_values(module: torch.nn.Module) -> List[Tuple[Tensor, Tensor]]:
    """Every buffer of ``module`` with a copy of its current value, for :func:`restore_buffers`."""
    return [(b, b.detach().clone()) for b in module.buffers()]


@torch.no_grad()
def restore_buffers(saved: List[Tuple[Tensor, Tensor]]) -> None:
    """Put the buffers saved by :func:`buffer_values` back to those values, in place."""
    for b, value in saved:
        b.copy_(value)


def progress_bar(enabled: bool, *, total: Optional[int] = None, desc: str, unit: str = "it", every_step: bool = False):
    """A tqdm bar on stderr for a long attack (epochs, members), or ``None`` when not ``enabled``.

    Quiet off a terminal (``disable=None``: logs and CI stay clean); ``leave=False``, so a bar nested in
    :func:`mmrobust.evaluate`'s own bar disappears when done (also when garbage-collected after an error).
    ``every_step``: draw every tick (few, long steps: an ensemble's members, a sweep's budgets) instead of
    tqdm's rate limit of one redraw per 0.1 s (many short steps: PRBCD epochs)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    limits = dict(mininterval=0, miniters=1) if every_step else {}
    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=None, **limits)


class SavedModes:
    """The training modes (and, with ``flags=True``, parameters' ``requires_grad``) of every submodule of
    ``modules``, as they are now; :meth:`restore` puts them back. For state that must outlive one call
    (a callback's hooks); within one call use :func:`kept_modes`."""

    def __init__(self, *modules: torch.nn.Module, flags: bool = False):
        self.modes = [(m, m.training) for module in modules for m in module.modules()]
        self.flags = [(p, p.requires_grad) for module in modules for p in module.parameters()] if flags else []

    def restore(self) -> None:
        for m, training in self.modes:
            m.training = training
        for p, flag in self.flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def kept_modes(*modules: torch.nn.Module, train: Optional[bool] = None, freeze: bool = False) -> Iterator[None]:
    """Run the body with ``modules`` in training mode ``train`` (``None``: unchanged) and, with ``freeze``,
    their parameters' ``requires_grad`` off; every submodule's mode and every flag are restored on exit,
    also on error (a module's own ``train(mode)`` would overwrite submodules' differing modes)."""
    saved = SavedModes(*modules, flags=freeze)
    try:
        if train is not None:
            for module in modules:
                module.train(train)
        for p, _ in saved.flags:
            p.requires_grad_(False)
        yield
    finally:
        saved.restore()


def toy_problem(seed: int = 0, n: int = 8):
    """``(model, x, y)``: a linear 3-class classifier of random 2x2 one-channel images in [0, 1] and random
    labels, built without touching the global random state; the setting of the docstring examples."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
        x, y = torch.rand(n, 1, 2, 2), torch.randint(0, 3, (n,))
    return model, x, y
