"""Speech datamodules returning ``(wave, y, lengths)`` batches of float waveforms in ``[-1, 1]``.

* :class:`SyntheticSpeechDataModule` -- the embedded offline default (:mod:`mmrobust.audio.synth`).
* :class:`FSDDDataModule` -- Free Spoken Digit Dataset (Jackson et al., github.com/Jakobovski/free-spoken-digit-dataset).
* :class:`~mmrobust.audio.speech_commands.SpeechCommandsDataModule` -- Speech Commands v0.01/v0.02
  (Warden 2018, https://arxiv.org/abs/1804.03209), full or partial, in its own module.

Waves are read with ``soundfile`` (``torchaudio.load`` needs ``torchcodec``/ffmpeg, which a plain
install lacks), mixed to mono, resampled with ``torchaudio.functional.resample`` and cropped or
zero-padded to ``max_length`` samples; ``lengths`` holds each clip's valid length, so attacks through
:class:`~mmrobust.adapters.audio.WaveformAdapter` never touch the padding. Train batches are augmented on
the device in ``on_after_batch_transfer``, using the global RNG that Lightning seeds: ``augment=True``
applies :func:`augment_batch` (random gain, time shift and noise inside the valid part), a callable such
as :class:`~mmrobust.audio.augment.SpeechAugmentation` (speed, shift, gain, reverberation, noise) replaces it.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..errors import check_choice, check_fraction, check_int, check_positive
from .synth import NUM_SYNTH_CLASSES, synth_digits

FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/heads/master.zip"
FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
_FSDD_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


def pad_or_crop(wave: Tensor, length: int) -> Tuple[Tensor, int]:
    """Crop or zero-pad the last dimension to ``length``; returns ``(wave, valid_length)``."""
    t = wave.shape[-1]
    if t >= length:
        return wave[..., :length], length
    return torch.nn.functional.pad(wave, (0, length - t)), t


def load_wav(path, sample_rate: Optional[int] = None) -> Tuple[Tensor, int]:
    """Read a WAV file as a mono float tensor ``(T,)`` in ``[-1, 1]`` (resampled to ``sample_rate`` if given)."""
    import soundfile as sf
    import torchaudio.functional as AF

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    wave = torch.from_numpy(data).mean(1)
    if sample_rate is not None and sr != sample_rate:
        wave = AF.resample(wave, sr, sample_rate)
        sr = sample_rate
    return wave.clamp(-1, 1), sr


class WaveformDataset(Dataset):
    """In-memory ``(wave (T,), label, length)`` items."""

    def __init__(self, waves: Tensor, labels: Tensor, lengths: Tensor):
        if not (len(waves) == len(labels) == len(lengths)):
            raise ValueError(f"waves, labels and lengths must have the same length, got "
                             f"{len(waves)}, {len(labels)}, {len(lengths)}")
        self.waves, self.labels, self.lengths = waves, labels.long(), lengths.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.waves[i], self.labels[i], self.lengths[i]

    @classmethod
    def from_clips(cls, clips: Sequence[Tensor], labels: Sequence[int], max_length: int) -> "WaveformDataset":
        waves = torch.zeros(len(clips), max_length)
        lengths = torch.zeros(len(clips), dtype=torch.long)
        for i, c in enumerate(clips):
            waves[i], lengths[i] = pad_or_crop(c, max_length)
        return cls(waves, torch.as_tensor(list(labels)), lengths)


def augment_batch(wave: Tensor, lengths: Tensor, *, gain_db: float = 6.0, max_shift: int = 400,
                  noise_snr_db: Tuple[float, float] = (20.0, 40.0)) -> Tensor:
    """Random gain (+-``gain_db``), delay (``0..max_shift`` samples, kept inside the valid part) and
    white noise at a random SNR, all per example; padding stays zero and values stay in ``[-1, 1]``."""
    n, t = wave.shape[0], wave.shape[-1]
    dev = wave.device
    mask = (torch.arange(t, device=dev)[None] < lengths.to(dev)[:, None]).to(wave.dtype)
    gain = torch.pow(10.0, (torch.rand(n, device=dev) * 2 - 1) * gain_db / 20)
    shift = (torch.rand(n, device=dev) * (max_shift + 1)).long()
    idx = (torch.arange(t, device=dev)[None] - shift[:, None])
    shifted = torch.where(idx >= 0, wave.gather(-1, idx.clamp_min(0)), torch.zeros((), device=dev))
    snr = noise_snr_db[0] + torch.rand(n, device=dev) * (noise_snr_db[1] - noise_snr_db[0])
    rms = (wave.pow(2).sum(-1) / lengths.to(dev).clamp_min(1)).sqrt()
    noise = torch.randn_like(wave) * (rms * torch.pow(10.0, -snr / 20))[:, None]
    return ((shifted * gain[:, None] + noise) * mask).clamp(-1, 1)


class SplitLoaders:
    """``val_dataloader``/``test_dataloader`` of a datamodule whose ``setup`` builds ``train_set``/``val_set``/
    ``test_set``, batched with ``batch_size``, ``num_workers`` and the class's ``collate`` (``None``: PyTorch's)."""

    collate: Optional[Callable] = None

    def _loader(self, ds, shuffle: bool) -> DataLoader:
        if ds is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not built this split yet")
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=self.collate)

    def val_dataloader(self):
        return self._loader(self.val_set, False)

    def test_dataloader(self):
        return self._loader(self.test_set, False)


class _SpeechDataModule(SplitLoaders, pl.LightningDataModule):
    """Shared loaders and on-device train augmentation for the speech datamodules."""

    num_classes: int = 10

    def __init__(self, batch_size: int = 64, num_workers: int = 0, augment=True,
                 sample_rate: int = 8000, max_length: int = 8000):
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        if not isinstance(augment, bool) and not callable(augment):
            raise TypeError("augment must be True (gain, shift and noise: augment_batch), False, or a callable "
                            f"(wave, lengths) -> (wave, lengths) such as SpeechAugmentation(), got {augment!r}")
        self.augment = augment
        self.sample_rate = int(check_positive("sample_rate", sample_rate))
        self.max_length = check_int("max_length", max_length, 1)
        self.train_set: Optional[WaveformDataset] = None
        self.val_set: Optional[WaveformDataset] = None
        self.test_set: Optional[WaveformDataset] = None

    def train_dataloader(self):
        return self._loader(self.train_set, True)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        trainer = getattr(self, "trainer", None)
        if self.augment is not False and trainer is not None and trainer.training:
            wave, y, lengths = batch
            if self.augment is True:
                wave = augment_batch(wave, lengths, max_shift=self.sample_rate // 20)
            else:
                wave, lengths = self.augment(wave, lengths)
            # keep the collated container (a list): adversarial-training callbacks replace its entries in place
            batch = type(batch)((wave, y, lengths))
        return batch

    @staticmethod
    def _split_val(ds: WaveformDataset, fraction: float, seed: int) -> Tuple[WaveformDataset, WaveformDataset]:
        n_val = int(round(fraction * len(ds)))
        perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
        tr, va = perm[n_val:], perm[:n_val]
        take = lambda idx: WaveformDataset(ds.waves[idx], ds.labels[idx], ds.lengths[idx])  # noqa: E731
        return take(tr), take(va)


class SyntheticSpeechDataModule(_SpeechDataModule):
    """Synthetic spoken-digit-like audio (offline, deterministic by ``seed``; see :mod:`mmrobust.audio.synth`).

    Train, validation and test sets are generated from different seeds, so they share no utterance.
    """

    def __init__(self, num_train: int = 2000, num_val: int = 300, num_test: int = 500, num_classes: int = 10,
                 seed: int = 0, sample_rate: int = 8000, max_length: int = 8000, **kwargs):
        super().__init__(sample_rate=sample_rate, max_length=max_length, **kwargs)
        self.num_train = check_int("num_train", num_train, 1)
        self.num_val = check_int("num_val", num_val, 1)
        self.num_test = check_int("num_test", num_test, 1)
        if not 2 <= num_classes <= NUM_SYNTH_CLASSES:
            raise ValueError(f"num_classes must lie in [2, {NUM_SYNTH_CLASSES}], got {num_classes}")
        self.num_classes = num_classes
        self.seed = int(seed)

    def setup(self, stage: Optional[str] = None):
        if self.train_set is not None:
            return
        kw = dict(sample_rate=self.sample_rate, length=self.max_length, num_classes=self.num_classes)
        self.train_set = WaveformDataset(*synth_digits(self.num_train, seed=3 * self.seed, **kw))
        self.val_set = WaveformDataset(*synth_digits(self.num_val, seed=3 * self.seed + 1, **kw))
        self.test_set = WaveformDataset(*synth_digits(self.num_test, seed=3 * self.seed + 2, **kw))


def download_fsdd(root) -> Path:
    """Download and unpack the FSDD GitHub archive into ``root`` (online use only); returns ``root``."""
    from torch.hub import download_url_to_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "fsdd-master.zip"
    if not archive.exists():
        download_url_to_file(FSDD_URL, str(archive))
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            parts = info.filename.split("/")
            if len(parts) >= 2 and parts[-2] == "recordings" and parts[-1].endswith(".wav"):
                (root / "recordings").mkdir(exist_ok=True)
                (root / "recordings" / parts[-1]).write_bytes(z.read(info))
    return root


class FSDDDataModule(_SpeechDataModule):
    """Free Spoken Digit Dataset: ``recordings/{digit}_{speaker}_{index}.wav``, 8 kHz, 6 speakers x 10 digits x 50.

    Args:
        root: folder holding ``recordings/``.
        split: ``"official"`` (index 0-4 of every speaker and digit is the test set, 5-49 train) or
            ``"speaker"`` (``test_speakers`` are held out entirely -- the harder, more honest check).
        test_speakers: held-out speakers for ``split="speaker"``.
        val_fraction: part of the training clips kept for validation.
        sample_rate / max_length: resampling rate and padded length in samples (8000 = 1 s at 8 kHz).
        download: fetch the GitHub archive (``FSDD_URL``) into ``root`` when ``recordings/`` is missing.
    """

    def __init__(self, root="data/fsdd", split: str = "official", test_speakers: Sequence[str] = ("theo",),
                 val_fraction: float = 0.1, seed: int = 0, sample_rate: int = 8000, max_length: int = 8000,
                 download: bool = False, **kwargs):
        super().__init__(sample_rate=sample_rate, max_length=max_length, **kwargs)
        self.root = Path(root)
        self.split = check_choice("split", split, {"official", "speaker"})
        self.test_speakers = tuple(test_speakers)
        self.val_fraction = check_fraction("val_fraction", val_fraction, open_high=True)
        self.seed = int(seed)
        self.download = bool(download)

    def prepare_data(self):
        if self.download and not (self.root / "recordings").is_dir():
            download_fsdd(self.root)

    def files(self) -> List[Tuple[Path, int, str, int]]:
        """``(path, digit, speaker, index)`` for every recording under ``root/recordings``."""
        rec = self.root / "recordings"
        if not rec.is_dir():
            raise FileNotFoundError(f"no FSDD recordings at {rec}; pass root=<folder with recordings/> or download=True")
        out = []
        for name in sorted(os.listdir(rec)):
            m = _FSDD_NAME.match(name)
            if m:
                out.append((rec / name, int(m.group(1)), m.group(2), int(m.group(3))))
        if not out:
            raise FileNotFoundError(f"{rec} has no files named {{digit}}_{{speaker}}_{{index}}.wav")
        return out

    def setup(self, stage: Optional[str] = None):
        if self.train_set is not None:
            return
        files = self.files()
        speakers = {f[2] for f in files}
        if self.split == "speaker":
            unknown = set(self.test_speakers) - speakers
            if unknown or not self.test_speakers:
                raise ValueError(f"test_speakers must be a non-empty subset of {sorted(speakers)}, got {self.test_speakers}")
            is_test = lambda f: f[2] in self.test_speakers  # noqa: E731
        else:
            is_test = lambda f: f[3] < 5  # noqa: E731
        train_clips, train_y, test_clips, test_y = [], [], [], []
        for f in files:
            wave, _ = load_wav(f[0], self.sample_rate)
            (test_clips if is_test(f) else train_clips).append(wave)
            (test_y if is_test(f) else train_y).append(f[1])
        self.speakers = sorted(speakers)
        train = WaveformDataset.from_clips(train_clips, train_y, self.max_length)
        self.train_set, self.val_set = self._split_val(train, self.val_fraction, self.seed)
        self.test_set = WaveformDataset.from_clips(test_clips, test_y, self.max_length)
