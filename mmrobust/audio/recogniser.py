"""A small CTC recogniser of spoken digit sequences, and the LightningModule that trains it.

:class:`DigitCTC` maps waveforms to per-frame CTC log-probabilities over the ten digits and a blank
(class ``d`` is digit ``d``, :data:`BLANK` = 10), so :class:`~mmrobust.attacks.ctc.CTCTargetedAttack`
attacks it in the waveform domain (``blank=BLANK``). :class:`CTCRecogniser` trains it with the CTC loss
(Graves et al. 2006, "Connectionist Temporal Classification", ICML, Eq. 14) on
:class:`~mmrobust.audio.sequences.FSDDSequenceDataModule` batches and reports character and word error
rates of the greedy transcripts with torchmetrics (``CharErrorRate``, ``WordErrorRate``; words are the
spoken digits, so WER is the digit error rate) and the share of utterances not transcribed exactly.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks.ctc import greedy_decode
from ..errors import check_finite_nonneg, check_int, check_positive
from .models import CepstralFeatures, _as_channels, spec_augment
from .sequences import target_lists, transcript

#: the CTC blank of :class:`DigitCTC` (classes 0-9 are the digits)
BLANK = 10


class DigitCTC(nn.Module):
    """Log-mel front end, two 1-D convolutions and a bidirectional GRU emitting CTC log-probabilities.

    .. math:: \\log p(\\cdot \\mid x)_t = \\log\\mathrm{softmax}\\big(W\\,\\mathrm{BiGRU}(\\mathrm{conv}(
       \\mathrm{CMVN}(\\log\\mathrm{Mel}(x))))_t\\big)

    The front end is :class:`~mmrobust.audio.models.CepstralFeatures` with ``n_mfcc=None``: 40 log-mel
    bands (torchaudio ``MelSpectrogram``, 25 ms windows every 10 ms at 8 kHz) in dB relative to the
    utterance's loudest bin, mean- and variance-normalised over the active frames, silent frames zeroed
    (padding is invisible). The second convolution has stride 2 (50 output frames per second, more than
    enough for digits of ~0.4 s). In training mode SpecAugment masks the features.

    ``forward(wave)`` takes ``(B, T)`` (or ``(B, C, T)``) waveforms and returns ``(B, frames, 11)``
    log-probabilities; :meth:`frame_lengths` maps valid sample counts to valid output frames.
    """

    def __init__(self, sample_rate: int = 8000, n_mels: int = 40, width: int = 64, hidden: int = 64,
                 dropout: float = 0.2, freq_mask: int = 6, time_mask: int = 8):
        super().__init__()
        check_int("width", width, 1)
        check_int("hidden", hidden, 1)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.hop = int(sample_rate) // 100
        self.features = CepstralFeatures(sample_rate=sample_rate, n_fft=256, win_length=2 * self.hop + self.hop // 2,
                                         hop_length=self.hop, n_mels=n_mels, n_mfcc=None)
        self.freq_mask, self.time_mask = check_int("freq_mask", freq_mask, 0), check_int("time_mask", time_mask, 0)
        self.conv = nn.Sequential(
            nn.Conv1d(n_mels, width, 5, padding=2), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Conv1d(width, width, 5, stride=2, padding=2), nn.BatchNorm1d(width), nn.ReLU())
        self.rnn = nn.GRU(width, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(2 * hidden, BLANK + 1)

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """Valid output frames of utterances with ``lengths`` valid samples."""
        mel = 1 + torch.div(lengths, self.hop, rounding_mode="floor")  # centred STFT frames
        return torch.div(mel - 1, 2, rounding_mode="floor") + 1

    def forward(self, wave: Tensor) -> Tensor:
        z = self.features(_as_channels(wave).mean(1, keepdim=True))
        if self.training and (self.freq_mask or self.time_mask):
            z = spec_augment(z, self.freq_mask, self.time_mask)
        h = self.conv(z).transpose(1, 2)
        h = self.dropout(self.rnn(h)[0])
        return self.out(h).log_softmax(-1)


def error_rates(decoded: Sequence[Sequence[int]], references: Sequence[Sequence[int]]) -> Dict[str, float]:
    """Character and word error rate (torchmetrics) of digit transcripts against the references, on the
    spoken words (:func:`~mmrobust.audio.sequences.transcript`), and the share of utterances not exact."""
    from torchmetrics.text import CharErrorRate, WordErrorRate

    hyp = [transcript(d) for d in decoded]
    ref = [transcript(r) for r in references]
    return {"cer": float(CharErrorRate()(hyp, ref)), "wer": float(WordErrorRate()(hyp, ref)),
            "ser": sum(list(d) != list(r) for d, r in zip(decoded, references)) / max(1, len(ref))}


class CTCRecogniser(pl.LightningModule):
    """Trains a CTC model (default :class:`DigitCTC`) on ``(wave, targets, lengths, target_lengths)`` batches.

    Loss: ``torch.nn.functional.ctc_loss`` (mean over the batch of the per-utterance loss divided by the
    target length, ``zero_infinity``) with the model's ``frame_lengths``. Optimiser: AdamW with a one-cycle
    schedule over all training steps. Validation and test log ``{stage}/cer``, ``{stage}/wer`` (torchmetrics,
    accumulated over the epoch) and ``{stage}/loss`` of greedy transcripts.
    """

    def __init__(self, model: Optional[nn.Module] = None, *, lr: float = 3e-3, weight_decay: float = 1e-2,
                 blank: int = BLANK):
        super().__init__()
        from torchmetrics.text import CharErrorRate, WordErrorRate

        self.model = model if model is not None else DigitCTC()
        if not hasattr(self.model, "frame_lengths"):
            raise TypeError("model must have frame_lengths(lengths) -> valid output frames (as DigitCTC has)")
        self.lr = check_positive("lr", lr)
        self.weight_decay = check_finite_nonneg("weight_decay", weight_decay)
        self.blank = check_int("blank", blank, 0)
        self.metrics = nn.ModuleDict({f"{s}_{m}": cls() for s in ("val", "test")
                                      for m, cls in (("cer", CharErrorRate), ("wer", WordErrorRate))})

    def forward(self, wave: Tensor) -> Tensor:
        return self.model(wave)

    def loss(self, batch) -> Tensor:
        wave, targets, lengths, target_lengths = batch
        lp = self.model(wave)
        frames = self.model.frame_lengths(lengths).clamp(max=lp.shape[1])
        flat = targets[targets >= 0]
        return F.ctc_loss(lp.transpose(0, 1), flat, frames, target_lengths, blank=self.blank, zero_infinity=True)

    def decode(self, wave: Tensor, lengths: Tensor) -> List[List[int]]:
        """Greedy (best-path) transcripts of a batch, each cut to its valid frames."""
        lp = self.model(wave)
        return greedy_decode(lp, self.blank, self.model.frame_lengths(lengths).clamp(max=lp.shape[1]))

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch[0]))
        return loss

    def _evaluate(self, batch, stage: str) -> Tensor:
        wave, targets, lengths, target_lengths = batch
        loss = self.loss(batch)
        hyp = [transcript(d) for d in self.decode(wave, lengths)]
        ref = [transcript(r) for r in target_lists(targets, target_lengths)]
        n = len(ref)
        self.log(f"{stage}/loss", loss, batch_size=n)
        for m in ("cer", "wer"):
            metric = self.metrics[f"{stage}_{m}"]
            metric(hyp, ref)
            self.log(f"{stage}/{m}", metric, prog_bar=m == "wer", batch_size=n)
        return loss

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> Tensor:
        return self._evaluate(batch, "test")

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), self.lr, weight_decay=self.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, self.lr, total_steps=max(1, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
