"""Speech/audio modality: synthetic and real speech datamodules, reference models, random transforms.

The adapter lives in :mod:`mmrobust.adapters.audio` (``WaveformAdapter``), the budgets in
:mod:`mmrobust.threats.audio` (``SNRBall``, ``PeakDBBall``).
"""

from .augment import SpeechAugmentation
from .data import FSDDDataModule, SyntheticSpeechDataModule, WaveformDataset, augment_batch, load_wav, pad_or_crop
from .speech_commands import ReleaseNotFound, SpeechCommandsDataModule, WaveFileDataset
from .sequences import DigitSequenceDataset, FSDDSequenceDataModule
from .recogniser import CTCRecogniser, DigitCTC
from .models import M5, CepstralFeatures, KeywordCNN, LogMelCNN, spec_augment
from .synth import NUM_SYNTH_CLASSES, synth_digit, synth_digits
from ..attacks.eot import RandomTransforms  # composes these transforms for EOT and augmentation
from .transforms import AddNoise, RandomGain, RandomReverb, RandomSpeed, RandomTimeShift, speed_perturb, synthetic_rir

__all__ = [
    "FSDDDataModule", "SpeechCommandsDataModule", "SyntheticSpeechDataModule", "WaveformDataset", "WaveFileDataset",
    "augment_batch", "load_wav", "pad_or_crop", "M5", "LogMelCNN", "KeywordCNN", "CepstralFeatures", "spec_augment", "synth_digit", "synth_digits", "NUM_SYNTH_CLASSES",
    "AddNoise", "RandomGain", "RandomReverb", "RandomSpeed", "RandomTimeShift", "RandomTransforms", "speed_perturb",
    "synthetic_rir", "SpeechAugmentation", "DigitSequenceDataset", "FSDDSequenceDataModule", "DigitCTC", "CTCRecogniser",
]
