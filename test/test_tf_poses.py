"""TF chains without ROS: composition, interpolation, messy names and stamps, known answers."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from hr_depth_ros.core.geometry import matrix_from_quaternion, pose_matrix, quaternion_from_matrix
from hr_depth_ros.core.tf_poses import TransformError, TransformTree, normalize_frame, slerp

S = 1_000_000_000  # ns per second
# REP 103: optical frame (x right, y down, z forward) in the body convention (x forward, y left, z up).
LINK_FROM_OPTICAL = np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])


def rot_z(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def add(tree: TransformTree, parent: str, child: str, stamp_s: float, T: np.ndarray, static: bool = False) -> None:
    tree.add_transform(parent, child, int(round(stamp_s * S)), T[:3, 3], quaternion_from_matrix(T), static=static)


def robot_tree() -> TransformTree:
    """odom -> base_link at 0, 1, 2 s (driving 1 m/s along x, turning 10 deg/s), a static camera mount."""
    tree = TransformTree(max_gap_s=1.5)
    for t in (0.0, 1.0, 2.0):
        add(tree, 'odom', 'base_link', t, pose_matrix(rot_z(10 * t), [t, 0, 0]))
    add(tree, 'base_link', 'camera_link', 0.0, pose_matrix(np.eye(3), [0.5, 0.0, 1.2]), static=True)
    add(tree, 'camera_link', 'camera_optical_frame', 0.0, pose_matrix(LINK_FROM_OPTICAL, [0, 0, 0]), static=True)
    return tree


def test_optical_frame_rotation_known_answer():
    """A point 3 m straight ahead of the robot is on the camera's optical axis (z forward)."""
    tree = robot_tree()
    T_optical_base = tree.lookup('camera_optical_frame', 'base_link', [0]).poses[0]
    ahead = T_optical_base @ np.array([3.5, 0.0, 1.2, 1.0])   # 3 m ahead of the lens, at its height
    np.testing.assert_allclose(ahead[:3], [0.0, 0.0, 3.0], atol=1e-12)
    left = T_optical_base @ np.array([0.5, 1.0, 1.2, 1.0])    # 1 m to the robot's left: camera -x
    np.testing.assert_allclose(left[:3], [-1.0, 0.0, 0.0], atol=1e-12)


def test_chain_composition_both_directions():
    tree = robot_tree()
    pose = tree.lookup('odom', 'camera_optical_frame', [S]).poses[0]
    expected = (pose_matrix(rot_z(10), [1, 0, 0]) @ pose_matrix(np.eye(3), [0.5, 0, 1.2])
                @ pose_matrix(LINK_FROM_OPTICAL, [0, 0, 0]))
    np.testing.assert_allclose(pose, expected, atol=1e-12)
    inverse = tree.lookup('camera_optical_frame', 'odom', [S]).poses[0]
    np.testing.assert_allclose(inverse, np.linalg.inv(expected), atol=1e-12)
    # Between two leaves of different branches (both under base_link).
    add(tree, 'base_link', 'imu', 0.0, pose_matrix(np.eye(3), [0.0, 0.2, 0.3]), static=True)
    between = tree.lookup('imu', 'camera_link', [S]).poses[0]
    np.testing.assert_allclose(between[:3, 3], [0.5, -0.2, 0.9], atol=1e-12)
    assert tree.lookup('odom', 'odom', [0, S]).valid.all()


def test_interpolation_linear_translation_and_slerp_rotation():
    tree = robot_tree()
    lookup = tree.lookup('odom', 'base_link', [int(0.5 * S), int(1.25 * S)])
    assert lookup.valid.all()
    np.testing.assert_allclose(lookup.poses[0], pose_matrix(rot_z(5), [0.5, 0, 0]), atol=1e-12)
    np.testing.assert_allclose(lookup.poses[1], pose_matrix(rot_z(12.5), [1.25, 0, 0]), atol=1e-12)
    # slerp takes the short way round (q and -q are the same rotation).
    q0 = quaternion_from_matrix(rot_z(170))
    q1 = -quaternion_from_matrix(rot_z(-170))
    middle = matrix_from_quaternion(slerp(q0[None], q1[None], np.array([0.5]))[0])
    np.testing.assert_allclose(middle, rot_z(180), atol=1e-9)


def test_never_extrapolates_and_counts_gaps():
    tree = TransformTree(max_gap_s=0.6)
    for t in (0.0, 0.5, 2.0, 2.5):  # a 1.5 s silence between 0.5 and 2.0
        add(tree, 'odom', 'base_link', t, pose_matrix(np.eye(3), [t, 0, 0]))
    stamps = [int(t * S) for t in (-0.01, 0.0, 0.25, 1.0, 2.25, 2.5, 2.51)]
    lookup = tree.lookup('odom', 'base_link', stamps)
    assert lookup.valid.tolist() == [False, True, True, False, True, True, False]
    assert (lookup.outside, lookup.gap) == (2, 1)
    assert np.isnan(lookup.poses[~lookup.valid]).all()
    np.testing.assert_allclose(lookup.poses[2][:3, 3], [0.25, 0, 0])


def test_messy_names_duplicates_and_jitter():
    tree = TransformTree()
    rng = np.random.default_rng(0)
    stamps = np.cumsum(rng.uniform(0.015, 0.035, 60))   # ~40 Hz with jitter
    for t in stamps:
        add(tree, '/odom', 'base_link', float(t), pose_matrix(rot_z(4 * t), [2 * t, 0.1 * t, 0]))
        if rng.uniform() < 0.3:   # the same sample again (republished)
            add(tree, 'odom', '/base_link', float(t), pose_matrix(rot_z(4 * t), [2 * t, 0.1 * t, 0]))
    add(tree, '//base_link', 'camera', 0.0, pose_matrix(np.eye(3), [0, 0, 1]), static=True)
    add(tree, 'base_link', 'camera', 0.0, pose_matrix(np.eye(3), [0, 0, 1]), static=True)  # latched again
    assert normalize_frame(' /odom ') == 'odom' and tree.frames == {'odom', 'base_link', 'camera'}
    query = np.linspace(stamps[0], stamps[-1], 25)
    lookup = tree.lookup('/odom', '/camera', np.round(query * S).astype(np.int64))
    assert lookup.valid.all()
    for t, pose in zip(query, lookup.poses):
        expected = pose_matrix(rot_z(4 * t), [2 * t, 0.1 * t, 0]) @ pose_matrix(np.eye(3), [0, 0, 1])
        np.testing.assert_allclose(pose, expected, atol=1e-9)


def test_missing_link_and_contradictions_are_named():
    tree = robot_tree()
    with pytest.raises(TransformError, match=r"no TF chain from 'map' to 'camera_optical_frame'.*odom -> base_link"):
        tree.lookup('map', 'camera_optical_frame', [0])
    assert not tree.can_transform('odom', 'camera_frame_typo')
    with pytest.raises(TransformError, match="'base_link' has two parents"):
        add(tree, 'map', 'base_link', 0.0, np.eye(4))
    with pytest.raises(TransformError, match='/tf_static'):
        add(tree, 'odom', 'base_link', 3.0, np.eye(4), static=True)


def test_reads_ros2_and_ros1_messages():
    def message(stamp) -> SimpleNamespace:
        return SimpleNamespace(transforms=[SimpleNamespace(
            header=SimpleNamespace(stamp=stamp, frame_id='odom'), child_frame_id='base_link',
            transform=SimpleNamespace(translation=SimpleNamespace(x=1.0, y=2.0, z=3.0),
                                      rotation=SimpleNamespace(x=0.0, y=0.0, z=0.0, w=1.0)))])

    tree = TransformTree(max_gap_s=2.0)
    tree.add_message(message(SimpleNamespace(sec=5, nanosec=0)))
    tree.add_message(message(SimpleNamespace(secs=6, nsecs=500_000_000)))  # ROS 1 time fields
    lookup = tree.lookup('odom', 'base_link', [5 * S, 6 * S + 500_000_000])
    assert lookup.valid.all() and tree.messages == 2
    np.testing.assert_allclose(lookup.poses[1][:3, 3], [1, 2, 3])
