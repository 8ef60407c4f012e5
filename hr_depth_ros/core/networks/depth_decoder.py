"""Monodepth2's U-Net depth decoder (Godard et al. 2019): the baseline and a possible teacher.

Key-compatible with monodepth2's released ``depth.pth`` (``decoder.<index>...``). The copy in
the HR-Depth repository is broken (it reads an attribute it never sets), so this follows
nianticlabs/monodepth2.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hr_depth_ros.core.networks.layers import Conv3x3, ConvBlock, upsample


class DepthDecoder(nn.Module):
    """Returns ``{("disp", s): sigmoid disparity}`` for the requested scales."""

    def __init__(self, num_ch_enc: Sequence[int], scales: Sequence[int] = range(4),
                 num_output_channels: int = 1, use_skips: bool = True) -> None:
        super().__init__()
        enc = [int(c) for c in num_ch_enc]
        self.num_ch_enc = enc
        self.scales = tuple(scales)
        self.use_skips = use_skips
        dec = [16, 32, 64, 128, 256]
        self.num_ch_dec = dec
        modules: list[nn.Module] = []
        for i in range(4, -1, -1):
            modules.append(ConvBlock(enc[-1] if i == 4 else dec[i + 1], dec[i]))
            modules.append(ConvBlock(dec[i] + (enc[i - 1] if use_skips and i > 0 else 0), dec[i]))
        self.disp_index = {s: len(modules) + k for k, s in enumerate(self.scales)}
        modules += [Conv3x3(dec[s], num_output_channels) for s in self.scales]
        self.decoder = nn.ModuleList(modules)
        self.sigmoid = nn.Sigmoid()

    def forward(self, input_features: Sequence[torch.Tensor]) -> dict[tuple[str, int], torch.Tensor]:
        outputs = {}
        x = input_features[-1]
        for step, i in enumerate(range(4, -1, -1)):
            x = [upsample(self.decoder[2 * step](x))]
            if self.use_skips and i > 0:
                x.append(input_features[i - 1])
            x = self.decoder[2 * step + 1](torch.cat(x, 1))
            if i in self.scales:
                outputs[('disp', i)] = self.sigmoid(self.decoder[self.disp_index[i]](x))
        return outputs
