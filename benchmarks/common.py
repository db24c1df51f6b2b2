"""Helpers shared by the benchmark scripts: offline MNIST, a cached normally trained CNN, timed Lightning
training, the bit-error and pruning tables of the compression benchmarks, progress lines."""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

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
                     seed: Optional[int] = 0) -> nn.Module:
    """Plain Adam + cross-entropy training on shuffled mini-batches; returns the model in eval mode.

    ``seed`` reseeds the global RNG first (``None``: continue with its current state)."""
    if seed is not None:
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


def log(msg: str) -> None:
    """Print ``msg`` after the time of day, flushed (progress lines of long runs)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def timed_fit(module, epochs: int, callbacks: Sequence, **fit_inputs) -> float:
    """Seconds a quiet CPU Lightning ``Trainer`` (no logger, checkpoints, progress bar, summary or validation)
    takes to fit ``module`` for ``epochs`` with ``callbacks``; ``fit_inputs`` go to ``Trainer.fit``
    (``train_dataloaders=`` or ``datamodule=``)."""
    import pytorch_lightning as pl

    trainer = pl.Trainer(max_epochs=epochs, callbacks=list(callbacks), logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         num_sanity_val_steps=0, limit_val_batches=0)
    with Timer() as t:
        trainer.fit(module, **fit_inputs)
    return t.seconds


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


def bit_error_settings(keys: Iterable[str], *, clip: float, randbet_rate: float,
                       loss_fn: Optional[Callable] = None) -> List[Tuple[str, dict, list]]:
    """``(row name, Quantization keyword arguments, extra callbacks)`` of the bit-error training settings named
    by ``keys`` (of :data:`BIT_ERROR_SETTINGS`), in that order: 8-bit QAT as it is, with weights clipped to
    ``clip``, and RandBET at ``randbet_rate`` (Stutz et al. 2021) with ``loss_fn`` (default: the callback's)."""
    from mmrobust.callbacks import RandomBitErrorTraining

    randbet = RandomBitErrorTraining(randbet_rate, seed=0, **({} if loss_fn is None else {"loss_fn": loss_fn}))
    settings = {"normal": ("normal", dict(clip=None), []),
                "clipping": (f"clipping (w_max={clip})", dict(clip=clip), []),
                "randbet": (f"RandBET (p={100 * randbet_rate:g}%, w_max={clip})", dict(clip=clip), [randbet])}
    return [settings[key] for key in keys]


def bit_error_rows(settings: Iterable[Tuple[str, dict, list]], train: Callable[[list], Tuple[nn.Module, float]],
                   measure: Callable[[nn.Module], dict]) -> List[List[str]]:
    """One :func:`bit_error_row` per setting of :func:`bit_error_settings`: after ``pl.seed_everything(0)``,
    ``train(callbacks)`` (8-bit asymmetric per-tensor :class:`~mmrobust.callbacks.Quantization` and the
    setting's callbacks) returns the trained module and its seconds; ``measure(module)`` its
    :class:`~mmrobust.metrics.BitErrorAccuracy` ``compute()``. Each row is printed as it is made."""
    import pytorch_lightning as pl

    from mmrobust.callbacks import Quantization

    rows = []
    for name, quantization, extra in settings:
        pl.seed_everything(0)
        module, seconds = train([Quantization(8, symmetric=False, **quantization), *extra])
        rows.append(bit_error_row(name, measure(module), seconds))
        print(rows[-1], flush=True)
    return rows


def bit_error_table(rates: Sequence[float], rows: List[Sequence]) -> str:
    """The markdown table of :func:`bit_error_rows` at bit-error ``rates``."""
    return markdown_table(["training", "clean %"] + [f"p={100 * p:g}% mean ± std (min)" for p in rates] +
                          ["train s"], rows)


def pruning_rows(base: nn.Module, plan: Iterable[Tuple[float, str]], *, scope: str, hydra_data: Iterable,
                 hydra_attack: Callable[[], object], hydra_epochs: int, hydra_loss: Optional[Callable] = None,
                 finetune: Optional[Callable[[nn.Module], None]],
                 accuracies: Callable[[nn.Module], Tuple[float, float]]) -> List[list]:
    """Rows (:func:`pruning_table`) of the pruning benchmarks, one per ``(sparsity, method)`` of ``plan``: a copy
    of ``base`` pruned to ``sparsity`` (timed) by weight magnitude (a method named ``"magnitude ..."``), by
    HYDRA importance scores (``"HYDRA ..."``: ``hydra_epochs`` on ``hydra_data`` against ``hydra_attack()``,
    SGD 0.1, Sehwag et al. 2020) or not at all (any other name, e.g. the dense reference), then
    ``finetune(model)`` unless ``None``, then in eval mode ``accuracies(model)`` (clean, robust, in [0, 1]).
    Each row is printed as it is made."""
    import copy

    from mmrobust.compression import hydra_prune, prune_magnitude, weight_sparsity

    rows = []
    for sparsity, method in plan:
        model = copy.deepcopy(base)
        with Timer() as t:
            if method.startswith("magnitude"):
                prune_magnitude(model, sparsity, scope=scope)
            elif method.startswith("HYDRA"):
                hydra_prune(model, hydra_data, sparsity, attack=hydra_attack(), epochs=hydra_epochs, lr=0.1,
                            scope=scope, loss_fn=hydra_loss)
        if finetune is not None:
            finetune(model)
        model.eval()
        clean, robust = accuracies(model)
        rows.append([method, 100 * weight_sparsity(model), 100 * clean, 100 * robust, f"{t.seconds:.0f}"])
        print(rows[-1], flush=True)
    return rows


def pruning_table(rows: List[Sequence]) -> str:
    """The markdown table of the pruning benchmarks: the dense model's row(s), then :func:`pruning_rows`."""
    return markdown_table(["method", "sparsity %", "clean %", "robust %", "prune s"], rows)


def run_part(parser, parts: Dict[str, Callable]) -> None:
    """Finish a benchmark's command line with ``--part`` (one of ``parts``) and ``--threads`` (default 1), then
    run the chosen part on the parsed options after :func:`quiet_run`."""
    parser.add_argument("--part", choices=list(parts), required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    quiet_run(args.threads)
    parts[args.part](args)


def add_bit_error_args(parser, *, patterns: int, with_randbet_options: bool = True) -> None:
    """The command-line options every bit-error benchmark shares (training settings, rates, patterns)."""
    parser.add_argument("--patterns", type=int, default=patterns)
    parser.add_argument("--settings", nargs="+", default=list(BIT_ERROR_SETTINGS), choices=BIT_ERROR_SETTINGS)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.001, 0.005, 0.01, 0.05, 0.1])
    if with_randbet_options:
        parser.add_argument("--clip", type=float, default=0.1)
        parser.add_argument("--randbet-rate", type=float, default=0.01)

