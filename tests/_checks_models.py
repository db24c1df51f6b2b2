"""Purpose-built models for the attack-failure check tests: each breaks attacks in one known way."""

from __future__ import annotations

import torch
from torch import nn


class Softmax(nn.Module):
    """Returns probabilities instead of logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).softmax(1)


class NoisyInput(nn.Module):
    """Adds Gaussian noise to the input at every call, also in eval mode (a randomised defence)."""

    def __init__(self, net: nn.Module, std: float = 0.05):
        super().__init__()
        self.net, self.std = net, std

    def forward(self, x):
        return self.net(x + self.std * torch.randn_like(x))


class EvalDropout(nn.Module):
    """Dropout left on at evaluation (``F.dropout(training=True)``)."""

    def __init__(self, net: nn.Module, p: float = 0.2):
        super().__init__()
        self.net, self.p = net, p

    def forward(self, x):
        return self.net(nn.functional.dropout(x, self.p, training=True))


class Quantised(nn.Module):
    """Rounds the input to ``levels`` levels (an input quantisation "defence": zero gradient almost everywhere)."""

    def __init__(self, net: nn.Module, levels: int = 15, low: float = 0.0, high: float = 1.0):
        super().__init__()
        self.net, self.levels, self.low, self.high = net, levels, low, high

    def forward(self, x):
        span = self.high - self.low
        return self.net(torch.round((x - self.low) / span * self.levels) / self.levels * span + self.low)


class Detached(nn.Module):
    """Cuts the gradient: the network sees ``x.detach()`` (the output still depends on the input)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.detach() + 0 * x)


class Binarised(nn.Module):
    """Thresholds the input with a step function (``sign``): zero gradient, very different finite differences."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net((torch.sign(x - 0.5) + 1) / 2)


class WithBatchNorm(nn.Module):
    """A model with BatchNorm (running statistics that must not change) in front of ``net``."""

    def __init__(self, net: nn.Module, channels: int = 1):
        super().__init__()
        self.bn, self.net = nn.BatchNorm2d(channels), net

    def forward(self, x):
        return self.net(self.bn(x))


class SqrtWeights(nn.Module):
    """A graph model ``forward(x, edge_index, edge_weight)`` fed ``sqrt(edge_weight)``: d sqrt(w) / dw is
    infinite at weight 0, so the relaxed-flip gradients of candidate (absent) edges are not finite."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, edge_index, edge_weight=None):
        return self.net(x, edge_index, None if edge_weight is None else edge_weight.sqrt())
