"""Paired spoken + handwritten digits: a real two-modality task for multimodal robustness.

Each example pairs a spoken digit (the Free Spoken Digit Dataset from a local folder, else the embedded
synthetic speech of :mod:`mmrobust.audio.synth`) with a handwritten digit of the *same class* (MNIST from
a local copy of its archives, else scikit-learn's 8x8 digits) -- the construction of AV-MNIST (Vielzeuf
et al. 2018, "CentralNet: a Multilayer Approach for Multimodal Fusion", ECCV Workshops, Sec. 4), which
pairs MNIST images with FSDD recordings of the same digit:

.. math:: (x^{img}_{\\pi(i)}, x^{aud}_i, y_i), \\qquad \\pi(i) \\sim \\mathrm{Uniform}\\{j : y^{img}_j = y_i\\}

with a seeded, per-split sampler :math:`\\pi`; images are drawn from the same split as the audio clip,
so no test image or clip is ever seen in training. Batches are dicts
``{"image": (B, 1, H, W) in [0, 1], "audio": (B, T) in [-1, 1], "lengths": (B,), "y": (B,)}``, which
:class:`~mmrobust.adapters.MultimodalAdapter` reads (padding beyond ``lengths`` is never perturbed) and
which adversarial-training callbacks can update in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..errors import check_choice, check_int

PathLike = Union[str, Path]
SPLITS = ("train", "val", "test")


def dataset_labels(dataset: Dataset) -> Tensor:
    """Integer labels of a dataset of ``(x, y, ...)`` items without touching the inputs where possible."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].long()
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, Tensor):
        return labels.long()
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)


def pair_by_class(anchor_labels: Tensor, partner_labels: Tensor, generator: torch.Generator) -> Tensor:
    """For every anchor label, the index of a partner example of the same class drawn uniformly at random."""
    partner = torch.empty(len(anchor_labels), dtype=torch.long)
    for c in anchor_labels.unique().tolist():
        pool = (partner_labels == c).nonzero().flatten()
        if len(pool) == 0:
            raise ValueError(f"class {c} has audio examples but no image of the same class to pair with")
        where = (anchor_labels == c).nonzero().flatten()
        partner[where] = pool[torch.randint(len(pool), (len(where),), generator=generator)]
    return partner


class PairedDigits(Dataset):
    """``audio_set[i]`` paired with ``image_set[partner[i]]`` (same class); items are dicts."""

    def __init__(self, image_set: Dataset, audio_set: Dataset, partner: Tensor):
        if len(partner) != len(audio_set):
            raise ValueError(f"partner must have one entry per audio clip ({len(audio_set)}), got {len(partner)}")
        self.image_set, self.audio_set, self.partner = image_set, audio_set, partner

    def __len__(self) -> int:
        return len(self.audio_set)

    def __getitem__(self, i) -> Dict[str, Tensor]:
        wave, y, length = self.audio_set[i]
        image, y_image = self.image_set[int(self.partner[i])][:2]
        if int(y_image) != int(y):
            raise RuntimeError(f"pairing broke: audio clip {i} has class {int(y)}, its image class {int(y_image)}")
        return {"image": image, "audio": wave, "lengths": torch.as_tensor(length), "y": torch.as_tensor(y)}


class PairedDigitsDataModule(pl.LightningDataModule):
    """Spoken digit + handwritten digit of the same class, one dict batch per step.

    Args:
        image: ``"digits"`` (scikit-learn 8x8, embedded) or ``"mnist"`` (28x28, needs ``mnist_root``).
        audio: ``"synthetic"`` (embedded) or ``"fsdd"`` (needs ``fsdd_root``, the folder with ``recordings/``).
        mnist_root: folder with the four MNIST ``.gz`` archives (copied to ``work_dir``; nothing downloads).
        fsdd_root: FSDD folder; the official split (recordings 0-4 of every speaker and digit are test).
        num_train, num_val, num_test: synthetic speech sizes (ignored for FSDD).
        max_length: audio length in samples at 8 kHz (clips are cropped or zero-padded; ``lengths`` says which).
        limit_train: keep at most this many training pairs (quick runs).
        batch_size, num_workers: loader settings.
        seed: seeds the image split, the synthetic speech and the pairing sampler (one generator per split).
        work_dir: writable folder for the MNIST copy.
    """

    num_classes = 10

    def __init__(self, image: str = "digits", audio: str = "synthetic", *, mnist_root: Optional[PathLike] = None,
                 fsdd_root: Optional[PathLike] = None, num_train: int = 1200, num_val: int = 200,
                 num_test: int = 400, max_length: int = 4000, limit_train: Optional[int] = None,
                 batch_size: int = 64, num_workers: int = 0, seed: int = 0, work_dir: PathLike = "data"):
        super().__init__()
        self.image = check_choice("image", image, ("digits", "mnist"))
        self.audio = check_choice("audio", audio, ("synthetic", "fsdd"))
        if self.image == "mnist" and mnist_root is None:
            raise ValueError("image='mnist' needs mnist_root=<folder with the MNIST .gz archives>")
        if self.audio == "fsdd" and fsdd_root is None:
            raise ValueError("audio='fsdd' needs fsdd_root=<folder with recordings/>")
        self.mnist_root, self.fsdd_root = mnist_root, fsdd_root
        self.num_train = check_int("num_train", num_train, 1)
        self.num_val = check_int("num_val", num_val, 1)
        self.num_test = check_int("num_test", num_test, 1)
        self.max_length = check_int("max_length", max_length, 1)
        self.limit_train = None if limit_train is None else check_int("limit_train", limit_train, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.seed = check_int("seed", seed, 0)
        self.work_dir = Path(work_dir)
        self.sets: Dict[str, PairedDigits] = {}
        self.sample_rate = 8000

    @property
    def image_size(self) -> int:
        return 28 if self.image == "mnist" else 8

    def _image_module(self):
        from ..image.data import DigitsDataModule, MNISTDataModule

        if self.image == "mnist":
            return MNISTDataModule.from_directory(self.mnist_root, root=self.work_dir, seed=self.seed)
        return DigitsDataModule(seed=self.seed)

    def _audio_module(self):
        from ..audio.data import FSDDDataModule, SyntheticSpeechDataModule

        if self.audio == "fsdd":
            return FSDDDataModule(root=self.fsdd_root, split="official", seed=self.seed, max_length=self.max_length,
                                  augment=False)
        return SyntheticSpeechDataModule(num_train=self.num_train, num_val=self.num_val, num_test=self.num_test,
                                         seed=self.seed, max_length=self.max_length, augment=False)

    def prepare_data(self) -> None:
        if self.image == "mnist":
            self._image_module().prepare_data()

    def setup(self, stage: Optional[str] = None) -> None:
        if self.sets:
            return
        images, audio = self._image_module(), self._audio_module()
        if self.image == "mnist":
            images.prepare_data()  # copies the local archives; finds them by checksum, no download
        images.setup("fit")
        audio.setup("fit")
        for k, split in enumerate(SPLITS):
            image_set, audio_set = getattr(images, f"{split}_set"), getattr(audio, f"{split}_set")
            if split == "train" and self.limit_train is not None and self.limit_train < len(audio_set):
                audio_set = Subset(audio_set, range(self.limit_train))
            generator = torch.Generator().manual_seed(self.seed * len(SPLITS) + k)
            partner = pair_by_class(dataset_labels(audio_set), dataset_labels(image_set), generator)
            self.sets[split] = PairedDigits(image_set, audio_set, partner)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.sets:
            raise RuntimeError(f"call {type(self).__name__}.setup() (the Trainer does) before asking for loaders")
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(self.sets[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, generator=generator)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
