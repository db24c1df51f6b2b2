"""Image datamodules with inputs in [0, 1] (no normalisation: models normalise internally, so the attack
value box is [0, 1] and budgets refer to pixel values).

* :class:`DigitsDataModule`: scikit-learn's 8x8 digits, bundled with scikit-learn, so it works offline;
  the default for examples and tests.
* :class:`MNISTDataModule`, :class:`FashionMNISTDataModule`, :class:`CIFAR10DataModule`: the standard
  archives under ``root`` (or ``copy_raw_from``, copied into ``root`` first), read by
  :mod:`mmrobust.image.files` and validated by content (magic number, shape, count), not by checksum, so
  a recompressed copy from another source works. Local files are never downloaded over; only when they
  are absent does ``download=True`` fetch them through torchvision.

Batches are ``(images, labels)`` tuples: float ``(B, C, H, W)`` in [0, 1] and int64 labels.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List, Optional, Tuple, Union

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..errors import check_fraction, check_int
from .files import InvalidDataFile, load_cifar10_split, load_idx_split

PathLike = Union[str, Path]


class UInt8Images(Dataset):
    """Images kept as uint8 (4x less memory than float) and scaled to [0, 1] per item.

    ``augment`` (training only) is a callable on the float image, e.g. random crop and flip.
    """

    def __init__(self, images: Tensor, labels: Tensor, augment=None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images, self.labels, self.augment = images, labels.long(), augment

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, i):
        x = self.images[i].float().div_(255)
        if self.augment is not None:
            x = self.augment(x)
        return x, self.labels[i]


def split_train_val(n: int, val_size: int, seed: int) -> Tuple[Tensor, Tensor]:
    """Seeded random split of ``range(n)`` into train and validation indices."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:], perm[:val_size]


def _limited(dataset: Dataset, limit: Optional[int]) -> Dataset:
    if limit is None or limit >= len(dataset):  # type: ignore[arg-type]
        return dataset
    return Subset(dataset, range(limit))


class _ImageDataModule(pl.LightningDataModule):
    """Shared loaders, split and limits; subclasses build the three datasets in :meth:`setup`."""

    def __init__(self, *, batch_size: int, num_workers: int, seed: int, limit_train: Optional[int],
                 limit_val: Optional[int], limit_test: Optional[int], eval_batch_size: Optional[int]):
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.eval_batch_size = self.batch_size if eval_batch_size is None else check_int(
            "eval_batch_size", eval_batch_size, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.seed = check_int("seed", seed, 0)
        self.limit_train = None if limit_train is None else check_int("limit_train", limit_train, 1)
        self.limit_val = None if limit_val is None else check_int("limit_val", limit_val, 1)
        self.limit_test = None if limit_test is None else check_int("limit_test", limit_test, 1)
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None

    def _store(self, train: Dataset, val: Dataset, test: Dataset) -> None:
        self.train_set = _limited(train, self.limit_train)
        self.val_set = _limited(val, self.limit_val)
        self.test_set = _limited(test, self.limit_test)

    def _loader(self, dataset: Optional[Dataset], shuffle: bool, batch_size: int) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"call {type(self).__name__}.setup() (the Trainer does) before asking for loaders")
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          generator=generator, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False, self.eval_batch_size)


class DigitsDataModule(_ImageDataModule):
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes; Alpaydin & Kaynak 1998, UCI),
    as ``(B, 1, 8, 8)`` floats in [0, 1] (pixel counts 0..16 divided by 16).

    A seeded random permutation splits it into ``test_fraction`` test, ``val_fraction`` validation and
    the rest training data. Needs no network.
    """

    num_classes = 10
    dims = (1, 8, 8)

    def __init__(self, batch_size: int = 64, num_workers: int = 0, *, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, seed: int = 0, limit_train: Optional[int] = None,
                 limit_val: Optional[int] = None, limit_test: Optional[int] = None,
                 eval_batch_size: Optional[int] = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, limit_train=limit_train,
                         limit_val=limit_val, limit_test=limit_test, eval_batch_size=eval_batch_size)
        self.val_fraction = check_fraction("val_fraction", val_fraction, open_low=True, open_high=True)
        self.test_fraction = check_fraction("test_fraction", test_fraction, open_low=True, open_high=True)
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be < 1 to leave training data, got "
                             f"{self.val_fraction} + {self.test_fraction}")

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        n = len(y)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        n_test, n_val = round(self.test_fraction * n), round(self.val_fraction * n)
        test, val, train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
        self._store(TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]), TensorDataset(x[test], y[test]))


class _TorchvisionDataModule(_ImageDataModule):
    """A torchvision image dataset with a seeded train/validation split of the official training set."""

    #: torchvision dataset class name
    dataset_name = ""
    default_val_size = 5000
    #: images in the official training and test sets (checked when reading local files)
    train_count, test_count = 60000, 10000

    def __init__(self, root: PathLike = "data", batch_size: int = 128, num_workers: int = 0, *,
                 download: bool = True, copy_raw_from: Optional[PathLike] = None, val_size: Optional[int] = None,
                 seed: int = 0, limit_train: Optional[int] = None, limit_val: Optional[int] = None,
                 limit_test: Optional[int] = None, eval_batch_size: Optional[int] = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, limit_train=limit_train,
                         limit_val=limit_val, limit_test=limit_test, eval_batch_size=eval_batch_size)
        self.root = Path(root)
        self.download = bool(download)
        self.copy_raw_from = None if copy_raw_from is None else Path(copy_raw_from)
        if self.copy_raw_from is not None and not self.copy_raw_from.is_dir():
            raise FileNotFoundError(f"copy_raw_from must be an existing directory, got {str(self.copy_raw_from)!r}")
        self.val_size = self.default_val_size if val_size is None else check_int("val_size", val_size, 0)

    @classmethod
    def from_directory(cls, source: PathLike, root: PathLike, **kwargs) -> "_TorchvisionDataModule":
        """A datamodule that reads the offline archives in ``source`` (copied into ``root`` first, so a
        read-only copy works) and never downloads: files are validated by content, not by checksum."""
        kwargs.setdefault("download", False)
        return cls(root, copy_raw_from=source, **kwargs)

    # where torchvision expects the files, relative to root
    def raw_dir(self) -> Path:
        return self.root / self.dataset_name / "raw"

    def local_dirs(self) -> List[Path]:
        """Folders searched for the dataset's files, in order: ``raw_dir()`` (where ``copy_raw_from`` is
        copied), ``root/<name>``, ``root`` and ``copy_raw_from`` itself."""
        dirs = [self.raw_dir(), self.root / self.dataset_name, self.root]
        if self.copy_raw_from is not None:
            dirs += [self.copy_raw_from, self.copy_raw_from / "raw"]
        return [d for d in dirs if d.is_dir()]

    def _copy_raw(self) -> None:
        if self.copy_raw_from is None:
            return
        target = self.raw_dir()
        target.mkdir(parents=True, exist_ok=True)
        source = self.copy_raw_from
        if target.name == "raw" and (source / "raw").is_dir():  # given the dataset folder, not its raw/
            source = source / "raw"
        for f in source.iterdir():
            if f.is_file() and not (target / f.name).exists():
                shutil.copy2(f, target / f.name)
            elif f.is_dir() and not (target / f.name).exists():
                shutil.copytree(f, target / f.name)

    def load_local(self, train: bool) -> Optional[Tuple[Tensor, Tensor]]:
        """``(uint8 images (N, C, H, W), int64 labels)`` of a split read from :meth:`local_dirs` (see
        :mod:`mmrobust.image.files`), or ``None`` when its files are absent."""
        return load_idx_split(self.local_dirs(), train, self.train_count if train else self.test_count)

    def _download(self) -> None:
        import torchvision

        cls = getattr(torchvision.datasets, self.dataset_name)
        for train in (True, False):
            cls(str(self.root), train=train, download=True)

    def _missing_error(self) -> RuntimeError:
        searched = [str(d) for d in self.local_dirs()] or [str(self.root)]
        return RuntimeError(f"{self.dataset_name} files not found in any of {searched}; "
                            "pass copy_raw_from=<directory with the original archives> (any copy of the same "
                            "content is accepted), or download=True with network access")

    def prepare_data(self) -> None:
        self._copy_raw()
        if all(self._present(train) for train in (True, False)):
            return  # local files are used as they are: never download over them
        if not self.download:
            raise self._missing_error()
        self._download()

    def _present(self, train: bool) -> bool:
        try:
            return self.load_local(train) is not None
        except InvalidDataFile:
            return True  # there, but wrong: setup() reports it rather than downloading over it

    def _load(self, train: bool) -> Tuple[Tensor, Tensor]:
        loaded = self.load_local(train)
        if loaded is None:
            raise self._missing_error()
        return loaded

    def train_augmentation(self):
        return None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        self._copy_raw()
        x, y = self._load(True)
        xt, yt = self._load(False)
        if self.val_size >= len(y):
            raise ValueError(f"val_size must be smaller than the training set ({len(y)}), got {self.val_size}")
        train, val = split_train_val(len(y), self.val_size, self.seed)
        self._store(UInt8Images(x[train], y[train], self.train_augmentation()), UInt8Images(x[val], y[val]),
                    UInt8Images(xt, yt))


class MNISTDataModule(_TorchvisionDataModule):
    """MNIST (LeCun et al. 1998): 60,000 training (55,000 train / 5,000 validation, seeded) and 10,000
    test images, ``(B, 1, 28, 28)`` in [0, 1].

    Offline: ``MNISTDataModule.from_directory("/path/to/MNIST/raw", root="data")`` copies the four IDX
    files (``train-images-idx3-ubyte[.gz]`` ...; gzip or not, any compression level) to ``data/MNIST/raw``
    and reads them there.
    """

    dataset_name = "MNIST"
    num_classes = 10
    dims = (1, 28, 28)


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (Xiao et al. 2017, https://arxiv.org/abs/1708.07747), same layout and split as MNIST."""

    dataset_name = "FashionMNIST"


class CIFAR10DataModule(_TorchvisionDataModule):
    """CIFAR-10 (Krizhevsky 2009): 50,000 training (45,000 / 5,000 validation, seeded) and 10,000 test
    images, ``(B, 3, 32, 32)`` in [0, 1].

    ``augment=True`` applies the standard training augmentation (4-pixel padded random crop and
    horizontal flip, as in He et al. 2016 and Rice et al. 2020) to the training split only. Offline:
    ``copy_raw_from`` is a directory holding ``cifar-10-python.tar.gz`` (read without extracting) or the
    extracted ``cifar-10-batches-py``; it is copied to ``root``.
    """

    dataset_name = "CIFAR10"
    num_classes = 10
    dims = (3, 32, 32)
    #: per-channel statistics of the training set, for models' ``mean``/``std`` arguments
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2471, 0.2435, 0.2616)

    def __init__(self, root: PathLike = "data", batch_size: int = 128, num_workers: int = 0, *,
                 augment: bool = True, **kwargs):
        super().__init__(root, batch_size, num_workers, **kwargs)
        self.augment = bool(augment)

    def raw_dir(self) -> Path:
        return self.root  # torchvision keeps the archive and the extracted batches directly under root

    def load_local(self, train: bool) -> Optional[Tuple[Tensor, Tensor]]:
        return load_cifar10_split(self.local_dirs(), train)

    def train_augmentation(self):
        if not self.augment:
            return None
        from torchvision.transforms import v2

        return v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
