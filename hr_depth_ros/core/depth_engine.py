"""The depth node's ROS-free core: intrinsics, metric scale, per-frame engine, statistics.

:mod:`hr_depth_ros.ros.depth_node` is the rclpy adapter around it. Nothing here imports rclpy or
message packages (test/test_package_build.py checks it), so the engine runs and is tested
without ROS: ``DepthEngine(estimator, NodeConfig.from_values({...})).process(rgb)``.

- :class:`~hr_depth_ros.core.depth_options.NodeConfig` (its own module: the option table of the
  node's parameters and the tools' flags) holds validated values.
- :func:`select_intrinsics`: K from camera_info, the fx/fy/cx/cy parameters, the checkpoint's
  metadata or KITTI-like defaults.
- :class:`CameraHeightScale`: metric scale from a RANSAC ground-plane fit.
- :class:`DepthEngine`: rgb -> depth -> colourised depth -> packed point cloud.
- :class:`InputChecker`: image decoding and camera_info plausibility, bad input warned and dropped.
- :class:`FrameStatistics`: what ``~/statistics`` reports.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import cv2
import numpy as np

from hr_depth_ros.core.geometry import depth_to_points, pixel_intrinsics, ray_planes, scale_intrinsics
from hr_depth_ros.core import image_decoding
from hr_depth_ros.core.camera_info import implausible_intrinsics
from hr_depth_ros.core.depth_options import ConfigError, NodeConfig
from hr_depth_ros.core.image_decoding import shorten
from hr_depth_ros.core.rectification import Calibration, Rectifier, calibration_of, rectifier_for
from hr_depth_ros.core.pointcloud import CloudPacker, PackedCloud
from hr_depth_ros.core.visualization import colorize

# monodepth2's KITTI intrinsics, normalised by image width/height.
KITTI_NORMALIZED_K = np.array([[0.58, 0.0, 0.5], [0.0, 1.92, 0.5], [0.0, 0.0, 1.0]])
GROUND_BAND_START = 0.65  # the ground-plane fit uses image rows below this fraction of the height
SCALE_SMOOTHING = 0.2  # weight of a new camera-height scale estimate (EMA in log space)


# ---------------------------------------------------------------------------------------------
# Intrinsics and scale (ROS-free)

@dataclass(frozen=True)
class Intrinsics:
    """K (3x3, pixels) of an image of ``size = (width, height)`` and where it came from.

    ``calibration``: the camera_info's full calibration when it has lens distortion (or a
    rectification R): frames are then rectified (:mod:`hr_depth_ros.core.rectification`) and ``K``
    is the rectified camera's.
    """

    K: np.ndarray
    size: tuple[int, int]
    source: str
    calibration: Calibration | None = None

    def rectifier(self, image_size: tuple[int, int]) -> Rectifier | None:
        """The (cached) remap tables for images of ``image_size``, None when nothing is to be remapped."""
        if self.calibration is None:
            return None
        rectifier = rectifier_for(self.calibration, tuple(image_size))
        return None if rectifier.identity else rectifier


def default_intrinsics(width: int, height: int) -> Intrinsics:
    """KITTI-like intrinsics (monodepth2's normalised K) for an image of this size."""
    return Intrinsics(pixel_intrinsics(KITTI_NORMALIZED_K, width, height), (int(width), int(height)), 'kitti_default')


def checkpoint_intrinsics(metadata: dict | None) -> Intrinsics | None:
    """Intrinsics stored in checkpoint metadata (``{"intrinsics": {"K", "width", "height"}}``), if any.

    Raises ConfigError when the entry exists but is malformed.
    """
    entry = (metadata or {}).get('intrinsics')
    if entry is None:
        return None
    try:
        K = np.asarray(entry['K'], dtype=np.float64).reshape(3, 3)
        size = (int(entry['width']), int(entry['height']))
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f'checkpoint metadata "intrinsics" must hold K (3x3), width and height: {error}') from error
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0 or min(size) <= 0:
        raise ConfigError(f'checkpoint metadata "intrinsics" is not usable: K={K.tolist()}, size={size}')
    return Intrinsics(K, size, 'checkpoint')


def select_intrinsics(
    image_size: tuple[int, int],
    camera_info: Intrinsics | None,
    config: NodeConfig,
    from_checkpoint: Intrinsics | None,
) -> Intrinsics:
    """K for the input image (``image_size = (width, height)``), by priority.

    camera_info, then the fx/fy/cx/cy parameters (pixels of the input image), then the
    checkpoint's metadata, then KITTI-like defaults; rescaled to ``image_size`` when the
    source describes another resolution.
    """
    if camera_info is not None:
        chosen = camera_info
    elif config.manual_intrinsics:
        K = np.array([[config.fx, 0.0, config.cx], [0.0, config.fy, config.cy], [0.0, 0.0, 1.0]])
        chosen = Intrinsics(K, tuple(image_size), 'parameters')
    elif from_checkpoint is not None:
        chosen = from_checkpoint
    else:
        return default_intrinsics(*image_size)
    if tuple(chosen.size) == tuple(image_size):
        return chosen
    return Intrinsics(_resize_K(chosen.K, chosen.size, image_size), tuple(image_size), chosen.source,
                      chosen.calibration)


def _resize_K(K: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """K of an image of ``from_size = (width, height)`` resized to ``to_size``."""
    return scale_intrinsics(K, to_size[0] / from_size[0], to_size[1] / from_size[1])


def fit_ground_plane(
    points: np.ndarray,
    rng: np.random.Generator,
    iterations: int = 64,
    relative_threshold: float = 0.03,
    max_tilt_deg: float = 30.0,
    min_inlier_fraction: float = 0.3,
) -> tuple[np.ndarray, float] | None:
    """Robust (RANSAC + least-squares refit) plane ``n . p + d = 0`` through ``N x 3`` camera-frame points.

    Only planes whose normal is within ``max_tilt_deg`` of the optical frame's y axis (down)
    count as ground. Returns ``(unit normal, d)`` or None when no plane has enough inliers.
    """
    points = points[np.isfinite(points).all(axis=1)]
    if len(points) < 10:
        return None
    threshold = relative_threshold * float(np.median(points[:, 2]))
    min_cos = math.cos(math.radians(max_tilt_deg))
    best_inliers: np.ndarray | None = None
    for _ in range(iterations):
        a, b, c = points[rng.choice(len(points), 3, replace=False)]
        normal = np.cross(b - a, c - a)
        norm = np.linalg.norm(normal)
        if norm < 1e-12 or abs(normal[1]) / norm < min_cos:
            continue
        normal /= norm
        inliers = np.abs(points @ normal - normal @ a) < threshold
        if best_inliers is None or inliers.sum() > best_inliers.sum():
            best_inliers = inliers
    if best_inliers is None or best_inliers.sum() < max(3, min_inlier_fraction * len(points)):
        return None
    inlier_points = points[best_inliers]
    centroid = inlier_points.mean(axis=0)
    normal = np.linalg.svd(inlier_points - centroid, full_matrices=False)[2][-1]
    if abs(normal[1]) < min_cos:
        return None
    return normal, float(-normal @ centroid)


class CameraHeightScale:
    """Scale that makes the fitted ground plane lie ``camera_height`` below the camera, smoothed over frames."""

    def __init__(self, max_points: int = 2000, seed: int = 0) -> None:
        self.max_points = max_points
        self.rng = np.random.default_rng(seed)
        self.log_scale: float | None = None

    @property
    def scale(self) -> float:
        """The smoothed scale (1.0 before the first successful fit)."""
        return 1.0 if self.log_scale is None else math.exp(self.log_scale)

    def update(self, depth: np.ndarray, K: np.ndarray, camera_height: float) -> float | None:
        """Fit the ground in the lower band of ``depth`` (intrinsics ``K``); this frame's scale, or None."""
        stride = 2
        grid, valid = depth_to_points(depth, K, stride=stride, organized=True)
        band = slice(int(math.ceil(GROUND_BAND_START * depth.shape[0] / stride)), None)
        points = grid[band][valid[band]]
        if len(points) > self.max_points:
            points = points[self.rng.choice(len(points), self.max_points, replace=False)]
        plane = fit_ground_plane(points, self.rng)
        if plane is None or abs(plane[1]) < 1e-6:
            return None
        frame_scale = camera_height / abs(plane[1])
        log_new = math.log(frame_scale)
        self.log_scale = log_new if self.log_scale is None else (
            (1.0 - SCALE_SMOOTHING) * self.log_scale + SCALE_SMOOTHING * log_new)
        return frame_scale


# ---------------------------------------------------------------------------------------------
# Per-frame work (ROS-free)

@dataclass
class FrameResult:
    """Everything published for one frame."""

    depth: np.ndarray  # H x W float32 metres, NaN invalid, at the output resolution
    K: np.ndarray  # intrinsics of ``depth``
    intrinsics_source: str
    colored_bgr: np.ndarray | None = None
    cloud: PackedCloud | None = None  # PointCloud2 bytes; a view valid until the engine's next frame
    scale: float = 1.0
    timings_ms: dict[str, float] = field(default_factory=dict)
    image: np.ndarray | None = None  # the frame the network saw (rectified when camera_info has a lens), input size

    @property
    def points(self) -> np.ndarray | None:
        """N x 3, or h x w x 3 when organised (views of ``cloud``)."""
        return None if self.cloud is None else self.cloud.points

    @property
    def point_colors(self) -> np.ndarray | None:
        return None if self.cloud is None else self.cloud.colors


class DepthEngine:
    """rgb -> depth at the output resolution -> colourised depth -> point cloud, without ROS.

    ``estimator`` is an :class:`hr_depth_ros.core.inference.DepthEstimator` (or anything with
    ``height``, ``width`` and ``predict_depth(rgb) -> (height x width) metres``).
    """

    def __init__(self, estimator: Any, config: NodeConfig, checkpoint_K: Intrinsics | None = None) -> None:
        self.estimator = estimator
        self.config = config
        self.checkpoint_K = checkpoint_K
        self.camera_height_scale = CameraHeightScale()
        self.cloud_packer = CloudPacker()

    def process(
        self,
        rgb: np.ndarray,
        camera_info: Intrinsics | None = None,
        want_colored: bool = True,
        want_points: bool = True,
    ) -> FrameResult:
        """Run one ``H x W x 3`` uint8 RGB frame; ``camera_info`` is the latest valid camera intrinsics.

        A camera_info with lens distortion rectifies the frame first: depth, ``K`` (what
        ``depth/camera_info`` publishes, D = 0), colours and points are the rectified pinhole camera's.
        """
        config = self.config
        timings: dict[str, float] = {}
        image_height, image_width = rgb.shape[:2]
        intrinsics = select_intrinsics((image_width, image_height), camera_info, config, self.checkpoint_K)
        rectifier = intrinsics.rectifier((image_width, image_height))
        if rectifier is not None:
            start = time.perf_counter()
            rgb = rectifier.rectify(rgb)
            intrinsics = Intrinsics(rectifier.K, (image_width, image_height), intrinsics.source + ' (rectified)')
            timings['rectify'] = elapsed_ms(start)

        start = time.perf_counter()
        network_depth = np.asarray(self.estimator.predict_depth(rgb), dtype=np.float32)
        timings['inference'] = elapsed_ms(start)

        start = time.perf_counter()
        net_height, net_width = network_depth.shape
        scale = 1.0
        if config.scale_mode == 'camera_height':
            net_K = _resize_K(intrinsics.K, (image_width, image_height), (net_width, net_height))
            self.camera_height_scale.update(network_depth, net_K, config.camera_height)
            scale = self.camera_height_scale.scale
        if config.output_resolution == 'camera':
            out_size = (image_width, image_height)
            depth = cv2.resize(network_depth, out_size, interpolation=cv2.INTER_LINEAR) \
                if (net_width, net_height) != out_size else network_depth
            K_out = intrinsics.K
            rgb_out = rgb
        else:
            out_size = (net_width, net_height)
            depth = network_depth
            K_out = _resize_K(intrinsics.K, (image_width, image_height), out_size)
            rgb_out = None
        if scale != 1.0:
            depth = depth * np.float32(scale)
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(np.nan)).astype(np.float32, copy=False)
        timings['resize'] = elapsed_ms(start)
        result = FrameResult(depth=depth, K=np.asarray(K_out, dtype=np.float64),
                             intrinsics_source=intrinsics.source, scale=scale, timings_ms=timings, image=rgb)

        if want_colored:
            start = time.perf_counter()
            result.colored_bgr = self.colorize(depth)
            timings['colorize'] = elapsed_ms(start)

        if want_points and config.publish_points:
            start = time.perf_counter()
            if config.points_rgb and rgb_out is None:
                rgb_out = cv2.resize(rgb, out_size, interpolation=cv2.INTER_AREA)
            result.cloud = self.points(depth, result.K, rgb_out if config.points_rgb else None)
            timings['points'] = elapsed_ms(start)
        return result

    def colorize(self, depth: np.ndarray) -> np.ndarray:
        """bgr8 colour image of depth or disparity with the configured map and range."""
        config = self.config
        values = depth if config.colored_mode == 'depth' else 1.0 / depth
        if config.colored_range == 'fixed':
            return colorize(values, config.colormap, vmin=config.colored_min, vmax=config.colored_max, bgr=True)
        return colorize(values, config.colormap, bgr=True)

    def points(self, depth: np.ndarray, K: np.ndarray, rgb: np.ndarray | None) -> PackedCloud:
        """Strided, range-limited cloud of ``depth`` (organised h x w with NaN points, else 1 x N)."""
        config = self.config
        stride = config.points_stride
        return self.cloud_packer.pack(
            depth[::stride, ::stride], ray_planes(K, *depth.shape, stride=stride),
            None if rgb is None else rgb[::stride, ::stride],
            max_range=config.points_max_range if config.points_max_range > 0 else None,
            organized=config.points_organized)


Warn = Callable[..., None]  # warn(reason, text, error=False): a rate-limited log line (the node's _warn)


class InputChecker:
    """Decodes image messages and keeps the latest plausible camera_info; bad input is warned and dropped.

    Messages are duck-typed (rclpy or rosbags), see :mod:`hr_depth_ros.core.image_decoding`.
    """

    def __init__(self, warn: Warn) -> None:
        self.warn = warn
        self.camera_info: Intrinsics | None = None
        self.last_image_size: tuple[int, int] | None = None

    def on_camera_info(self, msg: Any, topic: str) -> None:
        """Store ``msg``'s intrinsics unless they are implausible (then warned, the previous ones kept)."""
        try:
            calibration = calibration_of(msg)
        except ValueError as error:
            self.warn('camera_info', f'ignoring camera_info on {topic}: {error}')
            return
        K, width, height = calibration.K_matrix, calibration.width, calibration.height
        size = (width, height) if width > 0 and height > 0 else self.last_image_size
        problem = 'width/height not set' if size is None else implausible_intrinsics(K, size, self.last_image_size)
        if problem:
            self.warn('camera_info', f'ignoring camera_info on {topic}: {problem} '
                      f'(keeping {"the previous good one" if self.camera_info else "the fallback intrinsics"})')
            return
        distorted = calibration.distorted or not np.allclose(calibration.R, np.eye(3).ravel())
        self.camera_info = Intrinsics(K, size, 'camera_info', calibration if distorted else None)

    def decode(self, msg: Any, compressed: bool, max_pixels: int, topic: str) -> np.ndarray | None:
        """``H x W x 3`` uint8 RGB of an Image / CompressedImage message, or None (warned) when unusable."""
        try:
            rgb = (image_decoding.compressed_to_rgb(msg, max_pixels) if compressed
                   else image_decoding.image_to_rgb(msg, max_pixels))
        except image_decoding.UnsupportedEncoding as error:
            key = shorten(getattr(msg, 'format' if compressed else 'encoding', ''), 32)
            self.warn(f'encoding {key}', f'dropping frames on {topic}: unsupported encoding {key}: {error}',
                      error=True)
            return None
        except (image_decoding.MalformedImage, ValueError) as error:
            reason = 'too large' if isinstance(error, image_decoding.ImageTooLarge) else 'malformed'
            self.warn(reason, f'dropping malformed frame on {topic}: {shorten(error, 300)}')
            return None
        if rgb.ndim != 3 or rgb.shape[0] < 2 or rgb.shape[1] < 2:
            self.warn('too small', f'dropping frame on {topic}: image of shape {rgb.shape} is too small')
            return None
        return rgb

    def camera_info_for(self, image_size: tuple[int, int], topic: str) -> Intrinsics | None:
        """The stored camera_info unless its aspect ratio disagrees with this image (then warned)."""
        self.last_image_size = image_size
        info = self.camera_info
        if info is None:
            return None
        problem = implausible_intrinsics(info.K, info.size, image_size)
        if problem:
            self.warn('camera_info', f'not using camera_info from {topic}: {problem}')
            return None
        return info


def elapsed_ms(start: float) -> float:
    """Milliseconds since ``start`` (a ``time.perf_counter()`` value)."""
    return (time.perf_counter() - start) * 1000.0


class FrameStatistics:
    """Rates, drops, latencies and stage times for ``~/statistics`` (thread-safe)."""

    def __init__(self, window: int = 300) -> None:
        self.lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.dropped = 0
        self.bad_frames = 0
        self.skipped_no_subscribers = 0
        self.received_times: deque[float] = deque(maxlen=window)
        self.processed_times: deque[float] = deque(maxlen=window)
        self.latency_ms: deque[float] = deque(maxlen=window)
        self.stage_ms: dict[str, deque[float]] = {}

    def on_received(self, overwritten: bool) -> None:
        with self.lock:
            self.received += 1
            self.dropped += int(overwritten)
            self.received_times.append(time.monotonic())

    def on_skipped(self) -> None:
        """A received frame was not processed because nobody subscribes to an output."""
        with self.lock:
            self.skipped_no_subscribers += 1

    def on_bad_frame(self) -> None:
        with self.lock:
            self.bad_frames += 1

    def on_processed(self, latency_ms: float, timings_ms: dict[str, float]) -> None:
        with self.lock:
            self.processed += 1
            self.processed_times.append(time.monotonic())
            self.latency_ms.append(latency_ms)
            for stage, value in timings_ms.items():
                self.stage_ms.setdefault(stage, deque(maxlen=self.latency_ms.maxlen)).append(value)

    def snapshot(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """JSON-ready summary: counts, rates (Hz, over the recent window) and ms percentiles."""
        with self.lock:
            latencies = np.array(self.latency_ms, dtype=np.float64)
            summary: dict[str, Any] = {
                'received': self.received,
                'processed': self.processed,
                'dropped': self.dropped,
                'bad_frames': self.bad_frames,
                'skipped_no_subscribers': self.skipped_no_subscribers,
                'input_rate_hz': _rate(self.received_times),
                'processed_rate_hz': _rate(self.processed_times),
                'latency_ms': {
                    'p50': _percentile(latencies, 50), 'p95': _percentile(latencies, 95),
                    'p99': _percentile(latencies, 99)},
                'stage_ms': {stage: {'mean': round(float(np.mean(v)), 3), 'p95': _percentile(np.array(v), 95)}
                             for stage, v in self.stage_ms.items() if v},
            }
        summary.update(extra or {})
        return summary


def _rate(times: deque[float]) -> float:
    if len(times) < 2:
        return 0.0
    recent = [t for t in times if t >= time.monotonic() - 10.0]
    if len(recent) < 2 or recent[-1] <= recent[0]:
        return 0.0
    return round((len(recent) - 1) / (recent[-1] - recent[0]), 3)


def _percentile(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values.size else None


def release_cached_gpu_memory() -> None:
    """Hand PyTorch's cached CUDA blocks back to the driver (no-op without torch or CUDA)."""
    torch = sys.modules.get('torch')
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
