"""Reference image classifiers."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import check_fraction, check_int


class SmallCNN(nn.Module):
    """The small MNIST CNN used throughout the adversarial-training literature.

    Two 5x5 conv layers (32 and 64 channels) with max pooling and a 1024-unit hidden layer, as in
    Madry et al. 2018 (https://arxiv.org/abs/1706.06083); ``width`` scales the channels so tests can
    use a tiny version. Works for any square input size (``image_size``).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, width: float = 1.0,
                 hidden: int = 1024):
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("num_classes", num_classes, 2)
        check_int("image_size", image_size, 4)
        c1, c2 = max(1, int(32 * width)), max(1, int(64 * width))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * side * side, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class StridedCNN(nn.Module):
    """The fast small MNIST CNN of the certified- and fast-adversarial-training papers.

    Two 4x4 convolutions with stride 2 (16 and 32 channels) and a 100-unit hidden layer: the "small"
    model of Wong & Kolter 2018 (https://arxiv.org/abs/1711.00851) that Wong et al. 2020
    (https://arxiv.org/abs/2001.03994) train with FGSM and PGD at L-inf 0.3 on MNIST. About 20x cheaper
    per step than :class:`SmallCNN`, so full-MNIST adversarial training fits on a CPU. ``image_size``
    must be a multiple of 4.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, width: float = 1.0,
                 hidden: int = 100):
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("num_classes", num_classes, 2)
        check_int("image_size", image_size, 4)
        check_int("hidden", hidden, 1)
        if image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 (two stride-2 convolutions), got {image_size}")
        c1, c2 = max(1, int(16 * width)), max(1, int(32 * width))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.ReLU(),
        )
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * side * side, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def _channel_stats(name: str, values, channels: int) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(channels).clone()
    if t.numel() != channels:
        raise ValueError(f"{name} must have one value per input channel ({channels}), got {t.numel()}")
    return t.reshape(1, channels, 1, 1)


class InputNormalization(nn.Module):
    """Per-channel ``(x - mean) / std`` inside the model, so data and attack budgets stay in [0, 1].

    Robustness benchmarks (e.g. RobustBench, Croce et al. 2021, https://arxiv.org/abs/2010.09670) keep
    normalisation in the model: the threat model's value box and ``eps`` then refer to pixel values.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int):
        super().__init__()
        mean_t, std_t = _channel_stats("mean", mean, channels), _channel_stats("std", std, channels)
        if not bool(torch.isfinite(mean_t).all()) or not bool((std_t > 0).all()) or not bool(torch.isfinite(std_t).all()):
            raise ValueError(f"std must be finite and > 0 and mean finite, got mean={list(mean_t.flatten().tolist())}, "
                             f"std={list(std_t.flatten().tolist())}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _normalization(mean, std, channels: int) -> nn.Module:
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std for input normalisation, or neither")
    return nn.Identity() if mean is None else InputNormalization(mean, std, channels)


class WideBasicBlock(nn.Module):
    """Wide residual block (Zagoruyko & Komodakis 2016, https://arxiv.org/abs/1605.07146, Fig. 1d, "B(3,3)"):
    BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3 with an identity or 1x1 projection shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        # as in the reference implementation, a projection shortcut sees the pre-activated input
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + shortcut


class PreActBlock(WideBasicBlock):
    """Pre-activation residual block (He et al. 2016, https://arxiv.org/abs/1603.05027, Fig. 1b):
    :math:`x_{l+1} = x_l + F(\\mathrm{ReLU}(\\mathrm{BN}(x_l)))`, with a 1x1 projection shortcut
    (applied to the pre-activated input) when the shape changes -- the wide block without dropout."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__(in_planes, planes, stride, dropout=0.0)


class PreActResNet18(nn.Module):
    """PreAct ResNet-18 (He et al. 2016, https://arxiv.org/abs/1603.05027), the CIFAR-10 architecture of
    Rice, Wong & Kolter 2020 ("Overfitting in adversarially robust deep learning",
    https://arxiv.org/abs/2002.11569) and Wong et al. 2020.

    A 3x3 stem with 64 channels, four stages of two :class:`PreActBlock` s (64, 128, 256, 512 channels,
    stride 1, 2, 2, 2), a final BN-ReLU, global average pooling and a linear classifier:
    :math:`f(x) = W\\,\\mathrm{GAP}(\\mathrm{ReLU}(\\mathrm{BN}(h(x))))`. Global pooling (instead of the fixed
    4x4 pool) makes it work for any input size >= 8; on 32x32 inputs the two are identical.

    Args:
        in_channels, num_classes: input channels and classes.
        mean, std: optional per-channel input normalisation inside the model (inputs stay in [0, 1]).
        width: channels of the first stage (64 in the paper); smaller values give tiny test models.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, *, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, width: int = 64):
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("num_classes", num_classes, 2)
        check_int("width", width, 1)
        self.normalize = _normalization(mean, std, in_channels)
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        layers, planes = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            out = width * 2 ** i
            layers += [PreActBlock(planes, out, stride), PreActBlock(out, out, 1)]
            planes = out
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(self.conv1(self.normalize(x)))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.linear(out)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` (Zagoruyko & Komodakis 2016, https://arxiv.org/abs/1605.07146, Table 1),
    the WRN-28-10 / WRN-34-10 of the adversarial-training literature (Madry et al. 2018; Zhang et al.
    2019; Rice et al. 2020).

    A 3x3 stem with 16 channels, three groups of :math:`n = (\\mathrm{depth}-4)/6` wide blocks with
    :math:`16k, 32k, 64k` channels (:math:`k` = ``widen_factor``; strides 1, 2, 2), BN-ReLU, global average
    pooling and a linear classifier.

    Args:
        depth: total depth, ``depth - 4`` divisible by 6 (10, 16, 22, 28, 34, 40, ...).
        widen_factor: channel multiplier ``k`` >= 1.
        dropout: dropout between the convolutions of each block (0.3 in the paper's CIFAR runs; 0 is
            standard for adversarial training).
        in_channels, num_classes, mean, std: as for :class:`PreActResNet18`.
    """

    def __init__(self, depth: int = 28, widen_factor: int = 10, *, dropout: float = 0.0, in_channels: int = 3,
                 num_classes: int = 10, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None):
        super().__init__()
        check_int("depth", depth, 10)
        if (depth - 4) % 6 != 0:
            raise ValueError(f"depth must satisfy (depth - 4) % 6 == 0 (e.g. 10, 16, 22, 28, 34, 40), got {depth}")
        check_int("widen_factor", widen_factor, 1)
        check_fraction("dropout", dropout, open_high=True)
        check_int("in_channels", in_channels, 1)
        check_int("num_classes", num_classes, 2)
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.normalize = _normalization(mean, std, in_channels)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        blocks, planes = [], widths[0]
        for group, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                blocks.append(WideBasicBlock(planes, group, stride if i == 0 else 1, dropout))
                planes = group
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(self.conv1(self.normalize(x)))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.linear(out)
