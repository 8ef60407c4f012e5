"""play_bag: rosbags -> rclpy conversion, selection options, and playing the synthetic bag over DDS."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hr_depth_ros.core.bags import BagError, read_messages
from hr_depth_ros.ros.play_bag import _messages, _select_topics, build_parser, parse_remaps, to_rclpy
from hr_depth_ros.ros.transport import fastdds_profile_path, local_ros_env

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(fastdds_profile_path()))
IMAGE_TOPIC = '/camera/image_raw'


def test_to_rclpy_copies_nested_fields_and_arrays():
    from sensor_msgs.msg import CameraInfo, Image

    stamp = SimpleNamespace(sec=5, nanosec=7)
    header = SimpleNamespace(stamp=stamp, frame_id='cam')
    source = SimpleNamespace(header=header, height=2, width=3, encoding='rgb8', is_bigendian=0, step=9,
                             data=np.arange(18, dtype=np.uint8))
    image = to_rclpy(source, Image())
    assert (image.header.stamp.sec, image.header.stamp.nanosec, image.header.frame_id) == (5, 7, 'cam')
    assert bytes(image.data) == bytes(range(18)) and image.step == 9
    roi = SimpleNamespace(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    info = SimpleNamespace(header=header, height=192, width=640, distortion_model='plumb_bob',
                           d=np.zeros(5), k=np.arange(9.0), r=np.eye(3).ravel(), p=np.arange(12.0),
                           binning_x=0, binning_y=0, roi=roi)
    converted = to_rclpy(info, CameraInfo())
    np.testing.assert_array_equal(np.array(converted.k), np.arange(9.0))
    assert len(converted.d) == 5 and converted.width == 640
    from sensor_msgs.msg import PointCloud2

    field = SimpleNamespace(name='x', offset=0, datatype=7, count=1)
    cloud = SimpleNamespace(header=header, height=1, width=1, fields=[field, field], is_bigendian=False,
                            point_step=16, row_step=16, data=np.zeros(16, np.uint8), is_dense=True)
    converted_cloud = to_rclpy(cloud, PointCloud2())
    assert [f.name for f in converted_cloud.fields] == ['x', 'x'] and converted_cloud.fields[0].datatype == 7
    with pytest.raises(ValueError, match="no field 'roi'"):
        to_rclpy(SimpleNamespace(**{k: v for k, v in vars(info).items() if k != 'roi'}), CameraInfo())


def test_remaps_and_arguments():
    assert parse_remaps(['/a:=/b', 'c:=d']) == {'/a': '/b', 'c': 'd'}
    with pytest.raises(ValueError, match='old:=new'):
        parse_remaps(['/a=/b'])
    args = build_parser().parse_args(['--bag', 'x', '--rate', '0', '--loop', '--restamp', '--limit', '3'])
    assert (args.rate, args.loop, args.restamp, args.limit, args.qos) == (0.0, True, True, 3, 'reliable')


def test_topic_selection_and_windowing(synthetic_bag):
    topics = _select_topics(synthetic_bag, None)
    assert topics[IMAGE_TOPIC] == 'sensor_msgs/msg/Image'
    assert topics[IMAGE_TOPIC + '/compressed'] == 'sensor_msgs/msg/CompressedImage'
    assert '/camera/depth_gt' in topics
    tf_installed = importlib.util.find_spec('tf2_msgs') is not None
    assert ('/tf' in topics) == tf_installed  # TFMessage is played where tf2_msgs is installed
    with pytest.raises(BagError, match='/nope'):
        _select_topics(synthetic_bag, ['/nope'])
    if not tf_installed:
        with pytest.raises(BagError, match='cannot play'):
            _select_topics(synthetic_bag, ['/tf'])
    stamps = [t for _, t, _, _ in read_messages(synthetic_bag, [IMAGE_TOPIC])]
    window = list(_messages(synthetic_bag, {IMAGE_TOPIC: 'sensor_msgs/msg/Image'}, start_after=1.0, limit=5))
    assert len(window) == 5
    assert window[0][1] == next(t for t in stamps if t - stamps[0] >= 1.0e9)


def test_play_bag_publishes_every_frame_with_its_stamp(synthetic_bag, tmp_path):
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    env = local_ros_env()
    expected = [(t, stamp) for _, t, stamp, _ in read_messages(synthetic_bag, [IMAGE_TOPIC])]
    context = Context()
    rclpy.init(context=context, domain_id=int(env['ROS_DOMAIN_ID']))
    node = rclpy.create_node('play_bag_listener', context=context)
    received: list[int] = []
    infos: list[int] = []
    lock = threading.Lock()

    def on_image(msg):
        with lock:
            received.append(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)

    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(Image, '/played/image', on_image, qos)
    node.create_subscription(CameraInfo, '/played/camera_info', lambda m: infos.append(1), qos)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    log = tmp_path / 'play_bag.log'
    try:
        with open(log, 'wb') as handle:
            proc = subprocess.run(
                [sys.executable, '-m', 'hr_depth_ros.ros.play_bag', '--bag', str(synthetic_bag), '--topics', IMAGE_TOPIC,
                 '/camera/camera_info', '--rate', '4', '--remap', f'{IMAGE_TOPIC}:=/played/image',
                 '--remap', '/camera/camera_info:=/played/camera_info', '--qos-depth', '100', '--wait-subscribers', '20'],
                env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=90, cwd=REPO)
        assert proc.returncode == 0, log.read_text()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(received) < len(expected):
            time.sleep(0.05)
        assert received == [stamp for _, stamp in expected], log.read_text()
        assert len(infos) == len(expected)
        assert f'published {2 * len(expected)} messages' in log.read_text()
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)


def test_play_bag_reports_bad_bag(tmp_path):
    env = local_ros_env()
    proc = subprocess.run([sys.executable, '-m', 'hr_depth_ros.ros.play_bag', '--bag', str(tmp_path / 'missing_bag')],
                          env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2
    assert 'missing_bag' in proc.stderr
