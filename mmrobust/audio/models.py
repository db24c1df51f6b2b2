"""Reference speech classifiers that take raw waveforms, so attacks act in the waveform domain."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..errors import check_int, check_positive


def _as_channels(wave: Tensor) -> Tensor:
    """``(B, T)`` -> ``(B, 1, T)``; ``(B, C, T)`` unchanged."""
    if wave.dim() == 2:
        return wave[:, None]
    if wave.dim() == 3:
        return wave
    raise ValueError(f"expected a waveform batch of shape (B, T) or (B, C, T), got {tuple(wave.shape)}")


class M5(nn.Module):
    """Raw-waveform CNN M5 (Dai et al. 2017, "Very Deep Convolutional Neural Networks for Raw
    Waveforms", https://arxiv.org/abs/1610.00087, Table 1, column M5).

    .. math:: f(x) = W\\,\\mathrm{GAP}\\big(\\mathrm{pool}_4\\circ\\mathrm{conv}_{3}^{(4)}\\circ\\dots\\circ
       \\mathrm{pool}_4\\circ\\mathrm{conv}_{80/4}^{(1)}(x)\\big)

    A first 80-sample receptive field with stride 4, then three 3-tap convolutions, each followed by
    batch norm, ReLU and 4x max pooling, global average pooling and a linear classifier. The paper uses
    128-128-256-512 channels (``width=128``); smaller ``width`` scales all layers (``width=32`` is the
    compact variant of torchaudio's speech-commands tutorial and enough for spoken digits).

    Args:
        num_classes: number of output classes.
        in_channels: audio channels.
        width: channels of the first layer; later layers use ``width, 2*width, 4*width`` (paper: 128).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 128):
        super().__init__()
        check_int("num_classes", num_classes, 2)
        check_int("in_channels", in_channels, 1)
        check_int("width", width, 1)
        chans = [width, width, 2 * width, 4 * width]
        layers, c_in = [], in_channels
        for i, c in enumerate(chans):
            k, s = (80, 4) if i == 0 else (3, 1)
            layers += [nn.Conv1d(c_in, c, k, stride=s, padding=k // 2 if i else 38), nn.BatchNorm1d(c),
                       nn.ReLU(inplace=False), nn.MaxPool1d(4, ceil_mode=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, wave: Tensor) -> Tensor:
        h = self.features(_as_channels(wave))
        return self.classifier(h.mean(-1))


class LogMelCNN(nn.Module):
    """Log-mel spectrogram front end (torchaudio ``MelSpectrogram``) and a small 2-D CNN.

    .. math:: f(x) = \\mathrm{CNN}\\big(\\log(\\mathrm{Mel}(|\\mathrm{STFT}(x)|^2) + \\epsilon)\\big)

    The front end is part of the model, so attacks perturb waveforms and differentiate through the
    STFT and mel filterbank (the usual set-up for attacks on speech classifiers, e.g. Alzantot et al.
    2018, https://arxiv.org/abs/1801.00554). Channels are averaged to mono.

    Args:
        num_classes: output classes. sample_rate, n_fft, hop_length, n_mels: the front end.
        width: channels of the first conv block (doubled in the second and third).
    """

    def __init__(self, num_classes: int = 10, sample_rate: int = 8000, n_fft: int = 256, hop_length: int = 128,
                 n_mels: int = 40, width: int = 16, log_offset: float = 1e-6):
        super().__init__()
        import torchaudio

        check_int("num_classes", num_classes, 2)
        check_int("width", width, 1)
        self.log_offset = check_positive("log_offset", log_offset)
        self.melspec = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft,
                                                            hop_length=hop_length, n_mels=n_mels)
        blocks, c_in = [], 1
        for c in (width, 2 * width, 4 * width):
            blocks += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            c_in = c
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, wave: Tensor) -> Tensor:
        mono = _as_channels(wave).mean(1)
        spec = torch.log(self.melspec(mono) + self.log_offset)[:, None]
        h = self.features(spec)
        return self.classifier(h.mean((-2, -1)))


class CepstralFeatures(nn.Module):
    """Speaker- and channel-normalised features of a waveform: log-mel energies in dB relative to the
    utterance's loudest bin (floored at ``-top_db``), optionally their DCT (MFCCs, Davis & Mermelstein
    1980), then per-utterance cepstral mean and variance normalisation (CMVN; Viikki & Laurila 1998) over
    the *active* frames (those within ``active_db`` of the loudest), with inactive frames set to 0.

    Relative dB makes the features independent of gain, CMVN removes a fixed channel (microphone)
    response and most of a speaker's average spectral tilt, and zeroing silent frames makes padding and
    leading silence invisible. All of it is differentiable almost everywhere, so attacks see the true
    gradient (the normalisation statistics included).

    Frames default to the usual 25 ms window and 10 ms hop at any ``sample_rate`` (200 / 80 samples at
    8 kHz, 400 / 160 at 16 kHz) and ``n_fft`` to the next power of two of the window.

    Output: ``(B, n_mfcc or n_mels, frames)``.
    """

    def __init__(self, sample_rate: int = 8000, n_fft: Optional[int] = None, win_length: Optional[int] = None,
                 hop_length: Optional[int] = None, n_mels: int = 40, n_mfcc: Optional[int] = 20,
                 top_db: float = 80.0, active_db: float = 50.0):
        super().__init__()
        import torchaudio
        import torchaudio.functional as AF

        check_int("sample_rate", sample_rate, 1)
        win_length = check_int("win_length", win_length, 1) if win_length is not None else round(0.025 * sample_rate)
        hop_length = check_int("hop_length", hop_length, 1) if hop_length is not None else round(0.010 * sample_rate)
        n_fft = check_int("n_fft", n_fft, win_length) if n_fft is not None else 1 << (win_length - 1).bit_length()
        self.melspec = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft,
                                                            win_length=win_length, hop_length=hop_length,
                                                            n_mels=n_mels, f_min=20.0, f_max=sample_rate / 2)
        self.top_db = check_positive("top_db", top_db)
        self.active_db = check_positive("active_db", active_db)
        self.n_mfcc = None if n_mfcc is None else check_int("n_mfcc", n_mfcc, 1)
        if self.n_mfcc is not None:
            if self.n_mfcc > n_mels:
                raise ValueError(f"n_mfcc must be <= n_mels={n_mels}, got {n_mfcc}")
            self.register_buffer("dct", AF.create_dct(self.n_mfcc, n_mels, "ortho"), persistent=False)
        self.out_channels = self.n_mfcc or n_mels

    def forward(self, wave: Tensor) -> Tensor:
        mono = _as_channels(wave).mean(1)
        db = 10 * torch.log10(self.melspec(mono) + 1e-10)
        db = db - db.amax((-2, -1), keepdim=True)
        db = torch.maximum(db, torch.full((), -self.top_db, dtype=db.dtype, device=db.device))
        active = (db.amax(-2, keepdim=True) > -self.active_db).to(db.dtype)
        if self.n_mfcc is not None:
            db = (db.transpose(-1, -2) @ self.dct).transpose(-1, -2)
        count = active.sum(-1, keepdim=True).clamp_min(1)
        mean = (db * active).sum(-1, keepdim=True) / count
        std = (((db - mean) ** 2 * active).sum(-1, keepdim=True) / count).sqrt()
        return (db - mean) / (std + 1.0) * active


def spec_augment(z: Tensor, freq_width: int, time_width: int, masks: int = 2) -> Tensor:
    """SpecAugment frequency and time masking (Park et al. 2019, https://arxiv.org/abs/1904.08779, Sec. 2):
    ``masks`` bands of up to ``freq_width`` channels and ``masks`` spans of up to ``time_width`` frames are
    set to 0 (the normalised mean), independently per example, on ``(B, F, T)`` features."""
    n, f, t = z.shape
    dev = z.device
    for _ in range(masks):
        for width, size, dim in ((freq_width, f, 1), (time_width, t, 2)):
            w = (torch.rand(n, device=dev) * (width + 1)).long().clamp(max=size)
            start = (torch.rand(n, device=dev) * (size - w + 1)).long()
            r = torch.arange(size, device=dev)[None]
            m = (r >= start[:, None]) & (r < (start + w)[:, None])
            z = z.masked_fill(m[:, :, None] if dim == 1 else m[:, None, :], 0.0)
    return z


class KeywordCNN(nn.Module):
    """Spoken-word classifier that generalises across speakers: :class:`CepstralFeatures` (MFCC + CMVN),
    three 1-D convolutions over time (kernel 5, batch norm, ReLU, 2x max pooling; channels
    ``width, 2*width, 2*width``, the temporal-convolution design of Choi et al. 2019, "Temporal Convolution
    for Real-time Keyword Spotting", https://arxiv.org/abs/1904.03814), max over time, dropout and a linear
    layer. In training mode SpecAugment masks (:func:`spec_augment`) are applied to the features; attacks
    run the model in eval mode and see none.

    With ``deltas`` (default) the first and second time derivatives of the normalised features are
    appended (``torchaudio.functional.compute_deltas``, a 5-frame regression; Furui 1986, "Speaker-independent
    isolated word recognition using dynamic features of speech spectrum"): they describe how the spectrum
    moves rather than where a speaker's formants sit. On FSDD with george held out (20 epochs, one seed)
    they raised clean accuracy from 0.748 to 0.822.

    On FSDD with every speaker held out in turn it is the reference of ``benchmarks/audio_fsdd_speakers.py``.
    """

    def __init__(self, num_classes: int = 10, sample_rate: int = 8000, n_mfcc: Optional[int] = 20,
                 n_mels: int = 40, width: int = 32, dropout: float = 0.3, freq_mask: int = 7,
                 time_mask: int = 11, deltas: bool = True):
        super().__init__()
        check_int("num_classes", num_classes, 2)
        check_int("width", width, 1)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.features = CepstralFeatures(sample_rate=sample_rate, n_mels=n_mels, n_mfcc=n_mfcc)
        self.freq_mask, self.time_mask = check_int("freq_mask", freq_mask, 0), check_int("time_mask", time_mask, 0)
        self.deltas = bool(deltas)
        layers, c_in = [], self.features.out_channels * (3 if self.deltas else 1)
        for c in (width, 2 * width, 2 * width):
            layers += [nn.Conv1d(c_in, c, 5, padding=2), nn.BatchNorm1d(c), nn.ReLU(), nn.MaxPool1d(2, ceil_mode=True)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, wave: Tensor) -> Tensor:
        z = self.features(wave)
        if self.deltas:
            import torchaudio.functional as AF

            d1 = AF.compute_deltas(z)
            z = torch.cat([z, d1, AF.compute_deltas(d1)], 1)
        if self.training and (self.freq_mask or self.time_mask):
            z = spec_augment(z, self.freq_mask, self.time_mask)
        return self.classifier(self.dropout(self.body(z).amax(-1)))
