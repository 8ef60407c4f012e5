"""Building blocks of the depth decoders, named as in monodepth2 / HR-Depth so that the
authors' state-dict keys (``...conv.conv.weight``, ``...fc.0.weight``, ``...conv_se.weight``)
load unchanged."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def upsample(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour upsampling by 2 (monodepth2 ``upsample``)."""
    return F.interpolate(x, scale_factor=2.0, mode='nearest')


class Conv3x3(nn.Module):
    """Reflection-padded 3x3 convolution (zero padding with ``use_refl=False``)."""

    def __init__(self, in_channels: int, out_channels: int, use_refl: bool = True) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(1) if use_refl else nn.ZeroPad2d(1)
        self.conv = nn.Conv2d(int(in_channels), int(out_channels), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class ConvBlock(nn.Module):
    """Conv3x3 followed by ELU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = Conv3x3(in_channels, out_channels)
        self.nonlin = nn.ELU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlin(self.conv(x))


class Conv1x1(nn.Module):
    """Bias-free 1x1 convolution (HR-Depth's channel reduction before a nested node)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(int(in_channels), int(out_channels), 1, stride=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class fSEModule(nn.Module):  # noqa: N801 - the paper's and the authors' name
    """Feature-fusion Squeeze-and-Excitation (HR-Depth, Sec. 3.3).

    Upsamples the high-level feature, concatenates it with the same-scale low-level features,
    re-weights the channels with an SE branch (global pooling, FC r=16, ReLU, FC, sigmoid) and
    fuses them with a 1x1 convolution + ReLU.
    """

    reduction = 16

    def __init__(self, high_feature_channel: int, low_feature_channels: int,
                 output_channel: int | None = None) -> None:
        super().__init__()
        in_channel = int(high_feature_channel + low_feature_channels)
        out_channel = int(high_feature_channel if output_channel is None else output_channel)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(in_channel, in_channel // self.reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(in_channel // self.reduction, in_channel, bias=False),
        )
        self.sigmoid = nn.Sigmoid()
        self.conv_se = nn.Conv2d(in_channel, out_channel, kernel_size=1, stride=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, high_features: torch.Tensor, low_features: list[torch.Tensor]) -> torch.Tensor:
        features = torch.cat([upsample(high_features), *low_features], 1)
        weights = self.sigmoid(self.fc(self.avg_pool(features).flatten(1)))
        return self.relu(self.conv_se(features * weights[:, :, None, None]))
