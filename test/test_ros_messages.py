"""NumPy <-> rclpy message building (no DDS traffic)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from hr_depth_ros.core import image_decoding
from hr_depth_ros.core.camera_info import camera_info_K
from hr_depth_ros.core.pointcloud import unpack_points
from hr_depth_ros.ros.ros_messages import (
    camera_info_msg,
    compressed_image_msg,
    header_copy,
    image_msg,
    pointcloud2_msg,
    rgb_image_msg,
)

K = np.array([[500.0, 0.0, 319.5], [0.0, 505.0, 95.5], [0.0, 0.0, 1.0]])


def make_header(sec: int = 12, nanosec: int = 345, frame_id: str = 'camera_optical_frame') -> Header:
    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = sec, nanosec
    return header


def test_header_copy_is_independent():
    source = make_header()
    copied = header_copy(source)
    source.stamp.sec = 99
    assert (copied.stamp.sec, copied.stamp.nanosec, copied.frame_id) == (12, 345, 'camera_optical_frame')
    assert header_copy(source, frame_id='other').frame_id == 'other'
    assert header_copy(None).frame_id == ''


def test_depth_image_round_trip_keeps_nan():
    depth = np.random.default_rng(0).uniform(0.5, 80, (6, 10)).astype(np.float32)
    depth[0, 0] = np.nan
    msg = image_msg(depth, '32FC1', make_header())
    assert (msg.height, msg.width, msg.encoding, msg.step) == (6, 10, '32FC1', 40)
    assert msg.header.stamp.nanosec == 345
    np.testing.assert_array_equal(image_decoding.image_to_array(msg), depth)


def test_bgr8_and_rgb_images():
    rgb = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    bgr = image_msg(rgb[..., ::-1].copy(), 'bgr8')
    assert bgr.encoding == 'bgr8' and bgr.step == 15
    np.testing.assert_array_equal(image_decoding.image_to_rgb(bgr), rgb)
    np.testing.assert_array_equal(image_decoding.image_to_rgb(rgb_image_msg(rgb, 'rgb8')), rgb)
    with pytest.raises(ValueError, match='32FC1'):
        image_msg(rgb, '32FC1')


def test_compressed_image_decodes_close_to_input():
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :24] = (200, 30, 60)
    msg = compressed_image_msg(rgb, 'png', make_header())
    assert 'png' in msg.format
    np.testing.assert_array_equal(image_decoding.compressed_to_rgb(msg), rgb)
    jpeg = compressed_image_msg(rgb, 'jpeg')
    assert np.abs(image_decoding.compressed_to_rgb(jpeg).astype(int) - rgb).mean() < 4


def test_camera_info_fields_and_validation():
    msg = camera_info_msg(K, 640, 192, make_header())
    assert (msg.width, msg.height, msg.distortion_model) == (640, 192, 'plumb_bob')
    np.testing.assert_array_equal(np.array(msg.k).reshape(3, 3), K)
    np.testing.assert_array_equal(np.array(msg.r).reshape(3, 3), np.eye(3))
    np.testing.assert_array_equal(np.array(msg.p).reshape(3, 4), np.hstack([K, np.zeros((3, 1))]))
    assert list(msg.d) == [0.0] * 5
    np.testing.assert_array_equal(camera_info_K(msg)[0], K)
    msg.k = [0.0] * 9
    with pytest.raises(ValueError, match='focal'):
        camera_info_K(msg)[0]
    with pytest.raises(ValueError, match='3x3'):
        camera_info_msg(np.eye(2), 4, 4)


def test_pointcloud2_unorganized_xyzrgb():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(9, 3)).astype(np.float32)
    colors = rng.integers(0, 256, (9, 3), dtype=np.uint8)
    msg = pointcloud2_msg(points, colors, make_header())
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 9, 16, 144)
    assert [f.name for f in msg.fields] == ['x', 'y', 'z', 'rgb'] and msg.fields[3].offset == 12
    assert msg.is_dense and not msg.is_bigendian and msg.header.frame_id == 'camera_optical_frame'
    decoded, decoded_colors = unpack_points(np.frombuffer(msg.data, np.uint8), with_rgb=True)
    np.testing.assert_array_equal(decoded, points)
    np.testing.assert_array_equal(decoded_colors, colors)


def test_pointcloud2_organized_xyz_with_nan():
    points = np.ones((3, 4, 3), np.float32)
    points[1, 2] = np.nan
    msg = pointcloud2_msg(points)
    assert (msg.height, msg.width, msg.row_step) == (3, 4, 64)
    assert [f.name for f in msg.fields] == ['x', 'y', 'z'] and not msg.is_dense
    flat = pointcloud2_msg(points.reshape(-1, 3), organized_shape=(3, 4))
    assert (flat.height, flat.width) == (3, 4) and bytes(flat.data) == bytes(msg.data)
    with pytest.raises(ValueError, match='organized_shape'):
        pointcloud2_msg(points.reshape(-1, 3), organized_shape=(5, 4))


@pytest.mark.skipif(importlib.util.find_spec('cv_bridge') is None,
                    reason='cv_bridge is not installed here; conversions are checked against NumPy above')
def test_matches_cv_bridge():
    from cv_bridge import CvBridge

    bridge = CvBridge()
    rng = np.random.default_rng(3)
    depth = rng.uniform(0.5, 80, (6, 10)).astype(np.float32)
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(image_msg(depth, '32FC1'), '32FC1'), depth)
    bgr = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(image_msg(bgr, 'bgr8'), 'bgr8'), bgr)
    for encoding in ('rgb8', 'bgr8', 'mono8', 'rgba8'):
        reference: Image = bridge.cv2_to_imgmsg(
            rng.integers(0, 256, (6, 10) if encoding == 'mono8' else (6, 10, 4 if encoding == 'rgba8' else 3),
                         dtype=np.uint8), encoding)
        expected_rgb = bridge.imgmsg_to_cv2(reference, 'rgb8')
        np.testing.assert_array_equal(image_decoding.image_to_rgb(reference), expected_rgb)
