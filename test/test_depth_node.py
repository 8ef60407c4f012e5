"""The depth node: ROS-free engine and parameter logic, then the real node in a subprocess over DDS."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hr_depth_ros.core.backends import openvino_version
from hr_depth_ros.core.depth_engine import (
    CameraHeightScale,
    DepthEngine,
    InputChecker,
    Intrinsics,
    checkpoint_intrinsics,
    fit_ground_plane,
    select_intrinsics,
)
from hr_depth_ros.core.depth_options import ConfigError, NodeConfig
from hr_depth_ros.core.geometry import depth_to_points, pixel_rays
from hr_depth_ros.ros.probe import GraphProbe
from hr_depth_ros.ros.transport import fastdds_profile_path, local_ros_env

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
    with pytest.raises(ConfigError, match='weights'):
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
    with pytest.raises(ConfigError, match="points_rgb.*'yes'"):
        config(points_rgb='yes')
    with pytest.raises(ConfigError, match='backend'):
        config(backend='tensorrt')
    with pytest.raises(ConfigError, match='threads'):
        config(threads=-1)


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


def test_camera_height_scale_on_the_synthetic_street(synthetic_bag):
    """Ground truth of the synthetic drive (camera 1.5 m above the road, pitching and rolling a little),
    shrunk 4x: the ground-plane fit brings it back to metric within 5 %."""
    from hr_depth_ros.core import image_decoding
    from hr_depth_ros.core.bags import read_messages
    from hr_depth_ros.core.camera_info import camera_info_K

    frames: dict[int, dict] = {}
    for topic, _, stamp, msg in read_messages(synthetic_bag, ['/camera/depth_gt', INFO_TOPIC]):
        frames.setdefault(stamp, {})[topic] = msg
        if len(frames) > 8:
            break
    estimator = CameraHeightScale()
    per_frame = []
    for frame in list(frames.values())[:8]:
        depth = image_decoding.image_to_array(frame['/camera/depth_gt']) * np.float32(0.25)
        per_frame.append(estimator.update(depth, camera_info_K(frame[INFO_TOPIC])[0], camera_height=1.5))
    assert all(s is not None for s in per_frame), per_frame
    np.testing.assert_allclose(per_frame, 4.0, rtol=0.05)
    assert estimator.scale == pytest.approx(4.0, rel=0.05)


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


# OpenCV's colour maps at indices 0 and 128 and 255, BGR (the published turbo and matplotlib magma tables).
TURBO_BGR = {0: (59, 18, 48), 128: (60, 252, 164), 255: (3, 4, 122)}
MAGMA_BGR = {0: (4, 0, 0), 255: (191, 253, 252)}


def test_engine_colour_modes_give_known_pixel_values():
    depth = np.array([[1.0, 10.5, 20.0, 30.0, np.nan]], np.float32)  # near, middle, far, beyond, invalid
    fixed_depth = DepthEngine(ConstantEstimator(depth), config(
        colored_mode='depth', colored_range='fixed', colored_min=1.0, colored_max=20.0, colormap='turbo'))
    colored = fixed_depth.colorize(depth)
    expected = [TURBO_BGR[0], TURBO_BGR[128], TURBO_BGR[255], TURBO_BGR[255], (0, 0, 0)]
    np.testing.assert_array_equal(colored[0], np.array(expected, np.uint8))
    # fixed range: a pixel's colour does not depend on the rest of the frame
    np.testing.assert_array_equal(fixed_depth.colorize(depth[:, 1:2]), colored[:, 1:2])

    # disparity (1/depth) over the frame's min..95th percentile: near is the top of the map, far the bottom
    disparity = DepthEngine(ConstantEstimator(depth), config(colored_mode='disparity', colormap='magma'))
    colored = disparity.colorize(depth)
    assert tuple(colored[0, 0]) == MAGMA_BGR[255] and tuple(colored[0, 3]) == MAGMA_BGR[0]
    assert tuple(colored[0, 4]) == (0, 0, 0)


def test_input_checker_drops_bad_input_with_a_reason():
    from types import SimpleNamespace

    warnings = []
    checker = InputChecker(lambda reason, text, error=False: warnings.append((reason, text, error)))
    good = SimpleNamespace(k=K_640.ravel().tolist(), width=640, height=192)
    checker.on_camera_info(good, '/cam/info')
    checker.on_camera_info(SimpleNamespace(k=[0.0] * 9, width=640, height=192), '/cam/info')
    assert warnings[-1][0] == 'camera_info' and 'non-positive focal lengths' in warnings[-1][1]
    huge_focal = K_640 * [[1000], [1000], [1]]
    checker.on_camera_info(SimpleNamespace(k=huge_focal.ravel().tolist(), width=640, height=192), '/cam/info')
    assert warnings[-1][0] == 'camera_info' and '/cam/info' in warnings[-1][1]  # kept: checked next
    np.testing.assert_array_equal(checker.camera_info_for((640, 192), '/cam/info').K, K_640)
    assert checker.camera_info_for((640, 480), '/cam/info') is None  # aspect ratio disagrees
    assert warnings[-1][0] == 'camera_info' and '/cam/info' in warnings[-1][1]

    image = SimpleNamespace(height=2, width=3, encoding='rgb8', step=9, is_bigendian=0, data=bytes(range(18)))
    np.testing.assert_array_equal(checker.decode(image, False, 100, '/cam/image'),
                                  np.arange(18, dtype=np.uint8).reshape(2, 3, 3))
    assert checker.decode(SimpleNamespace(**dict(vars(image), data=bytes(10))), False, 100, '/cam/image') is None
    assert warnings[-1][0] == 'malformed' and '/cam/image' in warnings[-1][1]
    assert checker.decode(SimpleNamespace(**dict(vars(image), encoding='weird16')), False, 100, '/cam/image') is None
    reason, text, error = warnings[-1]
    assert 'weird16' in reason and 'unsupported encoding' in text and error


# --- the node over DDS ---------------------------------------------------------------------------

IMAGE_TOPIC = '/camera/image_raw'
INFO_TOPIC = '/camera/camera_info'
OUTPUTS = ('depth', 'depth/camera_info', 'depth/colored', 'points')
FIRST_FRAME_TIMEOUT = 90.0  # node start-up (torch import, model build) plus the first CPU inference
FRAME_TIMEOUT = 30.0


def wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` (and the node log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f'the node exited (rc {proc.returncode}) while waiting for {what}:\n{_tail(log)}')
        time.sleep(0.02)
    pytest.fail(f'timed out after {timeout:.0f} s waiting for {what}\n{_tail(log)}')


def _tail(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.exists():
        return ''
    return 'node log:\n' + '\n'.join(log.read_text(errors='replace').splitlines()[-lines:])


def stamp_key(header) -> tuple[int, int]:
    return int(header.stamp.sec), int(header.stamp.nanosec)


class CameraHarness(GraphProbe):
    """The fake camera (a GraphProbe): plays frames, records the depth node's outputs and statistics."""

    def __init__(self, domain_id: int, namespace: str, outputs: bool = True) -> None:
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image
        from std_msgs.msg import String

        super().__init__('fake_camera', namespace, domain_id)
        self.image_pub = self.publisher(Image, 'image')
        self.compressed_pub = self.publisher(CompressedImage, 'image/compressed')
        self.info_pub = self.publisher(CameraInfo, 'camera_info')
        self.subscribe(String, f'{namespace}/hr_depth/statistics', 'statistics')
        if outputs:
            self.subscribe_outputs()

    def subscribe_outputs(self, names: tuple[str, ...] = OUTPUTS) -> None:
        """Subscribe to (and record) the node's outputs ``names``."""
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2

        types = {'depth': Image, 'depth/camera_info': CameraInfo, 'depth/colored': Image, 'points': PointCloud2}
        for name in names:
            self.subscribe(types[name], name)

    def statistics(self) -> list[dict]:
        return [json.loads(m.data) for m in self.received('statistics')]

    def by_stamp(self, name: str, key: tuple[int, int]):
        return next((m for m in self.received(name) if stamp_key(m.header) == key), None)

    def all_outputs(self, key: tuple[int, int]) -> dict | None:
        found = {name: self.by_stamp(name, key) for name in OUTPUTS}
        return found if all(v is not None for v in found.values()) else None

    def camera_connected(self, compressed: bool) -> bool:
        return self.connected(self.compressed_pub if compressed else self.image_pub, self.info_pub)


class NodeProcess:
    """``python -m hr_depth_ros.ros.depth_node`` in a subprocess with its log in a file."""

    def __init__(self, env: dict, log: Path, namespace: str, weights: str | None, *parameters: str) -> None:
        args = []
        weights_parameter = () if weights is None else (f'weights:={weights}',)  # None: depth.yaml's empty value
        for parameter in (*weights_parameter, 'device:=cpu', *parameters):
            args += ['-p', parameter]
        self.command = [sys.executable, '-m', 'hr_depth_ros.ros.depth_node', '--ros-args',
                        '--params-file', str(REPO / 'config' / 'depth.yaml'), *args,
                        '-r', f'__ns:={namespace}']
        self.log = log
        env = dict(env, PYTHONUNBUFFERED='1', RCUTILS_LOGGING_BUFFERED_STREAM='0', RCUTILS_COLORIZED_OUTPUT='0',
                   OMP_NUM_THREADS='2')
        with open(log, 'wb') as handle:
            self.proc = subprocess.Popen(self.command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)

    def text(self) -> str:
        return self.log.read_text(errors='replace')

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: clean rclpy shutdown
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


@pytest.fixture(scope='module')
def ros_domain() -> int:
    return int(local_ros_env()['ROS_DOMAIN_ID'])


@pytest.fixture(scope='module')
def camera_frames(synthetic_bag):
    """The first 12 frames of the synthetic bag as rclpy (image, compressed, camera_info) messages."""
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    from hr_depth_ros.core.bags import read_messages
    from hr_depth_ros.ros.play_bag import to_rclpy

    classes = {IMAGE_TOPIC: Image, IMAGE_TOPIC + '/compressed': CompressedImage, INFO_TOPIC: CameraInfo}
    frames: dict[tuple[int, int], dict] = {}
    for topic, _, _, msg in read_messages(synthetic_bag, list(classes)):
        converted = to_rclpy(msg, classes[topic]())
        frames.setdefault(stamp_key(converted.header), {})[topic] = converted
        if len(frames) > 12:
            break
    complete = [f for f in frames.values() if len(f) == 3]
    assert len(complete) >= 10, f'synthetic bag {synthetic_bag} gave {len(complete)} complete frames'
    return complete


def send_frame(harness: CameraHarness, frame: dict, key: tuple[int, int], compressed: bool = False,
               camera_info: bool = True) -> None:
    """Publish one frame (and its camera_info) with the stamp ``key``."""
    image = frame[IMAGE_TOPIC + '/compressed'] if compressed else frame[IMAGE_TOPIC]
    for msg in ((frame[INFO_TOPIC],) if camera_info else ()) + (image,):
        msg.header.stamp.sec, msg.header.stamp.nanosec = key
    if camera_info:
        harness.info_pub.publish(frame[INFO_TOPIC])
        time.sleep(0.05)  # the node takes the latest camera_info; let it arrive before the image
    (harness.compressed_pub if compressed else harness.image_pub).publish(image)


def send_until(harness: CameraHarness, node: NodeProcess, frame: dict, key, compressed=False,
               timeout: float = FRAME_TIMEOUT) -> dict:
    """Publish the frame (again every 2 s; a best-effort hop may lose one) until all outputs for it arrived."""
    deadline = time.monotonic() + timeout
    while True:
        send_frame(harness, frame, key, compressed)
        found = None
        resend = time.monotonic() + 2.0
        while time.monotonic() < min(resend, deadline):
            found = harness.all_outputs(key)
            if found:
                return found
            if node.proc.poll() is not None:
                pytest.fail(f'the node exited (rc {node.proc.returncode}):\n{_tail(node.log)}')
            time.sleep(0.02)
        if time.monotonic() >= deadline:
            counts = {name: len(harness.received(name)) for name in (*OUTPUTS, 'statistics')}
            pytest.fail(f'no complete output for stamp {key} within {timeout:.0f} s (received so far: {counts})\n'
                        f'{_tail(node.log)}')


def decode_cloud(msg) -> np.ndarray:
    from hr_depth_ros.core.pointcloud import unpack_points

    points, _ = unpack_points(bytes(msg.data), with_rgb=any(f.name == 'rgb' for f in msg.fields))
    return points


def node_with_camera(tmp_path_factory, weights: Path, domain: int, namespace: str, *parameters: str):
    """Start a node in ``namespace`` and a fake camera beside it; yield both once discovered; stop both."""
    log = tmp_path_factory.mktemp(namespace.strip('/')) / 'node.log'
    node = NodeProcess(local_ros_env(domain), log, namespace, str(weights), *parameters)
    harness = CameraHarness(domain, namespace)
    try:
        compressed = 'image_transport:=compressed' in parameters
        wait_until(lambda: harness.camera_connected(compressed), FIRST_FRAME_TIMEOUT, 'DDS discovery', node.proc, log)
        yield node, harness
    finally:
        harness.close()
        node.stop()


@pytest.fixture(scope='module')
def raw_node(tmp_path_factory, lite_checkpoint, ros_domain):
    """A node on raw images at camera resolution (config/depth.yaml defaults) and its fake camera."""
    yield from node_with_camera(tmp_path_factory, lite_checkpoint, ros_domain, '/raw')


def test_node_outputs_match_input_raw(raw_node, camera_frames):
    from hr_depth_ros.core import image_decoding

    node, harness = raw_node
    frame = camera_frames[0]
    out = send_until(harness, node, frame, (1000, 1), timeout=FIRST_FRAME_TIMEOUT)
    info_in = frame[INFO_TOPIC]
    for name, msg in out.items():
        assert msg.header.frame_id == frame[IMAGE_TOPIC].header.frame_id, name
        assert stamp_key(msg.header) == (1000, 1), name
    depth_msg = out['depth']
    assert (depth_msg.encoding, depth_msg.width, depth_msg.height) == ('32FC1', 640, 192)
    depth = image_decoding.image_to_array(depth_msg)
    assert np.isfinite(depth).all() and (depth > 0).all()
    info = out['depth/camera_info']
    assert (info.width, info.height) == (640, 192)
    np.testing.assert_allclose(np.array(info.k), np.array(info_in.k))
    colored = out['depth/colored']
    assert (colored.encoding, colored.width, colored.height) == ('bgr8', 640, 192)
    cloud = out['points']
    assert [f.name for f in cloud.fields] == ['x', 'y', 'z', 'rgb'] and cloud.height == 1
    expected, _ = depth_to_points(depth, np.array(info.k).reshape(3, 3), stride=2, max_range=50.0)
    points = decode_cloud(cloud)
    assert points.shape == expected.shape and cloud.width == len(expected)
    np.testing.assert_allclose(points, expected, rtol=1e-5, atol=1e-6)
    assert f"fp32, {'openvino' if openvino_version() else 'torch'}" in node.text()  # backend auto on the CPU


def test_node_survives_bad_input_and_bursts(raw_node, camera_frames):
    from sensor_msgs.msg import CameraInfo, Image

    node, harness = raw_node
    send_until(harness, node, camera_frames[1], (1001, 0))  # warm (also when run alone)
    good_k = np.array(camera_frames[1][INFO_TOPIC].k)
    bad = [
        Image(height=4, width=4, encoding='weird16', step=8, data=bytes(32)),
        Image(height=192, width=640, encoding='rgb8', step=1920, data=bytes(1000)),
        Image(height=0, width=0, encoding='rgb8', step=0, data=b''),
    ]
    for i, msg in enumerate(bad):
        msg.header.frame_id = 'camera_optical_frame'
        msg.header.stamp.sec, msg.header.stamp.nanosec = 1100 + i, 0
        harness.image_pub.publish(msg)
        time.sleep(0.3)
    zero_info = CameraInfo(width=640, height=192)
    zero_info.header.stamp.sec = 1110
    harness.info_pub.publish(zero_info)
    expected_logs = ("unsupported encoding 'weird16'", 'malformed', 'ignoring camera_info')
    wait_until(lambda: all(s in node.text() for s in expected_logs),
               FRAME_TIMEOUT, 'the node to log the bad input', node.proc, node.log)
    text = node.text()
    assert 'ignoring camera_info' in text and 'focal' in text
    assert text.count("unsupported encoding 'weird16'") == 1  # once per encoding
    for msg_name in OUTPUTS:
        assert all(stamp_key(m.header)[0] < 1100 or stamp_key(m.header)[0] >= 1200
                   for m in harness.received(msg_name)), f'{msg_name} published for a bad frame'

    # a burst at 100 Hz: frames get dropped, the newest is processed, the node keeps serving
    frame = camera_frames[2]
    burst = [(1200, i) for i in range(40)]
    for key in burst:
        send_frame(harness, frame, key, camera_info=False)
        time.sleep(0.01)
    wait_until(lambda: harness.by_stamp('depth', burst[-1]), FRAME_TIMEOUT, 'the newest burst frame',
               node.proc, node.log)
    processed = {stamp_key(m.header) for m in harness.received('depth')} & set(burst)
    assert len(processed) < len(burst)
    out = send_until(harness, node, camera_frames[3], (1300, 0))
    np.testing.assert_allclose(np.array(out['depth/camera_info'].k), good_k)  # the zero K was ignored
    stats = wait_until(lambda: [json.loads(m.data) for m in harness.received('statistics')
                                if json.loads(m.data)['processed'] >= len(processed) + 2],
                       10.0, 'statistics after the burst', node.proc, node.log)[-1]
    assert stats['dropped'] > 0 and stats['bad_frames'] >= 3
    assert stats['latency_ms']['p50'] is not None and 'inference' in stats['stage_ms']
    assert node.proc.poll() is None


@pytest.fixture(scope='module')
def compressed_node(tmp_path_factory, lite_checkpoint, ros_domain):
    """A node on compressed images with network-resolution output and an organised xyz cloud (PyTorch)."""
    yield from node_with_camera(tmp_path_factory, lite_checkpoint, ros_domain, '/compressed',
                                'backend:=torch', 'threads:=1', 'image_transport:=compressed', 'output_resolution:=network',
                                'points_organized:=true', 'points_rgb:=false', 'points_stride:=3', 'colormap:=turbo')


def test_node_compressed_network_resolution_organized(compressed_node, camera_frames):
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient

    from hr_depth_ros.core import image_decoding

    node, harness = compressed_node
    out = send_until(harness, node, camera_frames[0], (2000, 0), compressed=True, timeout=FIRST_FRAME_TIMEOUT)
    depth = image_decoding.image_to_array(out['depth'])
    lite_size = (out['depth'].width, out['depth'].height)
    assert lite_size == (640, 192)  # the fixture checkpoint's network resolution
    K = np.array(out['depth/camera_info'].k).reshape(3, 3)
    cloud = out['points']
    assert (cloud.height, cloud.width) == (64, 214) and [f.name for f in cloud.fields] == ['x', 'y', 'z']

    # max range at the median depth (set at run time): about half the organised points become NaN
    max_range = float(np.median(depth[::3, ::3]))
    client = AsyncParameterClient(harness.node, '/compressed/hr_depth')
    assert client.wait_for_services(10.0)
    future = client.set_parameters([Parameter('points_max_range', value=max_range)])
    wait_until(future.done, 10.0, 'setting points_max_range', node.proc, node.log)
    assert future.result().results[0].successful
    out = send_until(harness, node, camera_frames[1], (2001, 0), compressed=True)
    depth = image_decoding.image_to_array(out['depth'])
    expected, valid = depth_to_points(depth, K, stride=3, max_range=max_range, organized=True)
    points = decode_cloud(out['points']).reshape(64, 214, 3)
    assert not out['points'].is_dense and 0 < valid.sum() < valid.size
    np.testing.assert_array_equal(np.isnan(points[..., 2]), ~valid)
    np.testing.assert_allclose(points[valid], expected[valid], rtol=1e-5, atol=1e-6)
    future = client.set_parameters([Parameter('device', value='cuda')])
    wait_until(future.done, 10.0, 'setting device', node.proc, node.log)
    assert not future.result().results[0].successful  # read-only at run time


@pytest.mark.parametrize('weights, expected', [('/nonexistent/hr_depth_weights', '/nonexistent/hr_depth_weights'),
                                               (None, 'weights')])
def test_node_exits_nonzero_without_weights(tmp_path, ros_domain, weights, expected):
    node = NodeProcess(local_ros_env(ros_domain), tmp_path / 'node.log', '/missing', weights)
    try:
        node.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        node.stop()
        pytest.fail(f'the node kept running with weights={weights!r}:\n{_tail(node.log)}')
    assert node.proc.returncode != 0
    assert expected in node.text() and 'ConfigError' in node.text()  # the parameter (or path), the reason class


def test_node_refuses_to_start_on_nan_weights(tmp_path, ros_domain, lite_checkpoint):
    """Issue 12 item 6: such a checkpoint loaded, the node said 'ready' and published 100 % NaN depth."""
    import shutil

    import torch

    bad = tmp_path / 'nan_weights'
    shutil.copytree(lite_checkpoint, bad)
    state = torch.load(bad / 'depth.pth', weights_only=True)
    state = {k: torch.full_like(v, float('nan')) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, bad / 'depth.pth')
    node = NodeProcess(local_ros_env(ros_domain), tmp_path / 'node.log', '/nan', str(bad))
    try:
        node.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        node.stop()
        pytest.fail(f'the node kept running on NaN weights:\n{_tail(node.log)}')
    text = node.text()
    assert node.proc.returncode != 0 and 'cannot start' in text and 'NaN or inf' in text
    assert str(bad / 'depth.pth') in text and 'ready' not in text


# --- the managed node over DDS: lifecycle services, idle without subscribers, QoS overrides -------

def lifecycle_call(harness: CameraHarness, node: NodeProcess, service: str, request, timeout: float = 30.0):
    """Call the node's lifecycle service ``service`` (e.g. 'change_state') over DDS and return the response."""
    from lifecycle_msgs.srv import ChangeState, GetState

    types = {'change_state': ChangeState, 'get_state': GetState}
    clients = harness.__dict__.setdefault('lifecycle_clients', {})
    new = service not in clients
    if new:
        clients[service] = harness.node.create_client(types[service], f'/lifecycle/hr_depth/{service}')
    client = clients[service]
    wait_until(lambda: client.service_is_ready(), timeout, f'the {service} service', node.proc, node.log)
    if new:  # ready means the request path is matched; the response path may still be discovering, and Fast DDS
        time.sleep(0.5)  # then drops the response ("failed to send response (timeout)", seen once in a full run)
    future = client.call_async(request)
    if service == 'get_state':  # idempotent: asked again if the answer was lost
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            try:
                wait_until(future.done, 5.0, f'the {service} response', node.proc, node.log)
            except pytest.fail.Exception:
                if node.proc.poll() is not None:
                    raise
                client.remove_pending_request(future)
                future = client.call_async(request)
    wait_until(future.done, timeout, f'the {service} response', node.proc, node.log)
    return future.result()


def transition(harness: CameraHarness, node: NodeProcess, transition_id: int, timeout: float = 30.0) -> bool:
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    request = ChangeState.Request(transition=Transition(id=transition_id))
    return lifecycle_call(harness, node, 'change_state', request, timeout).success


def state_label(harness: CameraHarness, node: NodeProcess) -> str:
    from lifecycle_msgs.srv import GetState

    return lifecycle_call(harness, node, 'get_state', GetState.Request()).current_state.label


def test_node_lifecycle_idle_and_qos_overrides(tmp_path, ros_domain, lite_checkpoint, camera_frames):
    """autostart off: a failing configure is a FAILURE (node alive, unconfigured), fixed in place;
    activate subscribes (image reliability from qos_overrides.*, camera_info from qos_reliability);
    no inference until someone subscribes to an output, then the next frame is processed;
    deactivate unsubscribes; cleanup frees the model."""
    from lifecycle_msgs.msg import Transition
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient
    from rclpy.qos import ReliabilityPolicy

    node = NodeProcess(local_ros_env(ros_domain), tmp_path / 'node.log', '/lifecycle', '/nonexistent/weights',
                       'autostart:=false', 'statistics_period:=0.2', 'backend:=torch', 'threads:=1',
                       'qos_overrides./lifecycle/image.subscription.reliability:=reliable')
    harness = CameraHarness(ros_domain, '/lifecycle', outputs=False)
    try:
        assert state_label(harness, node) == 'unconfigured'
        assert not transition(harness, node, Transition.TRANSITION_CONFIGURE)
        assert 'configure failed' in node.text() and '/nonexistent/weights' in node.text()
        assert node.proc.poll() is None and state_label(harness, node) == 'unconfigured'

        client = AsyncParameterClient(harness.node, '/lifecycle/hr_depth')
        assert client.wait_for_services(10.0)
        future = client.set_parameters([Parameter('weights', value=str(lite_checkpoint))])
        wait_until(future.done, 10.0, 'setting weights', node.proc, node.log)
        assert future.result().results[0].successful  # read-only only while configured
        assert transition(harness, node, Transition.TRANSITION_CONFIGURE, timeout=FIRST_FRAME_TIMEOUT)
        assert state_label(harness, node) == 'inactive'
        time.sleep(1.0)
        assert harness.image_pub.get_subscription_count() == 0  # inactive: not subscribed
        future = client.set_parameters([Parameter('weights', value='/elsewhere')])
        wait_until(future.done, 10.0, 'setting weights while configured', node.proc, node.log)
        assert not future.result().results[0].successful

        assert transition(harness, node, Transition.TRANSITION_ACTIVATE)
        assert state_label(harness, node) == 'active'
        wait_until(lambda: harness.image_pub.get_subscription_count() > 0
                   and harness.info_pub.get_subscription_count() > 0, FRAME_TIMEOUT, 'the subscriptions',
                   node.proc, node.log)
        qos = {topic: harness.node.get_subscriptions_info_by_topic(topic)[0].qos_profile.reliability
               for topic in ('/lifecycle/image', '/lifecycle/camera_info')}
        assert qos == {'/lifecycle/image': ReliabilityPolicy.RELIABLE,
                       '/lifecycle/camera_info': ReliabilityPolicy.BEST_EFFORT}

        # nobody listens: frames are received, not processed, and the statistics say so
        for i in range(3):
            send_frame(harness, camera_frames[0], (3000, i))
        idle = wait_until(lambda: [s for s in harness.statistics() if s['skipped_no_subscribers'] >= 3],
                          FRAME_TIMEOUT, 'statistics while idle', node.proc, node.log)[-1]
        assert idle['idle_no_subscribers'] and idle['processed'] == 0 and idle['received'] >= 3

        # one subscriber to depth only: the next frame is processed
        harness.subscribe_outputs(('depth',))
        wait_until(lambda: harness.subscriptions[-1].get_publisher_count() > 0, FRAME_TIMEOUT, 'depth discovery',
                   node.proc, node.log)
        send_frame(harness, camera_frames[1], (3001, 0))
        wait_until(lambda: harness.by_stamp('depth', (3001, 0)), FIRST_FRAME_TIMEOUT, 'depth of the first frame '
                   'after a subscriber appeared', node.proc, node.log)
        busy = wait_until(lambda: [s for s in harness.statistics() if s['processed'] >= 1],
                          FRAME_TIMEOUT, 'statistics after processing', node.proc, node.log)[-1]
        assert not busy['idle_no_subscribers'] and busy['skipped_no_subscribers'] == idle['skipped_no_subscribers']
        assert not harness.received('depth/colored') and not harness.received('points')

        assert transition(harness, node, Transition.TRANSITION_DEACTIVATE)
        wait_until(lambda: harness.image_pub.get_subscription_count() == 0, FRAME_TIMEOUT,
                   'the image subscription to go', node.proc, node.log)
        assert state_label(harness, node) == 'inactive'
        assert transition(harness, node, Transition.TRANSITION_CLEANUP)
        assert state_label(harness, node) == 'unconfigured' and 'model released' in node.text()
        assert node.proc.poll() is None
    finally:
        harness.close()
        node.stop()


def test_node_transitions_in_process(lite_checkpoint, ros_domain):
    """The transitions called directly: what each builds and frees (on CUDA: deactivate returns cached memory)."""
    import rclpy
    import torch
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    from hr_depth_ros.ros.depth_node import SUCCESS, DepthNode

    cuda = torch.cuda.is_available()
    context = Context()
    rclpy.init(context=context, domain_id=ros_domain)
    try:
        node = DepthNode(context=context, parameter_overrides=[
            Parameter('weights', value=str(lite_checkpoint)), Parameter('device', value='cuda' if cuda else 'cpu'),
            Parameter('backend', value='torch'), Parameter('threads', value=1), Parameter('autostart', value=False)])
        assert node.engine is None and node.inputs == []
        assert node.trigger_configure() == SUCCESS
        assert node.engine is not None and node.inputs == [] and node.worker is None and len(node.outputs) == 4
        assert node.trigger_activate() == SUCCESS
        assert len(node.inputs) == 2 and node.worker.is_alive() and node.stats_timer is not None
        node.engine.process(np.zeros((192, 640, 3), np.uint8))  # leaves cached blocks on CUDA
        reserved = torch.cuda.memory_reserved() if cuda else 0
        assert node.trigger_deactivate() == SUCCESS
        assert node.inputs == [] and node.worker is None and node.stats_timer is None and node.engine is not None
        if cuda:
            assert torch.cuda.memory_reserved() < reserved
        assert node.trigger_cleanup() == SUCCESS
        assert node.engine is None and node.config is None and node.outputs == []
        assert node.trigger_configure() == SUCCESS  # configurable again after cleanup
        assert node.trigger_shutdown() == SUCCESS and node.engine is None
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
