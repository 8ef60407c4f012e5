"""Monodepth2's pose decoder: relative camera motion as axis-angle + translation."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PoseDecoder(nn.Module):
    """Key-compatible with monodepth2's ``pose.pth`` (``net.<index>...``).

    ``forward([features])`` takes a list with one encoder output per input feature set (the
    "separate_resnet" pose net gives one, for two stacked frames) and returns
    ``(axisangle, translation)``, each ``B x num_frames_to_predict_for x 1 x 3``, scaled by 0.01
    as in monodepth2 so the initial motion is small.
    """

    def __init__(self, num_ch_enc: Sequence[int], num_input_features: int = 1,
                 num_frames_to_predict_for: int | None = None, stride: int = 1) -> None:
        super().__init__()
        self.num_ch_enc = [int(c) for c in num_ch_enc]
        self.num_input_features = num_input_features
        self.num_frames_to_predict_for = (num_input_features - 1 if num_frames_to_predict_for is None
                                          else num_frames_to_predict_for)
        self.net = nn.ModuleList([
            nn.Conv2d(self.num_ch_enc[-1], 256, 1),                       # squeeze
            nn.Conv2d(num_input_features * 256, 256, 3, stride, 1),       # pose 0
            nn.Conv2d(256, 256, 3, stride, 1),                            # pose 1
            nn.Conv2d(256, 6 * self.num_frames_to_predict_for, 1),        # pose 2
        ])
        self.relu = nn.ReLU()

    def forward(self, input_features: Sequence[Sequence[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        squeeze, pose0, pose1, pose2 = self.net
        out = torch.cat([self.relu(squeeze(features[-1])) for features in input_features], 1)
        out = pose2(self.relu(pose1(self.relu(pose0(out)))))
        out = 0.01 * out.mean(3).mean(2).view(-1, self.num_frames_to_predict_for, 1, 6)
        return out[..., :3], out[..., 3:]
