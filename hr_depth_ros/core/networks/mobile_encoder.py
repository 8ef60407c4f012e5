"""Lite-HR-Depth's encoder: MobileNetV3-Large in the layout of the authors'
``networks/mobilenetV3_encoder.py`` (Howard et al. 2019).

torchvision's ``mobilenet_v3_large`` cannot stand in for it: it places the SE block after
the activation in every block and names its weights differently, so the authors'
Lite-HR-Depth checkpoint (keys ``encoder.features.N...``) would not load. Features are taken
at strides 2/4/8/16/32 with 16/24/40/80/160 channels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from hr_depth_ros.core.networks._weights import load_local_state_dict

# MobileNetV3-Large blocks: kernel, expansion, output channels, SE, hard-swish, stride.
BLOCKS = (
    (3, 1, 16, False, False, 1),
    (3, 4, 24, False, False, 2),
    (3, 3, 24, False, False, 1),
    (5, 3, 40, True, False, 2),
    (5, 3, 40, True, False, 1),
    (5, 3, 40, True, False, 1),
    (3, 6, 80, False, True, 2),
    (3, 2.5, 80, False, True, 1),
    (3, 2.3, 80, False, True, 1),
    (3, 2.3, 80, False, True, 1),
    (3, 6, 112, True, True, 1),
    (3, 6, 112, True, True, 1),
    (5, 6, 160, True, True, 2),
    (5, 6, 160, True, True, 1),
    (5, 6, 160, True, True, 1),
)
# Slices of ``features`` giving the five taps (strides 2, 4, 8, 16, 32).
TAPS = (slice(0, 1), slice(1, 3), slice(3, 5), slice(5, 8), slice(8, None))


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor``, never more than 10 % down (TF MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class HardSigmoid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + 3.0) / 6.0


class HardSwish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sigmoid = HardSigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(x)


class SqueezeExcite(nn.Module):
    """SE block with a hard-sigmoid gate and a 1/4 bottleneck rounded to 8 channels."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = make_divisible(channels // reduction, 8)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                nn.Linear(hidden, channels), HardSigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(self.avg_pool(x).flatten(1))[:, :, None, None]


def _activation(hard_swish: bool) -> nn.Module:
    return HardSwish() if hard_swish else nn.ReLU(inplace=True)


class InvertedResidual(nn.Module):
    """MobileNetV3 block; SE sits before the activation after the depthwise conv (authors' order)."""

    def __init__(self, inp: int, hidden: int, oup: int, kernel: int, stride: int, use_se: bool,
                 use_hs: bool) -> None:
        super().__init__()
        self.identity = stride == 1 and inp == oup
        depthwise = [nn.Conv2d(hidden, hidden, kernel, stride, (kernel - 1) // 2, groups=hidden, bias=False),
                     nn.BatchNorm2d(hidden)]
        se = SqueezeExcite(hidden) if use_se else nn.Identity()
        project = [nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        if inp == hidden:
            layers = [*depthwise, _activation(use_hs), se, *project]
        else:
            expand = [nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), _activation(use_hs)]
            layers = [*expand, *depthwise, se, _activation(use_hs), *project]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.identity else self.conv(x)


class MobileNetV3Features(nn.Module):
    """The ``features`` stack of MobileNetV3-Large (no classifier)."""

    def __init__(self) -> None:
        super().__init__()
        channels = make_divisible(16, 8)
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, channels, 3, 2, 1, bias=False),
                                                 nn.BatchNorm2d(channels), HardSwish())]
        for kernel, expansion, out, use_se, use_hs, stride in BLOCKS:
            out = make_divisible(out, 8)
            layers.append(InvertedResidual(channels, make_divisible(channels * expansion, 8), out, kernel,
                                           stride, use_se, use_hs))
            channels = out
        self.features = nn.Sequential(*layers)


class MobileEncoder(nn.Module):
    """MobileNetV3-Large encoder returning five feature maps; input RGB in [0, 1].

    ``weights_path``: a local MobileNetV3-Large ImageNet state dict in this layout (the one
    the authors used, ``mobilenetv3-large-1cd25616.pth``); keys that match are loaded.
    """

    def __init__(self, weights_path: str | Path | None = None) -> None:
        super().__init__()
        self.num_ch_enc = np.array([16, 24, 40, 80, 160])
        self.encoder = MobileNetV3Features()
        if weights_path is not None:
            state = load_local_state_dict(weights_path, 'MobileEncoder')
            own = self.encoder.state_dict()
            matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
            if not matched:
                raise ValueError(f'MobileEncoder: no key of {weights_path} matches the MobileNetV3 layout')
            self.encoder.load_state_dict(matched, strict=False)

    def forward(self, input_image: torch.Tensor) -> list[torch.Tensor]:
        x = (input_image - 0.45) / 0.225
        features = []
        for tap in TAPS:
            x = self.encoder.features[tap](x)
            features.append(x)
        return features
