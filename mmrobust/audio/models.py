"""Reference speech classifiers that take raw waveforms, so attacks act in the waveform domain."""

from __future__ import annotations

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
