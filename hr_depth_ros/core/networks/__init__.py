"""Depth and pose networks (ROS-free): HR-Depth, Lite-HR-Depth, Monodepth2 and the pose net."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from hr_depth_ros.core.networks.depth_decoder import DepthDecoder
from hr_depth_ros.core.networks.hr_depth_decoder import HRDepthDecoder
from hr_depth_ros.core.networks.mobile_encoder import MobileEncoder
from hr_depth_ros.core.networks.pose_decoder import PoseDecoder
from hr_depth_ros.core.networks.resnet_encoder import ResnetEncoder

# Architecture name -> (encoder kind, ResNet depth or None, decoder kind).
ARCHITECTURE_SPECS = {
    'hr_depth': ('resnet', 18, 'hr_depth'),
    'hr_depth_resnet50': ('resnet', 50, 'hr_depth'),
    'lite_hr_depth': ('mobile', None, 'hr_depth'),
    'monodepth2': ('resnet', 18, 'monodepth2'),
    'monodepth2_resnet50': ('resnet', 50, 'monodepth2'),
}
ARCHITECTURES = tuple(ARCHITECTURE_SPECS)


def build_depth_model(arch: str, encoder_weights_path: str | Path | None = None) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) of a depth architecture, randomly initialised (or ImageNet encoder from a local file)."""
    if arch not in ARCHITECTURE_SPECS:
        raise ValueError(f'unknown architecture {arch!r}; choose one of {", ".join(ARCHITECTURES)}')
    encoder_kind, layers, decoder_kind = ARCHITECTURE_SPECS[arch]
    if encoder_kind == 'mobile':
        encoder: nn.Module = MobileEncoder(weights_path=encoder_weights_path)
    else:
        encoder = ResnetEncoder(layers, weights_path=encoder_weights_path)
    if decoder_kind == 'hr_depth':
        decoder: nn.Module = HRDepthDecoder(encoder.num_ch_enc, mobile_encoder=encoder_kind == 'mobile')
    else:
        decoder = DepthDecoder(encoder.num_ch_enc)
    return encoder, decoder


def build_pose_model(weights_path: str | Path | None = None) -> tuple[ResnetEncoder, PoseDecoder]:
    """Monodepth2's "separate_resnet" pose net: ResNet-18 on 2 stacked frames + pose decoder.

    The decoder predicts for 2 frames, as monodepth2 builds it (so its ``pose.pth`` loads);
    the trainer uses the first: ``axisangle[:, 0]``, ``translation[:, 0]``.
    """
    encoder = ResnetEncoder(18, num_input_images=2, weights_path=weights_path)
    return encoder, PoseDecoder(encoder.num_ch_enc, num_input_features=1, num_frames_to_predict_for=2)


def count_parameters(module: nn.Module) -> int:
    """Number of distinct parameters (shared ones counted once)."""
    return sum(p.numel() for p in module.parameters())


__all__ = ['ARCHITECTURES', 'ARCHITECTURE_SPECS', 'DepthDecoder', 'HRDepthDecoder', 'MobileEncoder', 'PoseDecoder',
           'ResnetEncoder', 'build_depth_model', 'build_pose_model', 'count_parameters']
