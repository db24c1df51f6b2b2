"""Reading MNIST-style IDX archives and the CIFAR-10 python archive from local files, validated by content.

torchvision accepts a local archive only if its MD5 matches the one it knows and otherwise downloads it
again; the same data recompressed or re-packed by another source has another checksum. These readers
check what matters instead -- the IDX magic number (LeCun et al., "THE MNIST DATABASE", file format
section: two zero bytes, a type byte ``0x08`` for unsigned bytes, a dimension count), the shape, the
number of items, the byte count and the label range -- and never touch the network.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

IDX_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_BATCHES = {True: tuple(f"data_batch_{i}" for i in range(1, 6)), False: ("test_batch",)}


class InvalidDataFile(ValueError):
    """A local data file whose content is not what the dataset's format prescribes."""


def find_file(dirs: Iterable[Path], name: str, suffixes: Sequence[str] = ("", ".gz")) -> Optional[Path]:
    """The first ``dir/name+suffix`` that is a file, or ``None``."""
    for d in dirs:
        for s in suffixes:
            p = Path(d) / (name + s)
            if p.is_file():
                return p
    return None


def _open(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip, whatever the file is called
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise InvalidDataFile(f"{path} is not a readable gzip archive ({e})") from e
    return raw


def read_idx(path: Path, shape: Tuple[int, ...]) -> Tensor:
    """An unsigned-byte IDX file (plain or gzip) as a ``uint8`` tensor of exactly ``shape``.

    Raises :class:`InvalidDataFile` naming the file when the magic number, the dimensions or the byte
    count differ from ``shape``.
    """
    data = _open(Path(path))
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise InvalidDataFile(f"{path} is not an IDX file: it must start with two zero bytes (magic number "
                              f"0x0000080{len(shape)}), got {data[:4].hex()!r}")
    if data[2] != 0x08:
        raise InvalidDataFile(f"{path}: IDX type byte must be 0x08 (unsigned bytes), got 0x{data[2]:02x}")
    ndim = data[3]
    if ndim != len(shape):
        raise InvalidDataFile(f"{path}: expected a {len(shape)}-dimensional IDX file (magic 0x0000080{len(shape)}), "
                              f"got {ndim} dimensions")
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if dims != tuple(shape):
        raise InvalidDataFile(f"{path}: expected shape {tuple(shape)}, the header says {dims}")
    n = int(np.prod(dims))
    if len(data) != header + n:
        raise InvalidDataFile(f"{path}: the header promises {n} bytes of data, the file holds {len(data) - header}")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy())


def _check_labels(labels: Tensor, num_classes: int, where: str) -> Tensor:
    if labels.numel() and int(labels.max()) >= num_classes:
        raise InvalidDataFile(f"{where}: labels must lie in [0, {num_classes - 1}], found {int(labels.max())}")
    return labels.long()


def load_idx_split(dirs: Sequence[Path], train: bool, count: int, image_size: Tuple[int, int] = (28, 28),
                   num_classes: int = 10) -> Optional[Tuple[Tensor, Tensor]]:
    """``(images (N, 1, H, W) uint8, labels (N,) int64)`` of the MNIST-layout train or test split found in
    ``dirs`` (files ``train-images-idx3-ubyte[.gz]`` etc.), or ``None`` if either file is absent."""
    names = IDX_FILES[train]
    paths = [find_file(dirs, n) for n in names]
    if None in paths:
        return None
    images = read_idx(paths[0], (count, *image_size))
    labels = _check_labels(read_idx(paths[1], (count,)), num_classes, str(paths[1]))
    return images.unsqueeze(1), labels


def _cifar_batch(raw: bytes, where: str) -> Tuple[Tensor, Tensor]:
    try:
        entry = pickle.loads(raw, encoding="latin1")
        data, labels = entry["data"], entry.get("labels", entry.get("fine_labels"))
    except Exception as e:  # noqa: BLE001 -- any unreadable pickle is the same user error
        raise InvalidDataFile(f"{where} is not a CIFAR python batch (a pickled dict with 'data' and 'labels'): "
                              f"{type(e).__name__}: {e}") from e
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.shape != (10000, 3072) or labels is None or len(labels) != 10000:
        raise InvalidDataFile(f"{where}: expected 'data' uint8 (10000, 3072) and 10000 labels, got "
                              f"{data.dtype} {data.shape} and {None if labels is None else len(labels)} labels")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, _check_labels(torch.as_tensor(labels), 10, where)


def load_cifar10_split(dirs: Sequence[Path], train: bool) -> Optional[Tuple[Tensor, Tensor]]:
    """``(images (N, 3, 32, 32) uint8, labels (N,) int64)`` of CIFAR-10 from an extracted
    ``cifar-10-batches-py/`` folder or the ``cifar-10-python.tar.gz`` archive (read in memory, not
    extracted) in ``dirs``; ``None`` if neither is there."""
    names = CIFAR10_BATCHES[train]
    parts: List[Tuple[Tensor, Tensor]] = []
    for d in dirs:
        for folder in (Path(d) / CIFAR10_FOLDER, Path(d)):
            if all((folder / n).is_file() for n in names):
                parts = [_cifar_batch((folder / n).read_bytes(), str(folder / n)) for n in names]
                break
        if parts:
            break
    if not parts:
        archive = find_file(dirs, CIFAR10_ARCHIVE, ("",))
        if archive is None:
            return None
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                missing = [n for n in names if n not in members]
                if missing:
                    raise InvalidDataFile(f"{archive} lacks the CIFAR-10 batches {missing}")
                parts = [_cifar_batch(tar.extractfile(members[n]).read(), f"{archive}:{n}") for n in names]
        except (tarfile.TarError, OSError, EOFError) as e:
            raise InvalidDataFile(f"{archive} is not a readable tar archive ({e})") from e
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    return images, labels


def write_idx(path: Path, array: Tensor, compress: bool = True) -> None:
    """Write a ``uint8`` tensor as an IDX file (gzip-compressed if ``compress``), e.g. to build test archives."""
    a = np.ascontiguousarray(array.cpu().numpy().astype(np.uint8))
    header = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    payload = header + a.tobytes()
    buf = io.BytesIO()
    if compress:
        with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1, mtime=0) as f:
            f.write(payload)
        payload = buf.getvalue()
    Path(path).write_bytes(payload)
