"""HR-Depth's decoder (Lyu et al., AAAI 2021): dense nested skip nodes X_ij fused by fSE.

Node X_ij sits at encoder scale i (X_i0 are the encoder features) after j fusion steps. Each
node below the top row is made from the upsampled node X_(i+1)(j-1) and all earlier nodes of
its own row; the nodes X_31, X_22, X_13 and X_04 fuse with fSE, the others with a 3x3 conv
(ResNet encoders add a 1x1 reduction before it when the node has more than one skip).

Module names and their registration order follow the authors' ``networks/HR_Depth_Decoder.py``
exactly: their checkpoints hold every weight twice, under ``convs.<name>`` and under
``decoder.<index>`` (a ModuleList over the same modules in registration order), so both the
names and the order are part of the checkpoint format.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hr_depth_ros.core.networks.layers import Conv1x1, Conv3x3, ConvBlock, fSEModule, upsample

# Nodes in evaluation order; the fSE ones; the plain ones.
NODE_ORDER = ('01', '11', '21', '31', '02', '12', '22', '03', '13', '04')
ATTENTION_NODES = ('31', '22', '13', '04')
PLAIN_NODES = ('01', '11', '21', '02', '12', '03')


class HRDepthDecoder(nn.Module):
    """HR-Depth decoder for a 5-level encoder (ResNet, or the MobileNetV3 encoder of Lite-HR-Depth).

    Returns ``{("disp", s): sigmoid disparity}`` for s = 0..3, scale 0 at input resolution.
    """

    def __init__(self, num_ch_enc: Sequence[int], scales: Sequence[int] = range(4),
                 num_output_channels: int = 1, mobile_encoder: bool = False) -> None:
        super().__init__()
        enc = [int(c) for c in num_ch_enc]
        self.num_ch_enc = enc
        self.scales = tuple(scales)
        self.mobile_encoder = mobile_encoder
        dec = [4, 12, 20, 40, 80] if mobile_encoder else [16, 32, 64, 128, 256]
        self.num_ch_dec = dec
        # Channels of every node. For ResNet-18/34 and the mobile encoder these are exactly the
        # authors' formulas; tracking them makes deeper encoders (ResNet-50) work too.
        channels = {f'{i}0': enc[i] for i in range(5)}
        for node in NODE_ORDER:
            row = int(node[0])
            if mobile_encoder:
                channels[node] = dec[row] * 2
            else:
                channels[node] = enc[row + 1] // 2 if node in ATTENTION_NODES else dec[row + 1]

        def conv0_out(i: int, j: int) -> int:
            return enc[0] // 4 if (i == 0 and j != 0) else enc[i] // 2

        def low_channels(row: int, col: int) -> int:
            return sum(channels[f'{row}{k}'] for k in range(col))

        # Registration order = the authors' order (it fixes the decoder.<index> keys).
        convs: dict[str, nn.Module] = {}
        for j in range(5):
            for i in range(5 - j):
                convs[f'X_{i}{j}_Conv_0'] = ConvBlock(channels[f'{i}{j}'], conv0_out(i, j))
                if i == 0 and j == 4:
                    convs['X_04_Conv_1'] = ConvBlock(conv0_out(0, 4), dec[0])
        for node in ATTENTION_NODES:
            row, col = int(node[0]), int(node[1])
            convs[f'X_{node}_attention'] = fSEModule(conv0_out(row + 1, col - 1), low_channels(row, col),
                                                     output_channel=channels[node])
        for node in PLAIN_NODES:
            row, col = int(node[0]), int(node[1])
            source = f'X_{row + 1}{col - 1}_Conv_1'
            fused_in = conv0_out(row + 1, col - 1) + low_channels(row, col)
            if mobile_encoder or col == 1:
                convs[source] = ConvBlock(fused_in, channels[node])
            else:
                convs[f'X_{node}_downsample'] = Conv1x1(fused_in, dec[row + 1] * 2)
                convs[source] = ConvBlock(dec[row + 1] * 2, channels[node])
        disp_in = (dec[0], channels['04'], channels['13'], channels['22'])
        for s in range(4):
            convs[f'dispConvScale{s}'] = Conv3x3(disp_in[s], num_output_channels)

        self.convs = nn.ModuleDict(convs)
        self.decoder = nn.ModuleList(list(self.convs.values()))
        self.sigmoid = nn.Sigmoid()

    def forward(self, input_features: Sequence[torch.Tensor]) -> dict[tuple[str, int], torch.Tensor]:
        convs = self.convs
        nodes = {f'{i}0': input_features[i] for i in range(5)}
        for node in NODE_ORDER:
            row, col = int(node[0]), int(node[1])
            source = f'{row + 1}{col - 1}'
            low = [nodes[f'{row}{k}'] for k in range(col)]
            high = convs[f'X_{source}_Conv_0'](nodes[source])
            if node in ATTENTION_NODES:
                nodes[node] = convs[f'X_{node}_attention'](high, low)
            else:
                fused = torch.cat([upsample(high), *low], 1)
                if col != 1 and not self.mobile_encoder:
                    fused = convs[f'X_{node}_downsample'](fused)
                nodes[node] = convs[f'X_{source}_Conv_1'](fused)
        top = convs['X_04_Conv_1'](upsample(convs['X_04_Conv_0'](nodes['04'])))
        sources = (top, nodes['04'], nodes['13'], nodes['22'])
        return {('disp', s): self.sigmoid(convs[f'dispConvScale{s}'](sources[s])) for s in self.scales}
