"""Spoken digit *sequences* for CTC recognisers: isolated-digit clips concatenated into utterances.

:class:`DigitSequenceDataset` composes utterance ``i`` deterministically from ``(seed, i)``: one speaker,
``min_digits``-``max_digits`` of that speaker's clips drawn at random, joined by random silences (and a
random lead-in and tail). :class:`FSDDSequenceDataModule` builds train / validation / test sets from the Free
Spoken Digit Dataset with the test speakers held out entirely (the validation utterances are made of
training speakers' clips that no training utterance uses).

Batches are ``(wave, targets, lengths, target_lengths)``: ``wave`` ``(B, T)`` zero-padded to the longest
utterance of the batch, ``targets`` ``(B, S)`` digit labels 0-9 padded with ``-1``, ``lengths`` the valid
samples and ``target_lengths`` the digits per utterance. Train batches are augmented on the device like
the classification datamodules (``augment``: a callable ``(wave, lengths) -> (wave, lengths)`` such as
:class:`~mmrobust.audio.augment.SpeechAugmentation`, which keeps the padding zero and ``lengths`` true).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..errors import check_fraction, check_int, check_positive
from .data import SplitLoaders
from .transforms import _range

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def transcript(digits: Sequence[int]) -> str:
    """Digits as spoken words, ``[3, 1] -> "three one"`` (what CER and WER are computed on)."""
    return " ".join(DIGIT_WORDS[int(d)] for d in digits)


def _seconds_range(name: str, value, sample_rate: int) -> Tuple[float, float]:
    lo, hi = _range(name, value)
    if lo < 0:
        raise ValueError(f"{name} must be a (low, high) range of seconds >= 0, e.g. (0.05, 0.3), got {value!r}")
    return lo * sample_rate, hi * sample_rate


class DigitSequenceDataset(Dataset):
    """``size`` utterances of ``min_digits``-``max_digits`` digits, each composed from one speaker's clips.

    Args:
        clips: 1-D waveforms of isolated digits (float, in ``[-1, 1]``).
        digits: the digit (0-9) of each clip.
        speakers: the speaker of each clip (utterances never mix speakers).
        size: number of utterances.
        gap_seconds: range of the silence between two digits; ``edge_seconds`` the range of the lead-in
            and of the tail.
        seed: utterance ``i`` depends only on ``(seed, i)`` and the clips.

    Items are ``(wave (T,), digits (n,), length)`` with ``length == T``.
    """

    def __init__(self, clips: Sequence[Tensor], digits: Sequence[int], speakers: Sequence[str], size: int, *,
                 min_digits: int = 3, max_digits: int = 7, gap_seconds=(0.05, 0.3), edge_seconds=(0.0, 0.2),
                 sample_rate: int = 8000, seed: int = 0):
        if not (len(clips) == len(digits) == len(speakers)) or not len(clips):
            raise ValueError(f"clips, digits and speakers must be non-empty and of one length, got "
                             f"{len(clips)}, {len(digits)}, {len(speakers)}")
        if any(not 0 <= int(d) <= 9 for d in digits):
            raise ValueError(f"digits must lie in 0..9, got {sorted(set(map(int, digits)))}")
        self.clips = [c.reshape(-1).float() for c in clips]
        self.digits = [int(d) for d in digits]
        self.by_speaker: Dict[str, List[int]] = {}
        for i, s in enumerate(speakers):
            self.by_speaker.setdefault(str(s), []).append(i)
        self.speaker_names = sorted(self.by_speaker)
        self.size = check_int("size", size, 1)
        self.min_digits = check_int("min_digits", min_digits, 1)
        self.max_digits = check_int("max_digits", max_digits, self.min_digits)
        self.gap = _seconds_range("gap_seconds", gap_seconds, sample_rate)
        self.edge = _seconds_range("edge_seconds", edge_seconds, sample_rate)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.size

    def speaker(self, i: int) -> str:
        """The speaker of utterance ``i``."""
        return self.speaker_names[self._draw(i)[0]]

    def _draw(self, i: int) -> Tuple[int, List[int], List[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        spk = int(torch.randint(len(self.speaker_names), (1,), generator=g))
        pool = self.by_speaker[self.speaker_names[spk]]
        n = int(torch.randint(self.min_digits, self.max_digits + 1, (1,), generator=g))
        picks = [pool[int(j)] for j in torch.randint(len(pool), (n,), generator=g)]
        u = torch.rand(n + 1, generator=g)
        silences = [int(lo + (hi - lo) * float(v)) for v, (lo, hi) in
                    zip(u, [self.edge] + [self.gap] * (n - 1) + [self.edge])]
        return spk, picks, silences

    def length(self, i: int) -> int:
        """Samples in utterance ``i`` (without composing it)."""
        _, picks, silences = self._draw(i)
        return sum(silences) + sum(self.clips[p].shape[0] for p in picks)

    def __getitem__(self, i: int):
        if not 0 <= i < self.size:
            raise IndexError(f"utterance {i} out of range [0, {self.size})")
        _, picks, silences = self._draw(i)
        parts = [torch.zeros(silences[0])]
        for k, p in enumerate(picks):
            parts += [self.clips[p], torch.zeros(silences[k + 1])]
        wave = torch.cat(parts)
        return wave, torch.tensor([self.digits[p] for p in picks]), wave.shape[0]


def collate_sequences(items) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pad a list of ``(wave, digits, length)`` items into ``(wave, targets, lengths, target_lengths)``."""
    waves, digits, lengths = zip(*items)
    wave = torch.nn.utils.rnn.pad_sequence(list(waves), batch_first=True)
    targets = torch.nn.utils.rnn.pad_sequence(list(digits), batch_first=True, padding_value=-1)
    return (wave, targets, torch.as_tensor(lengths, dtype=torch.long),
            torch.tensor([len(d) for d in digits], dtype=torch.long))


class LengthBucketSampler(torch.utils.data.Sampler):
    """Batches of utterances of similar length (less padding to compute on): every epoch the indices are
    shuffled, cut into chunks of ``chunk`` batches, sorted by length within a chunk and cut into batches,
    and the batches are shuffled. Deterministic given ``seed`` and the epoch count."""

    def __init__(self, lengths: Sequence[int], batch_size: int, chunk: int = 20, seed: int = 0):
        self.lengths = list(lengths)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.chunk = check_int("chunk", chunk, 1) * self.batch_size
        self.seed, self.epoch = int(seed), 0

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        batches = []
        for start in range(0, len(order), self.chunk):
            part = sorted(order[start:start + self.chunk], key=self.lengths.__getitem__)
            batches += [part[k:k + self.batch_size] for k in range(0, len(part), self.batch_size)]
        for j in torch.randperm(len(batches), generator=g).tolist():
            yield batches[j]


def target_lists(targets: Tensor, target_lengths: Tensor) -> List[List[int]]:
    """Padded ``targets`` back to one list of digits per utterance."""
    return [targets[i, :int(n)].tolist() for i, n in enumerate(target_lengths)]


class FSDDSequenceDataModule(SplitLoaders, pl.LightningDataModule):
    """Digit sequences (3-7 digits by default) made of Free Spoken Digit Dataset clips, speakers held out.

    The clips of ``test_speakers`` make the test utterances; of the other speakers' clips, a
    ``val_fraction`` (per speaker, chosen with ``seed``) make the validation utterances and the rest the
    training utterances, so no clip appears in two splits. Training batches group utterances of similar
    length (:class:`LengthBucketSampler`), so little time goes into padding.

    Args:
        root: folder holding FSDD's ``recordings/`` (``{digit}_{speaker}_{index}.wav``).
        test_speakers: speakers held out for testing.
        num_train / num_val / num_test: utterances per split (composed on the fly, deterministic by ``seed``).
        min_digits / max_digits / gap_seconds / edge_seconds: see :class:`DigitSequenceDataset`.
        max_clip_seconds: clips are cropped to this length first (a few FSDD clips hold long silences).
        augment: ``False`` or a callable ``(wave, lengths) -> (wave, lengths)`` applied to train batches on
            the device (e.g. :class:`~mmrobust.audio.augment.SpeechAugmentation`).
    """

    collate = staticmethod(collate_sequences)

    def __init__(self, root="data/fsdd", test_speakers: Sequence[str] = ("george", "theo"), *,
                 num_train: int = 4000, num_val: int = 200, num_test: int = 400, min_digits: int = 3,
                 max_digits: int = 7, gap_seconds=(0.05, 0.3), edge_seconds=(0.0, 0.2),
                 max_clip_seconds: float = 1.0, val_fraction: float = 0.1, sample_rate: int = 8000,
                 batch_size: int = 32, num_workers: int = 0, augment: Optional[Callable] = None, seed: int = 0):
        super().__init__()
        self.root = Path(root)
        self.test_speakers = tuple(test_speakers)
        if not self.test_speakers:
            raise ValueError("test_speakers must name at least one speaker to hold out, e.g. ('george', 'theo')")
        self.sizes = {"train": check_int("num_train", num_train, 1), "val": check_int("num_val", num_val, 1),
                      "test": check_int("num_test", num_test, 1)}
        self.compose = dict(min_digits=min_digits, max_digits=max_digits, gap_seconds=gap_seconds,
                            edge_seconds=edge_seconds, sample_rate=sample_rate)
        self.max_clip = int(check_positive("max_clip_seconds", max_clip_seconds) * sample_rate)
        self.val_fraction = check_fraction("val_fraction", val_fraction, open_high=True)
        self.sample_rate = int(sample_rate)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        if augment is not None and augment is not False and not callable(augment):
            raise TypeError(f"augment must be None/False or a callable (wave, lengths) -> (wave, lengths) such as "
                            f"SpeechAugmentation(), got {augment!r}")
        self.augment = augment or None
        self.seed = int(seed)
        self.train_set: Optional[DigitSequenceDataset] = None
        self.val_set: Optional[DigitSequenceDataset] = None
        self.test_set: Optional[DigitSequenceDataset] = None

    def setup(self, stage: Optional[str] = None):
        if self.train_set is not None:
            return
        from .data import FSDDDataModule, load_wav

        files = FSDDDataModule(root=self.root).files()
        speakers = sorted({f[2] for f in files})
        unknown = set(self.test_speakers) - set(speakers)
        if unknown or len(set(self.test_speakers)) >= len(speakers):
            raise ValueError(f"test_speakers must be a proper subset of the speakers found {speakers}, "
                             f"got {self.test_speakers}")
        g = torch.Generator().manual_seed(self.seed)
        pools: Dict[str, Tuple[list, list, list]] = {k: ([], [], []) for k in ("train", "val", "test")}
        for spk in speakers:
            own = [f for f in files if f[2] == spk]
            if spk in self.test_speakers:
                split_of = ["test"] * len(own)
            else:
                n_val = int(round(self.val_fraction * len(own)))
                order = torch.randperm(len(own), generator=g).tolist()
                split_of = [""] * len(own)
                for rank, j in enumerate(order):
                    split_of[j] = "val" if rank < n_val else "train"
            for f, split in zip(own, split_of):
                wave, _ = load_wav(f[0], self.sample_rate)
                pool = pools[split]
                pool[0].append(wave[:self.max_clip])
                pool[1].append(f[1])
                pool[2].append(spk)
        if not pools["val"][0]:
            pools["val"] = pools["train"]  # val_fraction=0: validate on (other utterances of) the training clips
        for k, offset in (("train", 0), ("val", 1), ("test", 2)):
            ds = DigitSequenceDataset(*pools[k], self.sizes[k], seed=3 * self.seed + offset, **self.compose)
            setattr(self, f"{k}_set", ds)
        self.speakers = speakers

    def train_dataloader(self):
        if self.train_set is None:
            return self._loader(None, True)
        lengths = [self.train_set.length(i) for i in range(len(self.train_set))]
        sampler = LengthBucketSampler(lengths, self.batch_size, seed=self.seed)
        return DataLoader(self.train_set, batch_sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate_sequences)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        trainer = getattr(self, "trainer", None)
        if self.augment is not None and trainer is not None and trainer.training:
            wave, targets, lengths, target_lengths = batch
            wave, lengths = self.augment(wave, lengths)
            batch = (wave, targets, lengths, target_lengths)
        return batch
