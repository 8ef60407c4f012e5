"""ResNet encoders over torchvision (monodepth2 layout: keys ``encoder.conv1...``, ``encoder.fc``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision import models

from hr_depth_ros.core.networks._weights import load_local_state_dict

RESNETS = {18: models.resnet18, 34: models.resnet34, 50: models.resnet50, 101: models.resnet101}


class ResnetEncoder(nn.Module):
    """ResNet feature encoder returning five maps (strides 2, 4, 8, 16, 32); input RGB in [0, 1].

    ``num_input_images`` > 1 widens the first convolution to take frames stacked on channels
    (the pose network takes 2). ``weights_path``: a local torchvision ImageNet state dict; for
    several input images its conv1 weights are repeated and divided by their number, as in
    monodepth2. Nothing is ever downloaded.
    """

    def __init__(self, num_layers: int = 18, num_input_images: int = 1,
                 weights_path: str | Path | None = None) -> None:
        super().__init__()
        if num_layers not in RESNETS:
            raise ValueError(f'ResNet-{num_layers} is not supported; choose one of {sorted(RESNETS)}')
        self.num_ch_enc = np.array([64, 64, 128, 256, 512])
        if num_layers > 34:
            self.num_ch_enc[1:] *= 4
        self.encoder = RESNETS[num_layers](weights=None)
        if num_input_images > 1:
            self.encoder.conv1 = nn.Conv2d(num_input_images * 3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.encoder.conv1.weight, mode='fan_out', nonlinearity='relu')
        if weights_path is not None:
            state = dict(load_local_state_dict(weights_path, f'ResnetEncoder({num_layers})'))
            if num_input_images > 1 and 'conv1.weight' in state:
                state['conv1.weight'] = torch.cat([state['conv1.weight']] * num_input_images, 1) / num_input_images
            try:
                self.encoder.load_state_dict(state)
            except RuntimeError as error:
                raise ValueError(f'ResnetEncoder: {weights_path} is not a ResNet-{num_layers} state dict: '
                                 f'{error}') from error

    def forward(self, input_image: torch.Tensor) -> list[torch.Tensor]:
        net = self.encoder
        x = net.relu(net.bn1(net.conv1((input_image - 0.45) / 0.225)))
        features = [x]
        x = net.layer1(net.maxpool(x))
        features.append(x)
        for layer in (net.layer2, net.layer3, net.layer4):
            x = layer(x)
            features.append(x)
        return features
