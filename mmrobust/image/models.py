"""Reference image classifiers."""

from __future__ import annotations

from torch import nn

from ..errors import check_int


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
