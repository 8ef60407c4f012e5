"""The depth node: ROS-free engine and parameter logic, then the real node in a subprocess over DDS."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hr_depth_ros.depth_node import (
    CameraHeightScale,
    ConfigError,
    DepthEngine,
    Intrinsics,
    NodeConfig,
    checkpoint_intrinsics,
    fit_ground_plane,
    select_intrinsics,
)
from hr_depth_ros.geometry import depth_to_points, pixel_rays
from hr_depth_ros.transport import fastdds_profile_path, local_ros_env

REPO = Path(__file__).resolve().parents[1]
# Fast DDS reads its profile when this process creates its first participant: set it before any.
os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(fastdds_profile_path()))

K_640 = np.array([[370.0, 0.0, 319.5], [0.0, 370.0, 95.5], [0.0, 0.0, 1.0]])


class ConstantEstimator:
    """Stands in for DepthEstimator: a fixed depth map at 'network' resolution."""

    def __init__(self, depth: np.ndarray) -> None:
        self.depth = depth.astype(np.float32)
        self.height, self.width = depth.shape

    def predict_depth(self, rgb: np.ndarray) -> np.ndarray:
        return self.depth.copy()


def config(**overrides) -> NodeConfig:
    return NodeConfig.from_values({'weights': '/w', **overrides})


def ground_depth(K: np.ndarray, height: int, width: int, camera_height: float, far: float = 80.0) -> np.ndarray:
    """Depth of a flat ground ``camera_height`` below the camera (y down), ``far`` above the horizon."""
    rays = pixel_rays(K, height, width)
    with np.errstate(divide='ignore'):
        depth = np.where(rays[..., 1] > 1e-3, camera_height / rays[..., 1], far)
    return np.minimum(depth, far).astype(np.float32)


# --- parameters ---------------------------------------------------------------------------------

def test_config_rejects_bad_values_with_the_parameter_name():
    with pytest.raises(ConfigError, match='weights is empty'):
        NodeConfig.from_values({})
    with pytest.raises(ConfigError, match='colormap'):
        config(colormap='rainbow')
    with pytest.raises(ConfigError, match='points_stride'):
        config(points_stride=0)
    with pytest.raises(ConfigError, match='max_depth'):
        config(min_depth=5.0, max_depth=1.0)
    with pytest.raises(ConfigError, match='fx, fy, cx, cy'):
        config(fx=300.0)
    with pytest.raises(ConfigError, match='device'):
        config(device='tpu')
    with pytest.raises(ConfigError, match='colored_max'):
        config(colored_range='fixed', colored_min=5.0, colored_max=1.0)
    assert config(depth_scale=5).depth_scale == 5.0  # ints are fine for float parameters
    with pytest.raises(ConfigError, match='points_rgb must be bool'):
        config(points_rgb='yes')


def test_intrinsics_priority_and_rescaling():
    cfg = config()
    info = Intrinsics(K_640 * [[2], [2], [1]], (1280, 384), 'camera_info')
    chosen = select_intrinsics((640, 192), info, cfg, None)
    assert chosen.source == 'camera_info'
    np.testing.assert_allclose(chosen.K[0, 0], 740.0 / 2)
    manual = config(fx=100.0, fy=110.0, cx=50.0, cy=40.0)
    assert select_intrinsics((640, 192), None, manual, None).K[1, 1] == 110.0
    stored = checkpoint_intrinsics({'intrinsics': {'K': K_640.tolist(), 'width': 640, 'height': 192}})
    assert select_intrinsics((640, 192), None, cfg, stored).source == 'checkpoint'
    default = select_intrinsics((640, 192), None, cfg, None)
    assert default.source == 'kitti_default'
    np.testing.assert_allclose(default.K[0, 0], 0.58 * 640)
    np.testing.assert_allclose(default.K[0, 2], 319.5)  # image centre (pixel-centre convention)
    with pytest.raises(ConfigError, match='intrinsics'):
        checkpoint_intrinsics({'intrinsics': {'K': [1, 2]}})


# --- scale from the camera height ---------------------------------------------------------------

def test_ground_plane_scale_recovers_camera_height():
    truth = ground_depth(K_640, 192, 640, camera_height=1.5)
    rng = np.random.default_rng(0)
    relative = truth * 0.3 * (1 + 0.01 * rng.standard_normal(truth.shape)).astype(np.float32)
    estimator = CameraHeightScale()
    frame_scale = estimator.update(relative, K_640, camera_height=1.5)
    assert frame_scale == pytest.approx(1 / 0.3, rel=0.03)
    for _ in range(5):
        estimator.update(relative, K_640, camera_height=1.5)
    assert estimator.scale == pytest.approx(1 / 0.3, rel=0.03)


def test_ground_plane_rejects_a_wall():
    points, _ = depth_to_points(np.full((48, 160), 5.0, np.float32), K_640 / [[4], [4], [1]], stride=2)
    assert fit_ground_plane(points, np.random.default_rng(0)) is None
    assert CameraHeightScale().update(np.full((96, 320), 5.0, np.float32), K_640 / [[2], [2], [1]], 1.5) is None


def test_engine_camera_height_mode_scales_depth():
    K_net = K_640 / [[2], [2], [1]]
    K_net[:2, 2] = [159.5, 47.5]
    truth = ground_depth(K_net, 96, 320, camera_height=1.2)
    engine = DepthEngine(ConstantEstimator(truth * 0.5), config(scale_mode='camera_height', camera_height=1.2))
    info = Intrinsics(K_net, (320, 96), 'camera_info')
    result = engine.process(np.zeros((96, 320, 3), np.uint8), info, want_colored=False, want_points=False)
    assert result.scale == pytest.approx(2.0, rel=0.03)
    np.testing.assert_allclose(np.nanmedian(result.depth / truth), 2.0 * 0.5, rtol=0.03)


# --- engine ------------------------------------------------------------------------------------

def test_engine_camera_resolution_points_match_depth():
    network = np.linspace(2.0, 60.0, 96 * 320, dtype=np.float32).reshape(96, 320)
    engine = DepthEngine(ConstantEstimator(network), config(points_stride=4, points_max_range=30.0))
    rgb = np.random.default_rng(0).integers(0, 256, (192, 640, 3), dtype=np.uint8)
    result = engine.process(rgb, Intrinsics(K_640, (640, 192), 'camera_info'))
    assert result.depth.shape == (192, 640) and result.depth.dtype == np.float32
    np.testing.assert_array_equal(result.K, K_640)
    assert result.colored_bgr.shape == (192, 640, 3) and result.colored_bgr.dtype == np.uint8
    expected, valid = depth_to_points(result.depth, K_640, stride=4, max_range=30.0)
    np.testing.assert_allclose(result.points, expected)
    assert result.points[:, 2].max() <= 30.0 and 0 < len(result.points) < 48 * 160
    np.testing.assert_array_equal(result.point_colors, rgb[::4, ::4][valid])
    assert {'inference', 'resize', 'colorize', 'points'} <= set(result.timings_ms)


def test_engine_network_resolution_organized_cloud_has_nan():
    network = np.full((96, 320), 10.0, np.float32)
    network[:10] = np.nan  # invalid network output stays NaN in depth and points
    engine = DepthEngine(ConstantEstimator(network),
                         config(output_resolution='network', points_organized=True, points_stride=2, points_rgb=False))
    result = engine.process(np.zeros((192, 640, 3), np.uint8), Intrinsics(K_640, (640, 192), 'camera_info'))
    assert result.depth.shape == (96, 320)
    np.testing.assert_allclose(result.K[0, 0], 185.0)
    assert np.isnan(result.depth[:10]).all() and np.isfinite(result.depth[10:]).all()
    assert result.points.shape == (48, 160, 3) and result.point_colors is None
    assert np.isnan(result.points[:5]).all() and np.isfinite(result.points[5:]).all()


def test_engine_colored_fixed_range_and_disparity():
    depth = np.tile(np.linspace(1.0, 20.0, 64, dtype=np.float32), (8, 1))
    engine = DepthEngine(ConstantEstimator(depth), config(colored_mode='depth', colored_range='fixed',
                                                          colored_min=1.0, colored_max=20.0, colormap='turbo'))
    near_far = engine.colorize(depth)
    disparity_engine = DepthEngine(ConstantEstimator(depth), config(colored_mode='disparity'))
    assert not np.array_equal(near_far, disparity_engine.colorize(depth))
    # fixed range: the same depth gets the same colour whatever else is in the frame
    np.testing.assert_array_equal(engine.colorize(depth[:, :32])[:, :32], near_far[:, :32])
