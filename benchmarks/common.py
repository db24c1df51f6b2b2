"""Helpers shared by the benchmark scripts: offline MNIST, a cached normally trained CNN, tables."""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout; MMROBUST_SHARED_DATA points elsewhere (e.g. from a git worktree)
SHARED_DATA = Path(os.environ.get("MMROBUST_SHARED_DATA", ROOT.parent / "shared" / "data"))
CACHE = ROOT / "benchmarks" / ".cache"


def mnist_tensors(train: bool, limit: int | None = None):
    """MNIST as float tensors in [0, 1] from ``../shared/data/MNIST`` (copied to a writable cache)."""
    import torchvision

    src = SHARED_DATA / "MNIST"
    if not src.is_dir():
        raise SystemExit(f"MNIST not found at {src}; this benchmark needs ../shared/data")
    root = CACHE / "data"
    if not (root / "MNIST" / "raw").is_dir():
        (root / "MNIST").mkdir(parents=True, exist_ok=True)
        shutil.copytree(src / "raw", root / "MNIST" / "raw", dirs_exist_ok=True)
    ds = torchvision.datasets.MNIST(root, train=train, download=True)  # finds the files, no network
    x = ds.data.float().div(255).unsqueeze(1)
    y = ds.targets.long()
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y


def train_classifier(model: nn.Module, x, y, epochs: int = 2, lr: float = 1e-3, batch_size: int = 128,
                     seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def mnist_cnn(epochs: int = 2, train_limit: int | None = None) -> nn.Module:
    """A normally trained :class:`~mmrobust.image.SmallCNN` on MNIST, cached under ``benchmarks/.cache``."""
    from mmrobust.image import SmallCNN

    path = CACHE / f"mnist_cnn_e{epochs}_n{train_limit}.pt"
    model = SmallCNN()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    x, y = mnist_tensors(True, train_limit)
    train_classifier(model, x, y, epochs=epochs)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def accuracy(model: nn.Module, x, y, batch_size: int = 500) -> float:
    with torch.no_grad():
        correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                      for i in range(0, len(y), batch_size))
    return correct / len(y)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def bit_error_row(name: str, result, seconds: float) -> List[str]:
    """One table row from :class:`~mmrobust.metrics.BitErrorAccuracy` ``compute()``: clean %, then per rate
    ``mean ± std (min)`` in %, then the training seconds."""
    return ([name, f"{100 * float(result['clean']):.2f}"] +
            [f"{100 * float(m):.2f} ± {100 * float(s):.2f} (min {100 * float(lo):.2f})"
             for m, s, lo in zip(*(result[k].reshape(-1) for k in ("mean", "std", "min")))] +
            [f"{seconds:.0f}"])


@torch.no_grad()
def loader_accuracy(model: nn.Module, loader) -> float:
    """Clean accuracy over a speech loader of ``(wave, label, length)`` batches (model left in eval mode)."""
    model.eval()
    hits = n = 0
    for wave, y, _ in loader:
        hits += int((model(wave).argmax(1) == y).sum())
        n += len(y)
    return hits / n


def keep_freed_memory_in_process() -> bool:
    """Stop glibc from handing freed tensor memory back to the OS after every step; True if applied.

    With glibc's defaults a CPU attack or training step page-faults its activations in afresh each time
    (tensors of a few MB are mmap'ed, or the heap top is trimmed, on every free). Raising the mmap
    threshold to its 32 MiB ceiling and the trim threshold to 1 GiB keeps that memory for reuse: the same
    effect as ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824`` in the environment or an
    ``LD_PRELOAD``-ed jemalloc/tcmalloc. It is process-wide, so every library in a side-by-side run gains
    alike; call it before the first large allocation.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, Windows, musl without mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 32 * 1024 * 1024)) and bool(mallopt(m_trim_threshold, 1 << 30))


def interleaved_medians(runs: Dict[str, Callable[[], object]], rounds: int) -> Dict[str, float]:
    """Median seconds per call of each of ``runs``; every round calls each once, in turn, so background
    load hits all alike. Warm up before calling this."""
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def markdown_table(header: Sequence[str], rows: List[Sequence]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def quiet_run(threads: int) -> None:
    """Benchmark process set-up: ``threads`` torch threads, no warnings or Lightning info chatter."""
    import logging
    import warnings

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning_fabric").setLevel(logging.ERROR)


BIT_ERROR_SETTINGS = ["normal", "clipping", "randbet"]


def add_bit_error_args(parser, *, patterns: int, with_randbet_options: bool = True) -> None:
    """The command-line options every bit-error benchmark shares (training settings, rates, patterns)."""
    parser.add_argument("--patterns", type=int, default=patterns)
    parser.add_argument("--settings", nargs="+", default=list(BIT_ERROR_SETTINGS), choices=BIT_ERROR_SETTINGS)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.001, 0.005, 0.01, 0.05, 0.1])
    if with_randbet_options:
        parser.add_argument("--clip", type=float, default=0.1)
        parser.add_argument("--randbet-rate", type=float, default=0.01)

