"""camera_info -> K for ROS 1 and ROS 2 messages, and the plausibility check (issue 12 items 7 and 9)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from hr_depth_ros.core.camera_info import camera_info_K, implausible_intrinsics

K = np.array([[370.0, 0.0, 319.5], [0.0, 370.0, 95.5], [0.0, 0.0, 1.0]])


def test_reads_ros2_and_ros1_spellings():
    ros2 = SimpleNamespace(k=K.ravel().tolist(), width=640, height=192)
    ros1 = SimpleNamespace(K=K.ravel(), D=np.zeros(5), width=640, height=192)  # rosbags' ROS 1 CameraInfo
    for msg in (ros2, ros1):
        found, width, height = camera_info_K(msg)
        np.testing.assert_array_equal(found, K)
        assert (width, height) == (640, 192)
    with pytest.raises(ValueError, match='not a CameraInfo'):
        camera_info_K(SimpleNamespace(width=1, height=1))
    with pytest.raises(ValueError, match='focal'):
        camera_info_K(SimpleNamespace(K=[0.0] * 9, width=640, height=192))
    with pytest.raises(ValueError, match='9 finite'):
        camera_info_K(SimpleNamespace(k=[np.nan] * 9, width=640, height=192))


def test_ros1_camera_info_from_a_rosbags_bag_message():
    from rosbags.typesys import Stores, get_typestore

    types = get_typestore(Stores.ROS1_NOETIC).types
    msg = types['sensor_msgs/msg/CameraInfo'](
        header=types['std_msgs/msg/Header'](seq=0, stamp=types['builtin_interfaces/msg/Time'](sec=0, nanosec=0),
                                            frame_id='cam'),
        height=192, width=640, distortion_model='plumb_bob', D=np.zeros(5), K=K.ravel(), R=np.eye(3).ravel(),
        P=np.zeros(12), binning_x=0, binning_y=0,
        roi=types['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    np.testing.assert_array_equal(camera_info_K(msg)[0], K)


@pytest.mark.parametrize('fx, size, image_size, field', [
    (1e-300, (640, 192), None, 'fx='),
    (1e300, (640, 192), None, 'fx='),
    (370.0, (2**32 - 1, 2**32 - 1), None, 'width/height'),
    (370.0, (1, 1), (640, 192), 'fx='),                  # a 1x1 size with a normal K
    (370.0, (640, 640), (640, 192), 'aspect'),          # declared aspect ratio disagrees with the image
])
def test_implausible_intrinsics_name_the_field(fx, size, image_size, field):
    bad = K.copy()
    bad[0, 0] = fx
    assert field in implausible_intrinsics(bad, size, image_size)


def test_principal_point_far_outside_and_plausible_cases():
    far = K.copy()
    far[0, 2] = 5000.0
    assert 'cx=' in implausible_intrinsics(far, (640, 192))
    far = K.copy()
    far[1, 2] = -500.0
    assert 'cy=' in implausible_intrinsics(far, (640, 192))
    assert implausible_intrinsics(K, (640, 192), (640, 192)) is None
    assert implausible_intrinsics(K * [[2], [2], [1]], (1280, 384), (640, 192)) is None  # same aspect: rescaled
    assert implausible_intrinsics(K, (0, 0), (640, 192)) is None  # size not declared: the image's
