"""The depth side's options, one table: every depth-node parameter declares itself once (ROS-free).

Each field of :class:`NodeConfig` is written with
:func:`~hr_depth_ros.core.training.options.option` (the fine-tuning table's declaration: help, type,
choices, limits, command-line flag, ``read_only``). Generated from it:

- the depth node's parameters, their descriptors and the read-only rule
  (:mod:`hr_depth_ros.ros.depth_node`), validated by :meth:`NodeConfig.from_values`;
- the command-line flags of the tools (``predict``, the demo, benchmarks/node_latency.py):
  :func:`add_tool_arguments` adds one per option with a flag, :func:`tool_values` reads them back,
  :func:`ros_arguments` turns values into the node's ``-p name:=value`` arguments;
- the estimator: :meth:`hr_depth_ros.core.inference.DepthEstimator.from_config`;
- config/depth.yaml (:func:`depth_yaml`; ``python scripts/readme_tables.py --write``) and the README table
  (:func:`depth_markdown_table`).

Adding a parameter is one ``option(...)`` field below plus its use. Node-only parameters carry
``cli=None``; a flag of the tools takes ``cli=''`` (``--field-name``) or its own spelling
(``cli='--cmap'``), and ``cli_default`` where the tools' default differs from the node's.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping

from hr_depth_ros.core.image_decoding import DEFAULT_MAX_PIXELS, MAX_PIXELS_LIMIT
from hr_depth_ros.core.quantization import DEFAULT_CALIBRATION_FRAMES, MAX_CALIBRATION_FRAMES
from hr_depth_ros.core.training.options import Option, add_arguments, markdown_table, option, options, yaml_scalar
from hr_depth_ros.core.training.options import yaml_text
from hr_depth_ros.core.visualization import COLORMAPS

__all__ = ['NODE_NAME', 'ConfigError', 'NodeConfig', 'PARAMETERS', 'PARAMETER_NAMES', 'PARAMETERS_BY_NAME',
           'add_tool_arguments', 'tool_values', 'ros_arguments', 'depth_yaml', 'depth_markdown_table']

NODE_NAME = 'hr_depth'
_FIXED = 'changeable only while unconfigured'


class ConfigError(ValueError):
    """A parameter value the node cannot run with."""


@dataclass(frozen=True)
class NodeConfig:
    """Validated parameter values of the depth node; each field is one row of the option table."""

    # -- the estimator (also flags of the command-line tools)
    weights: str = option('', help='checkpoint folder (encoder.pth + depth.pth); required', read_only=True, cli=None)
    autostart: bool = option(True, help='configure and activate on start-up; false: stay unconfigured until a '
                             'lifecycle transition (change_state) is requested', read_only=True, cli=None)
    device: str = option('auto', help="'auto' (CUDA if available), 'cuda', 'cuda:N' or 'cpu'", read_only=True)
    precision: str = option(
        'fp16', choices=('fp32', 'fp16', 'bf16', 'int8'), read_only=True, cli_default='fp32',
        help='inference precision: fp16 / bf16 / fp32 on CUDA (the CPU runs fp32 for fp16); int8 = opt-in OpenVINO '
             'INT8 on the CPU, quantised once from calibration (~2x faster, slightly less accurate; fp16 on CUDA and '
             'fp32 with torch, with a warning); command line default fp32')
    channels_last: bool = option(True, help='channels-last memory format (faster on CUDA and on the CPU)',
                                 read_only=True, cli_help='NCHW instead of the channels-last memory format')
    compile: bool = option(False, help='torch.compile the model (slow first frames)', read_only=True)
    backend: str = option('auto', choices=('auto', 'torch', 'openvino'), read_only=True,
                          help="'auto': torch on CUDA, OpenVINO on the CPU if installed; 'openvino' runs on the CPU")
    threads: int = option(0, min_value=0, max_value=1024, read_only=True,
                          help='CPU inference threads; 0 = the cores the process may use (use fewer on a busy '
                               'machine: oversubscription made torch 20-30x slower)')
    cache_dir: str = option('', read_only=True,
                            help='converted-model cache; empty = $HR_DEPTH_ROS_CACHE or ~/.cache/hr_depth_ros')
    calibration: str = option('', read_only=True,
                              help='precision int8: a folder of images or a bag from this camera to calibrate on; '
                                   'empty = synthetic street frames (real frames calibrate better)')
    calibration_topic: str = option('', read_only=True,
                                    help="image topic in the calibration bag; empty = the bag's only image topic")
    calibration_frames: int = option(DEFAULT_CALIBRATION_FRAMES, min_value=1, max_value=MAX_CALIBRATION_FRAMES,
                                     read_only=True,
                                     help='precision int8: frames used (evenly spaced over the folder or bag)')
    min_depth: float = option(0.0, min_value=0.0, read_only=True,
                              help="depth of the largest disparity (before metric scale and depth_scale); 0 = the "
                                   "checkpoint's depth_range (0.1 when it has none)")
    max_depth: float = option(0.0, min_value=0.0, read_only=True,
                              help="depth of the smallest disparity (before metric scale and depth_scale); 0 = the "
                                   "checkpoint's depth_range (100 when it has none)")
    depth_scale: float = option(1.0, min_value=1e-6, max_value=1e6, read_only=True,
                                help='metric scale factor (5.4 for stereo-trained checkpoints); multiplies the '
                                     "checkpoint's own metric scale when it has one")
    # -- the node's outputs
    scale_mode: str = option('fixed', choices=('fixed', 'camera_height'), cli=None,
                             help="'fixed' (depth_scale) or 'camera_height' (ground-plane estimate)")
    camera_height: float = option(1.65, min_value=0.01, max_value=100.0, cli=None,
                                  help='camera height above the ground (m) for scale_mode camera_height')
    output_resolution: str = option('camera', choices=('camera', 'network'), cli=None,
                                    help="'camera' (input image size) or 'network' (model size)")
    colormap: str = option('magma', choices=tuple(COLORMAPS), cli='--cmap',
                           help='colour map of depth/colored (and of the images predict writes)')
    colored_mode: str = option('disparity', choices=('depth', 'disparity'), cli=None,
                               help="colourise 'depth' or 'disparity' (1/depth)")
    colored_range: str = option('percentile', choices=('percentile', 'fixed'), cli=None,
                                help="'percentile' (per frame, min..95th) or 'fixed'")
    colored_min: float = option(0.0, cli=None, help='lower end of the fixed colour range (m, or 1/m for disparity)')
    colored_max: float = option(50.0, cli=None, help='upper end of the fixed colour range (m, or 1/m for disparity)')
    publish_points: bool = option(True, cli=None, help='publish the point cloud on points')
    points_stride: int = option(2, min_value=1, max_value=64, cli=None,
                                help='use every Nth pixel in both directions for points')
    points_max_range: float = option(50.0, min_value=0.0, cli=None,
                                     help='drop points deeper than this (m, along the optical axis); 0 = no limit')
    points_organized: bool = option(False, cli=None, help='organised cloud (H x W with NaN points) instead of 1 x N')
    points_rgb: bool = option(True, cli=None, help='xyzrgb cloud coloured from the image (else xyz)')
    # -- the node's inputs
    image_transport: str = option('raw', choices=('raw', 'compressed'), read_only=True, cli=None,
                                  help="'raw' (image) or 'compressed' (image/compressed, jpeg/png)")
    qos_reliability: str = option('best_effort', choices=('best_effort', 'reliable'), read_only=True, cli=None,
                                  help='reliability of the input subscriptions')
    qos_depth: int = option(1, min_value=1, max_value=100, read_only=True, cli=None,
                            help='history depth of the input subscriptions')
    fx: float = option(0.0, min_value=0.0, cli=None,
                       help='focal length x (px, input image) used when no camera_info; 0 = unset')
    fy: float = option(0.0, min_value=0.0, cli=None,
                       help='focal length y (px, input image) used when no camera_info; 0 = unset')
    cx: float = option(0.0, min_value=0.0, cli=None,
                       help='principal point x (px, input image) used when no camera_info; 0 = unset')
    cy: float = option(0.0, min_value=0.0, cli=None,
                       help='principal point y (px, input image) used when no camera_info; 0 = unset')
    statistics_period: float = option(1.0, min_value=0.05, max_value=3600.0, read_only=True, cli=None,
                                      help='seconds between ~/statistics messages')
    max_pixels: int = option(DEFAULT_MAX_PIXELS, min_value=1, max_value=MAX_PIXELS_LIMIT, cli=None,
                             help='larger input images (width x height, read from the raw fields or the JPEG/PNG '
                                  'header before decoding) are dropped as malformed')

    # -- online adaptation (hr_depth_ros.core.adaptation; read at configure)
    adapt: bool = option(False, read_only=True, cli=None,
                         help='online adaptation: keep learning from the served frames with the camera poses from TF; '
                              'a new model is served only when it beats the serving one on held-out recent frames')
    adapt_output: str = option('', read_only=True, cli=None,
                               help='folder for the accepted models (OUTPUT/latest, a checkpoint); empty = '
                                    '<model cache>/adapted/<weights folder name>')
    adapt_resume: bool = option(True, read_only=True, cli=None,
                                help='start from adapt_output/latest when it exists (false: from weights); weights '
                                     'stays the anchor')
    adapt_pose_source: str = option('tf', choices=('tf', 'vo'), read_only=True, cli=None,
                                    help='where the camera motion comes from: tf (odometry; depth becomes metric) or '
                                         'vo (camera only: two-view geometry, depth stays in the model\'s units)')
    adapt_odom_frame: str = option('odom', read_only=True, cli=None, help='fixed frame of the odometry in TF')
    adapt_camera_frame: str = option('', read_only=True, cli=None,
                                     help="camera's optical frame in TF; empty = the images' header.frame_id")
    adapt_max_tf_wait: float = option(1.0, min_value=0.05, max_value=60.0, read_only=True, cli=None,
                                      help='seconds a frame waits for TF past its stamp; TF silent this long pauses '
                                           'adaptation')
    adapt_buffer_frames: int = option(200, min_value=8, max_value=100000, read_only=True, cli=None,
                                      help='frames kept for training and judging (memory: this many frames at network '
                                           'resolution)')
    adapt_min_motion: float = option(0.5, min_value=0.0, max_value=255.0, read_only=True, cli=None,
                                     help='frames differing less than this from the last kept one (mean grey level on '
                                          'thumbnails) are not kept')
    adapt_max_gap: float = option(1.0, min_value=0.01, max_value=60.0, read_only=True, cli=None,
                                  help='seconds; kept frames further apart do not form a training triplet')
    adapt_batch_size: int = option(4, min_value=1, max_value=256, read_only=True, cli=None,
                                   help='triplets per training step')
    adapt_lr: float = option(0.0, min_value=0.0, max_value=1.0, read_only=True, cli=None,
                             help='Adam learning rate of the adaptation; 0 = by pose source: 3e-4 with TF poses, 1e-4 '
                                  'with two-view poses')
    adapt_loss_scales: int = option(1, min_value=1, max_value=4, read_only=True, cli=None,
                                    help="decoder scales the adaptation's loss is computed at (1: the full-resolution "
                                         "output only, ~1.7x the steps of fine-tuning's 4 on a CPU)")
    adapt_steps_per_round: int = option(10, min_value=1, max_value=100000, read_only=True, cli=None,
                                        help='training steps between two judgements of the candidate (the first '
                                             'after 5)')
    adapt_margin: float = option(0.01, min_value=0.0, max_value=0.5, read_only=True, cli=None,
                                 help='a candidate must score this fraction better than the serving model')
    adapt_anchor_weight: float = option(0.0, min_value=0.0, max_value=100.0, read_only=True, cli=None,
                                        help='L1 pull of the disparity toward the start model (weights)')
    adapt_device: str = option('auto', read_only=True, cli=None,
                               help="'auto' (the node's device), 'cpu', 'cuda' or 'cuda:N'")
    adapt_nice: int = option(10, min_value=0, max_value=19, read_only=True, cli=None,
                             help='niceness added to the worker process (0-19; higher = lower priority)')

    @classmethod
    def from_values(cls, values: Mapping[str, Any], partial_intrinsics: bool = False) -> NodeConfig:
        """Check types, choices and ranges; missing names take their defaults. Raises ConfigError.

        ``partial_intrinsics``: accept some of fx, fy, cx, cy set and others 0 (a node sets them one at
        a time at runtime); the manual K is used only once all four are set (:attr:`manual_intrinsics`).
        """
        unknown = sorted(set(values) - set(PARAMETERS_BY_NAME))
        if unknown:
            raise ConfigError(f'unknown parameters {unknown}; known: {list(PARAMETER_NAMES)}')
        checked: dict[str, Any] = {}
        for spec in PARAMETERS:
            value = values.get(spec.name, spec.default)
            kind = spec.value_type
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not kind:
                raise ConfigError(f'parameter {spec.name} must be {kind.__name__}, got {value!r}')
            if spec.choices and value not in spec.choices:
                raise ConfigError(f'parameter {spec.name}={value!r} must be one of {list(spec.choices)}')
            if kind is float and not math.isfinite(value):
                raise ConfigError(f'parameter {spec.name} must be finite, got {value}')
            if spec.min_value is not None and value < spec.min_value:
                raise ConfigError(f'parameter {spec.name}={value} is below its minimum {spec.min_value}')
            if spec.max_value is not None and value > spec.max_value:
                raise ConfigError(f'parameter {spec.name}={value} is above its maximum {spec.max_value}')
            checked[spec.name] = value
        config = cls(**checked)
        config._check_relations(partial_intrinsics)
        return config

    @property
    def manual_intrinsics(self) -> bool:
        """Whether fx, fy, cx and cy are all set (> 0): K from the parameters."""
        return all(value > 0 for value in (self.fx, self.fy, self.cx, self.cy))

    def _check_relations(self, partial_intrinsics: bool = False) -> None:
        if not self.weights:
            raise ConfigError('parameter weights is empty: give the checkpoint folder, '
                              'e.g. -p weights:=/path/to/HR_Depth_K_M_1280x384')
        if not _device_name(self.device):
            raise ConfigError(f"parameter device={self.device!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if self.calibration_topic and not self.calibration:
            raise ConfigError(f'calibration_topic {self.calibration_topic!r} needs calibration (the bag) set')
        if self.precision == 'int8' and self.calibration and not os.path.exists(os.path.expanduser(self.calibration)):
            raise ConfigError(f'calibration {self.calibration!r} does not exist: give a folder of images or a bag, '
                              'or leave it empty for synthetic frames')
        if self.max_depth > 0 and self.max_depth <= self.min_depth:
            raise ConfigError(f'max_depth ({self.max_depth}) must be larger than min_depth ({self.min_depth})')
        if self.colored_range == 'fixed' and self.colored_max <= self.colored_min:
            raise ConfigError(f'colored_max ({self.colored_max}) must be larger than colored_min '
                              f'({self.colored_min}) when colored_range is fixed')
        if not _device_name(self.adapt_device):
            raise ConfigError(f"parameter adapt_device={self.adapt_device!r} must be 'auto', 'cpu', 'cuda' or "
                              "'cuda:N'")
        if self.adapt and not self.adapt_odom_frame.strip():
            raise ConfigError('parameter adapt_odom_frame is empty: name the odometry frame in TF (e.g. odom)')
        manual = (self.fx, self.fy, self.cx, self.cy)
        if not partial_intrinsics and any(v > 0 for v in manual) and not self.manual_intrinsics:
            raise ConfigError(f'set all of fx, fy, cx, cy (> 0) or none of them; got {manual} (while the node runs '
                              'they may be set one at a time: K from them is used once all four are set)')

    def as_dict(self) -> dict[str, Any]:
        """Field name -> value."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _device_name(name: str) -> bool:
    """Whether ``name`` is 'auto', 'cpu', 'cuda' or 'cuda:N'."""
    return name in ('auto', 'cpu', 'cuda') or (name.startswith('cuda:') and name[5:].isdigit())


PARAMETERS: tuple[Option, ...] = options(NodeConfig)
PARAMETER_NAMES = tuple(spec.name for spec in PARAMETERS)
PARAMETERS_BY_NAME = {spec.name: spec for spec in PARAMETERS}


def constraints(spec: Option) -> str:
    """The node's ``additional_constraints`` text of a parameter (its choices, the read-only rule)."""
    return '; '.join([f'one of {list(spec.choices)}'] * bool(spec.choices) + [_FIXED] * spec.read_only)


# -- the command-line tools ---------------------------------------------------------------------------
def add_tool_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per option with ``cli`` (``--device``, ``--backend``, ``--precision``, ...; dest: the field)."""
    add_arguments(parser, NodeConfig)


def tool_values(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags of :func:`add_tool_arguments` as parameter values (``NodeConfig.from_values``
    takes them with ``weights`` added)."""
    return {spec.name: getattr(args, spec.name) for spec in PARAMETERS if spec.flag}


def ros_arguments(values: Mapping[str, Any]) -> list[str]:
    """``-p name:=value`` node arguments for the ``values`` that differ from the node's defaults."""
    result: list[str] = []
    for name, value in values.items():
        if value != PARAMETERS_BY_NAME[name].default:
            result += ['-p', f'{name}:={yaml_scalar(value)}']
    return result


# -- generated files ----------------------------------------------------------------------------------
def depth_yaml() -> str:
    """config/depth.yaml: every parameter with its default, its description as a comment."""
    header = ['# Defaults of the depth node (ros2 run hr_depth_ros depth_node), generated from the option table',
              '# (hr_depth_ros/core/depth_options.py) by: python scripts/readme_tables.py --write',
              '#   ros2 run hr_depth_ros depth_node --ros-args --params-file config/depth.yaml -p weights:=<folder>']
    return yaml_text(NodeConfig, (), header, NODE_NAME)


def depth_markdown_table() -> str:
    """README table: parameter, command-line flag of the tools, default, description."""
    return markdown_table(NodeConfig, ())
