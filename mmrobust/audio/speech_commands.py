"""Speech Commands (Warden 2018, "Speech Commands: A Dataset for Limited-Vocabulary Speech Recognition",
https://arxiv.org/abs/1804.03209) as it is shipped: either release (``v0.01``: 30 words, ``v0.02``: 35
words), the full set or any subset of its files.

The splits follow the release's own ``validation_list.txt`` and ``testing_list.txt`` (Warden 2018, Sec. 5:
the hash-based split that keeps each speaker in one split); training is every other clip *present*.
Files named by the lists but absent from the folder (a partial copy) are skipped and counted in
:attr:`SpeechCommandsDataModule.missing`. Clips are read lazily, so the full release (105,829 clips in
v0.02) does not have to fit in memory.

Tasks (Warden 2018, Sec. 6):

* ``"10"``: the ten keywords only (``yes no up down left right on off stop go``); other words are dropped.
* ``"12"``: the ten keywords, ``_unknown_`` (every other word) and ``_silence_`` (one-second pieces of the
  recordings in ``_background_noise_``), the task of the paper's baseline and most keyword-spotting papers.
* ``"35"`` (v0.02) / ``"30"`` (v0.01) / ``"all"``: every word of the release, one class each.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from ..errors import check_choice, check_fraction, check_int
from .data import _SpeechDataModule, load_wav, pad_or_crop

VERSIONS = ("v0.01", "v0.02")
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
WORDS_V001 = KEYWORDS + ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                         "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow")
WORDS_V002 = WORDS_V001 + ("backward", "forward", "follow", "learn", "visual")
UNKNOWN, SILENCE = "_unknown_", "_silence_"
BACKGROUND = "_background_noise_"
TASKS = ("10", "12", "30", "35", "all")
#: where a release is published (the archive torchaudio's ``SPEECHCOMMANDS`` fetches; it unpacks without a top folder)
RELEASE_URL = "http://download.tensorflow.org/data/speech_commands_{version}.tar.gz"


class ReleaseNotFound(FileNotFoundError):
    """No Speech Commands release under ``root``: :attr:`version` was looked for in :attr:`candidates`
    (the accepted layouts); :attr:`other_version` is the other release when ``root`` holds that one instead,
    :attr:`url` where the release is published. Entry points (recipes) word their own advice from these."""

    def __init__(self, message: str, *, version: str, candidates: Sequence[Path], other_version: Optional[str]):
        super().__init__(message)
        self.version, self.candidates, self.other_version = version, list(candidates), other_version
        self.url = RELEASE_URL.format(version=version)


class Clip(NamedTuple):
    """One item: a file, its label, and for ``_silence_`` pieces the first sample of the piece."""

    path: Path
    label: int
    offset: Optional[int] = None


class WaveFileDataset(Dataset):
    """``(wave (max_length,), label, length)`` items read from WAV files on access (``soundfile``),
    resampled to ``sample_rate`` and cropped or zero-padded to ``max_length``; a :class:`Clip` with an
    ``offset`` yields the ``max_length`` samples starting there."""

    def __init__(self, clips: Sequence[Clip], sample_rate: int, max_length: int):
        self.clips = list(clips)
        self.sample_rate, self.max_length = sample_rate, max_length

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([c.label for c in self.clips], dtype=torch.long)

    def __getitem__(self, i):
        clip = self.clips[i]
        wave, _ = load_wav(clip.path, self.sample_rate)
        if clip.offset is not None:
            wave = wave[clip.offset:clip.offset + self.max_length]
        wave, length = pad_or_crop(wave, self.max_length)
        return wave, torch.tensor(clip.label), torch.tensor(length)


def _read_list(path: Path) -> List[str]:
    if not path.is_file():
        return []
    return [line.strip().replace("\\", "/") for line in path.read_text().splitlines() if line.strip()]


class SpeechCommandsDataModule(_SpeechDataModule):
    """Keyword spotting on Speech Commands ``v0.01`` or ``v0.02``, full or partial, with the official splits.

    Args:
        root: the release folder (holding ``yes/``, ``no/``, ..., ``testing_list.txt``) or a folder above it
            laid out as torchaudio downloads it (``SpeechCommands/speech_commands_<version>``) or as
            ``speech_commands_<version>``.
        version: ``"v0.01"`` or ``"v0.02"``.
        task: ``"10"``, ``"12"``, ``"35"`` (v0.02), ``"30"`` (v0.01) or ``"all"`` (see the module docstring).
        classes: explicit keywords instead of ``task`` (labels follow this order; other words are dropped).
        unknown_fraction: task ``"12"``: the ``_unknown_`` class holds this fraction of the non-keyword
            clips of each split (seeded draw; Warden's baseline uses about as many unknown as keyword clips).
        silence_fraction: task ``"12"``: ``_silence_`` pieces per split as a fraction of its keyword clips.
        limit_per_split: keep at most this many clips per split (seeded draw, quick experiments).
        download: let torchaudio download the release (online use only).
        seed: seeds the draws above; sample_rate / max_length: 16 kHz, one second by default.

    After :meth:`setup`: :attr:`classes` (label names), :attr:`missing` (listed files that are absent, per
    list) and :attr:`counts` (clips per split). Without a release under ``root`` (and without ``download``),
    :meth:`setup` and :meth:`folder` raise :class:`ReleaseNotFound` (``from mmrobust.audio import
    ReleaseNotFound``; a ``FileNotFoundError``), which carries the version, the folders looked at and the URL.
    """

    def __init__(self, root="data", version: str = "v0.02", task: str = "12", classes: Optional[Sequence[str]] = None,
                 unknown_fraction: float = 0.1, silence_fraction: float = 0.1, limit_per_split: Optional[int] = None,
                 download: bool = False, seed: int = 0, sample_rate: int = 16000, max_length: int = 16000, **kwargs):
        super().__init__(sample_rate=sample_rate, max_length=max_length, **kwargs)
        self.root = Path(root)
        self.version = check_choice("version", version, set(VERSIONS))
        self.task = check_choice("task", str(task), set(TASKS))
        if self.task == "35" and self.version == "v0.01":
            raise ValueError("task='35' needs version='v0.02'; v0.01 has 30 words: pass task='30' (or 'all')")
        if self.task == "30" and self.version == "v0.02":
            raise ValueError("task='30' is the v0.01 word list; v0.02 has 35 words: pass task='35' (or 'all')")
        if classes is not None:
            classes = tuple(classes)
            if len(classes) < 2 or len(set(classes)) != len(classes):
                raise ValueError(f"classes must name at least two distinct keywords, got {classes}")
        self._given_classes = classes
        self.unknown_fraction = check_fraction("unknown_fraction", unknown_fraction)
        self.silence_fraction = check_fraction("silence_fraction", silence_fraction)
        self.limit_per_split = None if limit_per_split is None else check_int("limit_per_split", limit_per_split, 1)
        self.download = bool(download)
        self.seed = int(seed)
        self.classes: Tuple[str, ...] = classes if classes is not None else self._task_classes()
        self.num_classes = len(self.classes)
        self.missing: Dict[str, int] = {}
        self.counts: Dict[str, int] = {}

    def _task_classes(self) -> Tuple[str, ...]:
        if self.task == "10":
            return KEYWORDS
        if self.task == "12":
            return KEYWORDS + (UNKNOWN, SILENCE)
        return WORDS_V002 if self.version == "v0.02" else WORDS_V001

    def folder(self) -> Path:
        """The release folder under :attr:`root` (the first of the accepted layouts that exists)."""
        name = f"speech_commands_{self.version}"
        candidates = [self.root / "SpeechCommands" / name, self.root / name, self.root]
        for c in candidates:
            if (c / "testing_list.txt").is_file() or (c / "validation_list.txt").is_file():
                return c
        other: Optional[str] = VERSIONS[1 - VERSIONS.index(self.version)]
        hint = ""
        if (self.root / "SpeechCommands" / f"speech_commands_{other}").is_dir() or (
                self.root / f"speech_commands_{other}").is_dir():
            hint = f"; {str(self.root)!r} holds speech_commands_{other}: pass version={other!r}"
        else:
            other = None
        raise ReleaseNotFound(
            f"no Speech Commands {self.version} release (a folder with testing_list.txt) at any of "
            f"{[str(c) for c in candidates]}{hint}; pass root=<the release folder, e.g. "
            f"{RELEASE_URL.format(version=self.version)} unpacked> or download=True (torchaudio fetches it; online only)",
            version=self.version, candidates=candidates, other_version=other)

    def prepare_data(self):
        if not self.download:
            return
        try:
            self.folder()
        except FileNotFoundError:
            from torchaudio.datasets import SPEECHCOMMANDS

            self.root.mkdir(parents=True, exist_ok=True)
            SPEECHCOMMANDS(str(self.root), url=f"speech_commands_{self.version}", download=True)

    def _split_files(self, folder: Path) -> Dict[str, List[str]]:
        """Relative paths ``word/file.wav`` per split: the lists' entries that exist, training the rest."""
        present = sorted(p.relative_to(folder).as_posix() for p in folder.glob("*/*.wav")
                         if p.parent.name != BACKGROUND)
        present_set = set(present)
        splits: Dict[str, List[str]] = {}
        listed = set()
        for split, name in (("validation", "validation_list.txt"), ("testing", "testing_list.txt")):
            entries = _read_list(folder / name)
            listed.update(entries)
            splits[split] = [e for e in entries if e in present_set]
            self.missing[split] = len(entries) - len(splits[split])
        splits["training"] = [p for p in present if p not in listed]
        if any(self.missing.values()):
            warnings.warn(f"Speech Commands {self.version} at {folder}: {self.missing['validation']} files of "
                          f"validation_list.txt and {self.missing['testing']} of testing_list.txt are absent "
                          "(a partial copy); the splits use the files present", stacklevel=3)
        return splits

    def _silence(self, folder: Path, split: str, count: int, generator: torch.Generator) -> List[Clip]:
        """``count`` one-``max_length`` pieces of the background-noise recordings (the noise files are
        split between train/validation/test by position in the file, so no piece is shared)."""
        import soundfile as sf

        files = sorted((folder / BACKGROUND).glob("*.wav"))
        if count == 0 or not files:
            if count and not files:
                warnings.warn(f"no {BACKGROUND}/ in {folder}: the {split} split has no {SILENCE} clips", stacklevel=3)
            return []
        label = self.classes.index(SILENCE)
        part = {"training": (0.0, 0.8), "validation": (0.8, 0.9), "testing": (0.9, 1.0)}[split]
        clips = []
        for k in range(count):
            f = files[int(torch.randint(len(files), (1,), generator=generator))]
            info = sf.info(str(f))
            n = int(info.frames * self.sample_rate / info.samplerate)
            lo, hi = int(part[0] * n), int(part[1] * n) - self.max_length
            offset = lo + int(torch.randint(max(hi - lo, 1), (1,), generator=generator))
            clips.append(Clip(f, label, offset))
        return clips

    def _clips(self, folder: Path, split: str, files: List[str], generator: torch.Generator) -> List[Clip]:
        index = {c: i for i, c in enumerate(self.classes)}
        keyword, unknown = [], []
        for rel in files:
            word = rel.split("/")[0]
            if word in index:
                keyword.append(Clip(folder / rel, index[word]))
            elif UNKNOWN in index:
                unknown.append(Clip(folder / rel, index[UNKNOWN]))
        if unknown:
            keep = torch.randperm(len(unknown), generator=generator)[:round(self.unknown_fraction * len(unknown))]
            unknown = [unknown[int(i)] for i in keep.sort().values]
        clips = keyword + unknown
        if SILENCE in index:
            clips += self._silence(folder, split, round(self.silence_fraction * len(keyword)), generator)
        if self.limit_per_split is not None and len(clips) > self.limit_per_split:
            keep = torch.randperm(len(clips), generator=generator)[:self.limit_per_split]
            clips = [clips[int(i)] for i in keep.sort().values]
        return clips

    def setup(self, stage: Optional[str] = None):
        if self.train_set is not None:
            return
        folder = self.folder()
        words = {p.name for p in folder.iterdir() if p.is_dir() and p.name != BACKGROUND}
        wanted = [c for c in self.classes if c not in (UNKNOWN, SILENCE)]
        if not set(wanted) & words:
            raise ValueError(f"none of the classes {wanted} has a folder in {folder} (found {sorted(words)})")
        splits = self._split_files(folder)
        generator = torch.Generator().manual_seed(self.seed)
        sets = {}
        for split in ("training", "validation", "testing"):
            clips = self._clips(folder, split, splits[split], generator)
            if not clips:
                raise ValueError(f"the {split} split of {folder} has no clips of the classes {self.classes}")
            sets[split] = WaveFileDataset(clips, self.sample_rate, self.max_length)
            self.counts[split] = len(clips)
        self.train_set, self.val_set, self.test_set = sets["training"], sets["validation"], sets["testing"]

